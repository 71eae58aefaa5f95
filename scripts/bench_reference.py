"""The PyTorch + transformers + PEFT side of the ttlora-vs-Python comparison (issue 5).

Prints one JSON line per measured row with the fields of `ttlora bench model`, for the same
work: a seeded random batch of `--batch-size` × `--seq-len` token ids (no padding), a 2-label
sequence-classification head, LoRA r=8 on query/value (PEFT) or full fine-tuning, AdamW.

    .venv-ref/bin/python scripts/bench_reference.py --model ~/.cache/ttlora/models/all-MiniLM-L6-v2 \
        --kind train --method lora

Run each configuration in its own process (scripts/bench_compare.sh does), so that the peak
resident memory reported is that configuration's.
"""

import argparse
import json
import resource
import statistics
import time

import torch
from peft import LoraConfig, TaskType, get_peft_model
from transformers import AutoModelForSequenceClassification

from bench_machine import cpu  # scripts/, this file's folder, is on sys.path


def peak_rss_mib() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def timed(fn, iters: int, min_seconds: float) -> float:
    """Median seconds of `fn` over at least `iters` runs and `min_seconds`, after a warm-up."""
    fn()
    samples = []
    start = time.perf_counter()
    while len(samples) < max(iters, 1) or time.perf_counter() - start < min_seconds:
        t = time.perf_counter()
        fn()
        samples.append(time.perf_counter() - t)
        if len(samples) >= 1000:
            break
    return statistics.median(samples)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--kind", choices=["train", "infer"], default="train")
    ap.add_argument("--method", choices=["none", "lora", "full"], default="lora")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=128)
    ap.add_argument("--iters", type=int, default=5)
    ap.add_argument("--min-seconds", type=float, default=5.0)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    a = ap.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    torch.manual_seed(0)

    model = AutoModelForSequenceClassification.from_pretrained(a.model, num_labels=2)
    if a.method == "lora":
        cfg = LoraConfig(task_type=TaskType.SEQ_CLS, r=8, lora_alpha=8, lora_dropout=0.0,
                         target_modules=["query", "value"])
        model = get_peft_model(model, cfg)
    ids = torch.randint(1000, model.config.vocab_size, (a.batch_size, a.seq_len))
    batch = dict(input_ids=ids, attention_mask=torch.ones_like(ids),
                 token_type_ids=torch.zeros_like(ids))
    labels = torch.arange(a.batch_size) % 2
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)

    rows = []

    def row(kind: str, seconds: float, n_trainable: int) -> dict:
        return {
            "kind": kind, "method": a.method, "method_config": {}, "batch_size": a.batch_size,
            "seq_len": a.seq_len, "step_ms": seconds * 1e3,
            "tokens_per_s": a.batch_size * a.seq_len / seconds, "trainable": n_trainable,
            "peak_rss_mib": peak_rss_mib(),
        }

    if a.kind == "train":
        if a.method == "none":
            raise SystemExit("method none has nothing to train")
        model.train()
        opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)

        def step():
            opt.zero_grad(set_to_none=True)
            out = model(**batch, labels=labels)
            out.loss.backward()
            opt.step()

        rows.append(row("train", timed(step, a.iters, a.min_seconds), trainable))
    else:
        model.eval()

        def forward():
            with torch.inference_mode():
                model(**batch)

        rows.append(row("infer-unmerged", timed(forward, a.iters, a.min_seconds), 0))
        if a.method == "lora":
            model = model.merge_and_unload().eval()
            rows.append(row("infer-merged", timed(forward, a.iters, a.min_seconds), 0))
    for r in rows:
        print(json.dumps({**r, "cpu": cpu()}))


if __name__ == "__main__":
    main()
