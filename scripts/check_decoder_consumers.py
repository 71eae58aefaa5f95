#!/usr/bin/env python3
"""Checks ttlora's decoder files against the real consumers (optional, needs a virtualenv
with torch, transformers, gguf, peft and, for the llama.cpp part, llama-cpp-python):

1. tokenizer parity: ttlora's ids for tricky strings equal transformers' tokenizer read from
   the same GGUF;
2. the base model: ttlora's last-token logits equal transformers' on the GGUF (dequantized);
3. PEFT: an adapter ttlora trained, exported with `ttlora export --format peft-lora`, loaded by
   `PeftModel.from_pretrained` onto that model, gives ttlora's logits with the adapter;
4. llama.cpp: the `--format gguf-lora` file loads as a LoRA adapter on the GGUF and moves the
   logits as ttlora's adapter does (same greedy tokens; llama.cpp's quantized matmuls differ
   from the f32 reference by more than rounding).

5. (with MERGED_EXPORT, from `ttlora export --format merged`) transformers loads the merged
   folder, its tokenizer files included, and greedy-generates what ttlora's adapter does;
6. (with MERGED_GGUF, the `model.gguf` of `ttlora export --format merged-gguf`) llama.cpp
   loads the merged file as a model and its logits move as with the `--lora` file.

usage: check_decoder_consumers.py GGUF TTLORA_ADAPTER PEFT_EXPORT GGUF_LORA_FILE [MERGED_EXPORT
       [MERGED_GGUF]]
Runs ttlora through `cargo run --release --example decoder_logits`. Prints one JSON object."""
import json
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
PROMPT = "Question: Compute 56 + 37.\n"
TRICKY = [
    " leading space", "  two spaces", "digits 1234567 and 3.14159", "emoji 🙂🚀 and ünïcödé",
    "new\nlines\n\n and\ttabs", "<|im_start|>user\nHi<|im_end|>\n", "CamelCaseWords_and-dashes",
    "don't won't y'all", "    indented code();", "",
]


def ttlora(model, adapter, prompt, texts=()):
    out = subprocess.run(
        ["cargo", "run", "-q", "--release", "--example", "decoder_logits", "--",
         model, adapter, prompt, *texts],
        cwd=ROOT, check=True, capture_output=True, text=True)
    return json.loads(out.stdout)


def main():
    gguf, adapter, peft_dir, gguf_lora = sys.argv[1:5]
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer
    folder, name = str(Path(gguf).parent), Path(gguf).name
    report = {}

    base = ttlora(gguf, "-", PROMPT, TRICKY)
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=name)
    mismatched = []
    for text, ids in zip(TRICKY, base["texts"]):
        theirs = tok(text)["input_ids"]
        if theirs != ids:
            mismatched.append({"text": text, "ttlora": ids, "transformers": theirs})
    report["tokenizer_strings"] = len(TRICKY)
    report["tokenizer_mismatches"] = mismatched

    model = AutoModelForCausalLM.from_pretrained(folder, gguf_file=name, torch_dtype=torch.float32)
    model.eval()
    ids = torch.tensor([base["ids"]])
    with torch.no_grad():
        want = model(ids).logits[0, -1].numpy()
    report["base_logits_max_abs_diff"] = float(np.abs(want - np.array(base["logits"])).max())

    from peft import PeftModel
    tuned = ttlora(gguf, adapter, PROMPT)
    peft_model = PeftModel.from_pretrained(model, peft_dir)
    peft_model.eval()
    with torch.no_grad():
        want_tuned = peft_model(ids).logits[0, -1].numpy()
    report["peft_logits_max_abs_diff"] = float(np.abs(want_tuned - np.array(tuned["logits"])).max())
    report["adapter_moves_logits_by"] = float(np.abs(want_tuned - want).max())

    try:
        from llama_cpp import Llama
    except ImportError as e:
        report["llama_cpp"] = f"not checked: {e}"
    else:
        def last_logits(lora, model=gguf):
            kw = {"lora_path": lora} if lora else {}
            llm = Llama(model_path=model, n_ctx=256, logits_all=True, verbose=False, seed=0, **kw)
            llm.eval(base["ids"])
            return np.array(llm.scores[llm.n_tokens - 1])
        cpp_base, cpp_tuned = last_logits(None), last_logits(gguf_lora)
        ours_base, ours_tuned = np.array(base["logits"]), np.array(tuned["logits"])
        report["llama_cpp"] = {
            "base_top1_agrees": int(cpp_base.argmax()) == int(ours_base.argmax()),
            "adapter_top1_agrees": int(cpp_tuned.argmax()) == int(ours_tuned.argmax()),
            "adapter_top1_token": int(cpp_tuned.argmax()),
            "base_logits_max_abs_diff": float(np.abs(cpp_base - ours_base).max()),
            "adapter_logits_max_abs_diff": float(np.abs(cpp_tuned - ours_tuned).max()),
            "adapter_delta_correlation": float(np.corrcoef(cpp_tuned - cpp_base,
                                                           ours_tuned - ours_base)[0, 1]),
        }
        if len(sys.argv) > 6:
            cpp_merged = last_logits(None, sys.argv[6])
            report["llama_cpp_merged_gguf"] = {
                "top1_agrees_with_ttlora_adapter": int(cpp_merged.argmax()) == int(ours_tuned.argmax()),
                "logits_max_abs_diff_vs_lora_file": float(np.abs(cpp_merged - cpp_tuned).max()),
                "logits_max_abs_diff_vs_ttlora_adapter": float(np.abs(cpp_merged - ours_tuned).max()),
                "delta_correlation_vs_ttlora": float(np.corrcoef(cpp_merged - cpp_base,
                                                                 ours_tuned - ours_base)[0, 1]),
            }
    if len(sys.argv) > 5:
        merged = sys.argv[5]
        mtok = AutoTokenizer.from_pretrained(merged)
        mmodel = AutoModelForCausalLM.from_pretrained(merged, dtype=torch.float32).eval()
        enc = mtok(PROMPT, return_tensors="pt")
        out = mmodel.generate(**enc, max_new_tokens=6, do_sample=False)
        report["merged_transformers_ids_equal"] = enc["input_ids"][0].tolist() == base["ids"]
        report["merged_transformers_greedy"] = mtok.decode(out[0][enc["input_ids"].shape[1]:])
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
