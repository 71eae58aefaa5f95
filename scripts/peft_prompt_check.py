"""Scores a ttlora prompt- or prefix-tuning folder with HF PEFT itself (real-model check).

    target/release/ttlora train --method prefix --task sst2 --max-train 512 --epochs 1 --out /tmp/p
    .venv-ref/bin/python scripts/peft_prompt_check.py ~/.cache/ttlora/models/all-MiniLM-L6-v2 \
        /tmp/p ../shared/data/glue/SST-2/dev.tsv
    target/release/ttlora eval --adapter /tmp/p --file ../shared/data/glue/SST-2/dev.tsv --text-column sentence

PEFT loads the folder as written (PREFIX_TUNING / PROMPT_TUNING, `prompt_embeddings`, the head
under `base_model.classifier`). all-MiniLM-L6-v2 is fine-tuned with mean pooling, which
transformers' BertForSequenceClassification does not do, so the script runs the encoder with
PEFT's prompt (`get_prompt`: soft tokens before the input embeddings, or past keys/values),
mean-pools over the mask and applies the saved classifier, as ttlora does. The accuracy must
equal `ttlora eval`'s, and the printed probabilities `ttlora predict`'s.
"""
import csv, json, sys, torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer
from peft import PeftModel
base_dir, adapter, dev = sys.argv[1:4]
tok = AutoTokenizer.from_pretrained(base_dir)
base = AutoModelForSequenceClassification.from_pretrained(base_dir, num_labels=2)
model = PeftModel.from_pretrained(base, adapter).eval()
cfg = model.peft_config["default"]
inner = model.base_model
rows = list(csv.DictReader(open(dev), delimiter="\t", quoting=csv.QUOTE_NONE))
correct = 0
with torch.inference_mode():
    for i in range(0, len(rows), 50):
        chunk = rows[i:i+50]
        enc = tok([r["sentence"] for r in chunk], padding=True, truncation=True, max_length=128, return_tensors="pt")
        b = enc["input_ids"].shape[0]; n = cfg.num_virtual_tokens
        mask = torch.cat([torch.ones(b, n, dtype=enc["attention_mask"].dtype), enc["attention_mask"]], 1)
        if cfg.peft_type.value == "PROMPT_TUNING":
            prompts = model.get_prompt(batch_size=b)
            emb = inner.bert.embeddings.word_embeddings(enc["input_ids"])
            tt = torch.cat([torch.zeros(b, n, dtype=torch.long), enc["token_type_ids"]], 1)
            h = inner.bert(inputs_embeds=torch.cat([prompts.to(emb.dtype), emb], 1), attention_mask=mask, token_type_ids=tt).last_hidden_state
            pm = mask
        else:
            pkv = model.get_prompt(batch_size=b)
            h = inner.bert(input_ids=enc["input_ids"], token_type_ids=enc["token_type_ids"], attention_mask=mask, past_key_values=pkv).last_hidden_state
            pm = enc["attention_mask"]
        m = pm.unsqueeze(-1).float()
        logits = inner.classifier((h * m).sum(1) / m.sum(1))
        if i == 0: print("P(predicted label), first 3:", [round(x, 4) for x in logits.softmax(-1).max(-1).values[:3].tolist()])
        correct += sum(int(p) == int(r["label"]) for p, r in zip(logits.argmax(-1), chunk))
print(json.dumps({"examples": len(rows), "accuracy": correct / len(rows)}))
