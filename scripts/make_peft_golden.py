"""Writes the golden HF PEFT fixture under tests/fixtures/peft/ with the real Python stack.

    scripts/python_ref.sh && .venv-ref/bin/python scripts/make_peft_golden.py

Produces a tiny random BertForSequenceClassification (`base/`), a PEFT LoRA adapter for it
saved by PEFT itself (`lora/`: r=4, lora_alpha=8, query+value, random non-zero B, a changed
classifier in modules_to_save), and `expected.json`: a padded batch of token ids with the
logits PyTorch computes for the base model, the adapted model and the merged model. ttlora's
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


if __name__ == "__main__":
    main()
