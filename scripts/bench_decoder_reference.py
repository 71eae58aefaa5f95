#!/usr/bin/env python3
"""PyTorch + PEFT's side of the decoder training-step comparison (BENCHMARKS.md): SmolLM2
loaded by transformers from the same GGUF (dequantized to f32), LoRA r=8 α=8 on q_proj and
v_proj, a seeded random batch of BATCH × SEQ ids with every next token scored, AdamW; prints
one JSON line with the median step time and the process's peak RSS. With
--gradient-checkpointing, transformers' `gradient_checkpointing_enable()` (non-reentrant), the
comparison for `ttlora bench model --gradient-checkpointing`.
usage: bench_decoder_reference.py GGUF [BATCH SEQ ITERS] [--gradient-checkpointing]"""
import json
import resource
import sys
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoModelForCausalLM

from bench_machine import cpu  # scripts/, this file's folder, is on sys.path


def main():
    checkpoint = "--gradient-checkpointing" in sys.argv
    args = [a for a in sys.argv[1:] if a != "--gradient-checkpointing"]
    gguf = Path(args[0])
    batch, seq, iters = (int(a) for a in (args[1:4] + ["8", "256", "5"][len(args[1:4]):]))
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(str(gguf.parent), gguf_file=gguf.name,
                                                 dtype=torch.float32)
    if checkpoint:
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = get_peft_model(model, LoraConfig(r=8, lora_alpha=8, target_modules=["q_proj", "v_proj"],
                                             lora_dropout=0.0, task_type="CAUSAL_LM"))
    model.train()
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    ids = torch.randint(0, model.config.vocab_size, (batch, seq))
    times = []
    for i in range(iters + 1):
        start = time.perf_counter()
        loss = model(input_ids=ids, labels=ids).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_([p for p in model.parameters() if p.requires_grad], 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        if i > 0:  # the first step warms up
            times.append(time.perf_counter() - start)
    times.sort()
    print(json.dumps({
        "side": "pytorch+peft", "gradient_checkpointing": checkpoint, "torch": torch.__version__, "threads": torch.get_num_threads(),
        "batch_size": batch, "seq_len": seq, "step_ms": 1e3 * times[len(times) // 2],
        "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
        "cpu": cpu(),
    }))


if __name__ == "__main__":
    main()
