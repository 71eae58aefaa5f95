"""Scores a ttlora-exported PEFT LoRA on SST-2 dev with HF PEFT itself (real-model check).

    target/release/ttlora export --adapter runs/glue/sst2-lora-s1 --out /tmp/sst2-peft
    .venv-ref/bin/python scripts/peft_sst2_check.py ~/.cache/ttlora/models/all-MiniLM-L6-v2 \
        /tmp/sst2-peft ../shared/data/glue/SST-2/dev.tsv

PEFT loads the folder onto transformers' BertForSequenceClassification. all-MiniLM-L6-v2 is a
sentence-transformers model that ttlora fine-tunes with mean pooling, which that class does not
do, so this script pools the PEFT-adapted encoder's last hidden states by their mask mean and
applies the saved classifier, as ttlora does. The accuracy must equal `ttlora eval`'s.
"""

import csv
import json
import sys

import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import PeftModel
base_dir = sys.argv[1]; adapter = sys.argv[2]; dev = sys.argv[3]
tok = AutoTokenizer.from_pretrained(base_dir)
base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
model = PeftModel.from_pretrained(base, adapter).eval()
rows = list(csv.DictReader(open(dev), delimiter="\t", quoting=csv.QUOTE_NONE))
correct = 0
inner = model.base_model.model  # BertForSequenceClassification with LoRA layers
with torch.inference_mode():
    for i in range(0, len(rows), 64):
        chunk = rows[i:i + 64]
        enc = tok([r["sentence"] for r in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt")
        h = inner.bert(**enc).last_hidden_state
        m = enc["attention_mask"].unsqueeze(-1).float()
        pooled = (h * m).sum(1) / m.sum(1)          # ttlora's mean pooling for this model
        logits = inner.classifier(pooled)
        pred = logits.argmax(-1)
        correct += sum(int(p) == int(r["label"]) for p, r in zip(pred, chunk))
print(json.dumps({"examples": len(rows), "accuracy": correct / len(rows)}))
