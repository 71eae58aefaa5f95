#!/usr/bin/env python3
"""The PyTorch + transformers + PEFT side of `scripts/bench_predict_compare.sh`: labels the
`sentence` column of a TSV with a base model and a PEFT LoRA folder (unmerged, as `ttlora
predict --no-merge` runs it, or with `--merge` folded in by `merge_and_unload()`, as `ttlora
predict` runs it by default), in batches sorted by token length, longest first, as ttlora's `predict` does;
prints one JSON line with the sentences per second from the first tokenization to the last
prediction (loading the model is not timed), and the CPU.

    .venv-ref/bin/python scripts/bench_predict_reference.py --model DIR --adapter DIR --file F.tsv
"""
import argparse
import csv
import json
import time

import torch
from peft import PeftModel
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from bench_machine import cpu  # scripts/, this file's folder, is on sys.path


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--adapter", required=True)
    ap.add_argument("--file", required=True)
    ap.add_argument("--batch-size", type=int, default=64)
    ap.add_argument("--max-len", type=int, default=128)
    ap.add_argument("--threads", type=int, default=0, help="torch threads (0: all cores)")
    ap.add_argument("--merge", action="store_true", help="merge_and_unload() the adapter first")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    with open(args.file, newline="") as f:
        sentences = [row["sentence"] for row in csv.DictReader(f, delimiter="\t", quoting=csv.QUOTE_NONE)]
    tok = AutoTokenizer.from_pretrained(args.model)
    base = AutoModelForSequenceClassification.from_pretrained(args.model, num_labels=2)
    model = PeftModel.from_pretrained(base, args.adapter).eval()
    if args.merge:
        model = model.merge_and_unload().eval()
    start = time.perf_counter()
    # Tokenized once (as ttlora does), then sorted by length and padded a batch at a time.
    ids = tok(sentences, truncation=True, max_length=args.max_len)["input_ids"]
    lengths = [len(x) for x in ids]
    order = sorted(range(len(sentences)), key=lambda i: -lengths[i])
    labels = [0] * len(sentences)
    with torch.inference_mode():
        for b in range(0, len(order), args.batch_size):
            idx = order[b:b + args.batch_size]
            enc = tok.pad({"input_ids": [ids[i] for i in idx]}, return_tensors="pt")
            probs = model(**enc).logits.softmax(-1)
            for i, c in zip(idx, probs.argmax(-1).tolist()):
                labels[i] = c
    seconds = time.perf_counter() - start
    print(json.dumps({"impl": "pytorch", "kind": "predict", "sentences": len(sentences),
                      "tokens": sum(lengths), "seconds": seconds,
                      "sentences_per_s": len(sentences) / seconds,
                      "batch_size": args.batch_size, "threads": torch.get_num_threads(),
                      "merged": args.merge,
                      "positive": sum(labels), "cpu": cpu()}))


if __name__ == "__main__":
    main()
