#!/usr/bin/env python3
"""Writes tests/fixtures/smollm2_tokenizer.json: transformers' token ids (its tokenizer read
from the packaged SmolLM2-135M-Instruct GGUF) for strings that trip tokenizers up, which
ttlora's GGUF tokenizer must reproduce (tests/causal_lm.rs). Needs torch, transformers and
gguf. usage: make_tokenizer_fixture.py GGUF"""
import json
import sys
from pathlib import Path

from transformers import AutoTokenizer

STRINGS = [
    " leading space", "  two spaces", "trailing space ", "digits 1234567 and 3.14159",
    "emoji 🙂🚀 and ünïcödé", "new\nlines\n\n and\ttabs", "\n\n\n", "CamelCaseWords_and-dashes",
    "don't won't y'all I'M", "    indented code();", "<|im_start|>user\nHi<|im_end|>\n",
    "<|im_start|>assistant\nAnswer: 93.<|im_end|>", "中文和日本語のテキスト", "a" * 40,
    "https://example.com/path?q=1&r=2", "x=1;y=2\r\nz", "",
]


def main():
    gguf = Path(sys.argv[1])
    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    rows = [{"text": s, "ids": tok(s)["input_ids"]} for s in STRINGS]
    out = Path(__file__).resolve().parent.parent / "tests/fixtures/smollm2_tokenizer.json"
    out.write_text(json.dumps({"source": "transformers 5.25.0 AutoTokenizer from the GGUF (scripts/make_tokenizer_fixture.py)",
                               "rows": rows}, ensure_ascii=False, indent=1) + "\n")
    print(f"{len(rows)} strings -> {out}")


if __name__ == "__main__":
    main()
