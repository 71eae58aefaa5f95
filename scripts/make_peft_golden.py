"""Writes the golden HF PEFT fixture under tests/fixtures/peft/ with the real Python stack.

    scripts/python_ref.sh && .venv-ref/bin/python scripts/make_peft_golden.py

Produces a tiny random BertForSequenceClassification (`base/`), a PEFT LoRA adapter for it
saved by PEFT itself (`lora/`: r=4, lora_alpha=8, query+value, random non-zero B, a changed
classifier in modules_to_save), and `expected.json`: a padded batch of token ids with the
logits PyTorch computes for the base model, the adapted model and the merged model; then
`prompt/` and `prefix/` (PEFT prompt and prefix tuning, 3 random virtual tokens, a changed
head) with `expected_prompt.json`, their logits in PEFT. ttlora's
tests read these files and must reproduce the logits; nothing here is produced by ttlora.
"""

import json
import pathlib

import peft
import torch
import transformers
from peft import LoraConfig, TaskType, get_peft_model
from transformers import BertConfig, BertForSequenceClassification

OUT = pathlib.Path(__file__).resolve().parent.parent / "tests" / "fixtures" / "peft"


def main() -> None:
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=100,
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=64,
        type_vocab_size=2,
        num_labels=3,
        hidden_act="gelu",
        # Wider than BERT's 0.02 so that the rows of a random model differ visibly.
        initializer_range=0.3,
    )
    base = BertForSequenceClassification(config).eval()
    base.save_pretrained(OUT / "base", safe_serialization=True)

    # Fixed batch: a pair with padding and a longer single row.
    input_ids = torch.tensor([[2, 15, 27, 33, 3, 44, 3, 0, 0], [2, 40, 41, 42, 43, 3, 50, 51, 3]])
    token_type_ids = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 0, 0], [0, 0, 0, 0, 0, 0, 1, 1, 1]])
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1, 1, 0, 0], [1] * 9])
    batch = dict(input_ids=input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask)
    with torch.no_grad():
        base_logits = base(**batch).logits

    lora = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        lora_dropout=0.0,
        init_lora_weights=False,  # random B: the adapter changes the output
    )
    model = get_peft_model(base, lora).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "modules_to_save" in name:
                p.add_(0.1 * torch.randn_like(p))
        adapted_logits = model(**batch).logits
    model.save_pretrained(OUT / "lora")
    (OUT / "lora" / "README.md").unlink()  # PEFT's model card, not part of the format
    # The fixture must test the LoRA weights, not only the head: zeroing every lora_B has to
    # change the logits by far more than the test tolerance.
    with torch.no_grad():
        saved = {n: p.clone() for n, p in model.named_parameters() if "lora_B" in n}
        for n, p in model.named_parameters():
            if "lora_B" in n:
                p.zero_()
        head_only = model(**batch).logits
        for n, p in model.named_parameters():
            if n in saved:
                p.copy_(saved[n])
    lora_effect = (adapted_logits - head_only).abs().max().item()
    assert lora_effect > 1e-2, f"LoRA changes the logits by only {lora_effect}"
    print("largest change of a logit by the LoRA weights:", lora_effect)
    with torch.no_grad():
        merged_logits = model.merge_and_unload()(**batch).logits

    expected = {
        "produced_with": {
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "peft": peft.__version__,
        },
        "input_ids": input_ids.tolist(),
        "token_type_ids": token_type_ids.tolist(),
        "attention_mask": attention_mask.tolist(),
        "base_logits": base_logits.tolist(),
        "adapted_logits": adapted_logits.tolist(),
        "merged_logits": merged_logits.tolist(),
    }
    text = json.dumps(expected, indent=1)
    (OUT / "expected.json").write_text(text + "\n")
    print("wrote", OUT)


def prompt_learning() -> None:
    """`prompt/` and `prefix/`: PEFT prompt tuning and prefix tuning of the same base, with
    random tokens and a changed head, saved by PEFT, and `expected_prompt.json` with the logits
    PEFT computes for the fixed batch."""
    from peft import PrefixTuningConfig, PromptTuningConfig

    torch.manual_seed(1)
    expected = json.loads((OUT / "expected.json").read_text())
    batch = {k: torch.tensor(expected[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
    out = {"produced_with": expected["produced_with"]}
    for name, config in [
        ("prompt", PromptTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3)),
        ("prefix", PrefixTuningConfig(task_type=TaskType.SEQ_CLS, num_virtual_tokens=3)),
    ]:
        base = BertForSequenceClassification.from_pretrained(OUT / "base").eval()
        model = get_peft_model(base, config).eval()
        with torch.no_grad():
            for n, p in model.named_parameters():
                if "modules_to_save" in n:
                    p.add_(0.1 * torch.randn_like(p))
                if "prompt_encoder" in n:
                    p.copy_(torch.randn_like(p))
            if name == "prompt":
                logits = model(**batch).logits
            else:
                # PEFT's own forward refuses prefix tuning here: transformers 5's
                # BertForSequenceClassification.forward has no `past_key_values` parameter
                # (its BertModel does). So run BertModel with PEFT's prefix as past keys and
                # values, the mask prefixed with ones as PEFT does, then BERT's head.
                b = batch["input_ids"].shape[0]
                mask = torch.cat([torch.ones(b, 3, dtype=torch.long), batch["attention_mask"]], 1)
                enc = base.bert(
                    input_ids=batch["input_ids"],
                    token_type_ids=batch["token_type_ids"],
                    attention_mask=mask,
                    past_key_values=model.get_prompt(batch_size=b),
                )
                logits = base.classifier(enc.pooler_output)
            out[f"{name}_logits"] = logits.tolist()
        model.save_pretrained(OUT / name)
        (OUT / name / "README.md").unlink()
    (OUT / "expected_prompt.json").write_text(json.dumps(out, indent=1) + "\n")
    print("wrote prompt/ and prefix/")


def dora() -> None:
    """`dora/`: a PEFT LoRA with `use_dora=True` (r=4, lora_alpha=8, query+value, random B and
    a perturbed magnitude, a changed head), and `expected_dora.json` with PEFT's adapted and
    merged logits for the fixed batch."""
    torch.manual_seed(2)
    expected = json.loads((OUT / "expected.json").read_text())
    batch = {k: torch.tensor(expected[k]) for k in ("input_ids", "token_type_ids", "attention_mask")}
    base = BertForSequenceClassification.from_pretrained(OUT / "base").eval()
    config = LoraConfig(
        task_type=TaskType.SEQ_CLS,
        r=4,
        lora_alpha=8,
        target_modules=["query", "value"],
        lora_dropout=0.0,
        init_lora_weights=False,
        use_dora=True,
    )
    model = get_peft_model(base, config).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if "modules_to_save" in n:
                p.add_(0.1 * torch.randn_like(p))
            if "lora_magnitude_vector" in n:
                p.mul_(1.0 + 0.2 * torch.randn_like(p))
        adapted = model(**batch).logits.tolist()
    model.save_pretrained(OUT / "dora")
    (OUT / "dora" / "README.md").unlink()
    with torch.no_grad():
        merged = model.merge_and_unload()(**batch).logits.tolist()
    out = {"produced_with": expected["produced_with"], "adapted_logits": adapted, "merged_logits": merged}
    (OUT / "expected_dora.json").write_text(json.dumps(out, indent=1) + "\n")
    print("wrote dora/")


if __name__ == "__main__":
    main()
    prompt_learning()
    dora()
