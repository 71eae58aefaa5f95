#!/usr/bin/env python3
"""Checks a decoder classifier's exports against their real consumers (optional; needs the
virtualenv of scripts/python_ref.sh plus the `gguf` package):

1. transformers loads `ttlora export --format merged` as `AutoModelForSequenceClassification`
   and, on CB's validation prompts, predicts what `ttlora predict` predicts, with the same
   probability (ttlora runs the Q4_1 base quantized, transformers dequantized: close, not equal);
2. PEFT loads `ttlora export --format peft-lora` (SEQ_CLS, `score` in modules_to_save) onto the
   GGUF base read by transformers, and agrees the same way.

usage: check_decoder_classifier.py GGUF PEFT_EXPORT MERGED_EXPORT PREDICTIONS CB_JSONL
PREDICTIONS is `ttlora predict --adapter RUN --file CB_JSONL` output (idx, answer,
probability, prompt per line). Prints one JSON object."""
import json
import sys
from pathlib import Path

import numpy as np


def cb_prompt(row):
    # The MeZO template ttlora renders for CB (src/data/prompted.rs).
    return (f"Suppose {row['premise']} Can we infer that \"{row['hypothesis']}\"? "
            "Yes, No, or Maybe?\n")


def scores(model, tok, prompts):
    import torch
    out = []
    for p in prompts:
        # One prompt per batch: no padding, so the last token is the one the head reads.
        ids = tok(p, return_tensors="pt")["input_ids"]
        with torch.no_grad():
            logits = model(input_ids=ids).logits[0].double().numpy()
        e = np.exp(logits - logits.max())
        out.append(e / e.sum())
    return out


def compare(name, probs, labels, ours):
    agree = sum(int(labels[p.argmax()] == o[1]) for p, o in zip(probs, ours))
    diff = max(abs(float(p.max()) - o[2]) for p, o in zip(probs, ours))
    return {f"{name}_argmax_agrees": f"{agree}/{len(ours)}",
            f"{name}_probability_max_abs_diff": diff}


def main():
    gguf, peft_dir, merged, predictions, cb = sys.argv[1:6]
    import torch
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    rows = [json.loads(l) for l in Path(cb).read_text().splitlines() if l.strip()]
    ours = []
    for line in Path(predictions).read_text().splitlines():
        idx, answer, prob, _ = line.split("\t", 3)
        ours.append((idx, answer, float(prob)))
    rows = rows[:len(ours)]
    assert [str(r["idx"]) for r in rows] == [o[0] for o in ours], "predictions are not CB's rows"
    prompts = [cb_prompt(r) for r in rows]
    report = {"examples": len(rows)}

    config = json.loads((Path(merged) / "config.json").read_text())
    labels = [config["id2label"][str(i)] for i in range(config["num_labels"])]
    tok = AutoTokenizer.from_pretrained(merged)
    model = AutoModelForSequenceClassification.from_pretrained(merged, dtype=torch.float32)
    model.eval()
    report["merged_architecture"] = type(model).__name__
    report.update(compare("merged", scores(model, tok, prompts),
                          labels, ours))

    from peft import PeftModel
    folder, name = str(Path(gguf).parent), Path(gguf).name
    base = AutoModelForSequenceClassification.from_pretrained(
        folder, gguf_file=name, dtype=torch.float32, num_labels=len(labels),
        pad_token_id=config["pad_token_id"])
    peft_model = PeftModel.from_pretrained(base, peft_dir).eval()
    report.update(compare("peft", scores(peft_model, tok, prompts),
                          labels, ours))
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
