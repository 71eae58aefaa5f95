#!/usr/bin/env python3
"""The reference side of `ttlora bench generate` (BENCHMARKS.md): batch-1 prefill and greedy
decode speed of the same GGUF in llama.cpp (llama-cpp-python, the file's own blocks) and in
transformers (loaded from the GGUF, dequantized to f32), on 2 threads each, with the prompt
`ttlora bench generate` uses (ids 1000, 1001, ...). Best of REPS per phase; one JSON line per
runtime.
usage: bench_generate_reference.py GGUF [PROMPT_TOKENS NEW_TOKENS REPS]"""
import json
import sys
import time
from pathlib import Path

from bench_machine import cpu  # scripts/, this file's folder, is on sys.path


def ids_for(n):
    return [1000 + i for i in range(n)]


def llama_cpp_rate(gguf, prompt, new, reps):
    from llama_cpp import Llama
    llm = Llama(model_path=str(gguf), n_ctx=prompt + new + 8, n_threads=2, n_threads_batch=2,
                n_batch=prompt + new + 8, verbose=False)
    best_prefill = best_decode = float("inf")
    for _ in range(reps):
        llm.reset()
        start = time.perf_counter()
        llm.eval(ids_for(prompt))
        best_prefill = min(best_prefill, time.perf_counter() - start)
        token = int(llm.scores[llm.n_tokens - 1].argmax())
        start = time.perf_counter()
        for _ in range(new):
            llm.eval([token])
            token = int(llm.scores[llm.n_tokens - 1].argmax())
        best_decode = min(best_decode, time.perf_counter() - start)
    return best_prefill, best_decode


def transformers_rate(gguf, prompt, new, reps):
    import torch
    from transformers import AutoModelForCausalLM
    torch.set_num_threads(2)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32).eval()
    best_prefill = best_decode = float("inf")
    with torch.inference_mode():
        for _ in range(reps):
            start = time.perf_counter()
            out = model(input_ids=torch.tensor([ids_for(prompt)]), use_cache=True)
            token = out.logits[0, -1].argmax().view(1, 1)
            best_prefill = min(best_prefill, time.perf_counter() - start)
            past = out.past_key_values
            start = time.perf_counter()
            for _ in range(new):
                out = model(input_ids=token, past_key_values=past, use_cache=True)
                past = out.past_key_values
                token = out.logits[0, -1].argmax().view(1, 1)
            best_decode = min(best_decode, time.perf_counter() - start)
    return best_prefill, best_decode


def main():
    gguf = Path(sys.argv[1])
    prompt, new, reps = (int(a) for a in (sys.argv[2:5] + ["128", "64", "3"][len(sys.argv[2:5]):]))
    for name, rate in [("llama.cpp", llama_cpp_rate), ("transformers", transformers_rate)]:
        prefill, decode = rate(gguf, prompt, new, reps)
        print(json.dumps({
            "runtime": name, "prompt_tokens": prompt, "new_tokens": new,
            "prefill_ms": prefill * 1e3, "prefill_tok_s": prompt / prefill,
            "decode_ms_per_token": decode * 1e3 / new, "decode_tok_s": new / decode,
            "threads": 2, "cpu": cpu(),
        }), flush=True)


if __name__ == "__main__":
    main()
