#!/usr/bin/env bash
# Installs the Python reference stack (PyTorch + transformers + HF PEFT) into a local
# virtualenv, with pip only. Used to produce the golden PEFT fixtures under tests/fixtures/
# and by the benchmark harness (gguf: transformers reads the packaged SmolLM2 GGUF with it).
# Optional: nothing in `cargo test` needs it.
#
#   scripts/python_ref.sh            # creates .venv-ref/ (override with VENV=...)
#   .venv-ref/bin/python scripts/make_peft_golden.py
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv-ref}
# Versions the committed fixtures were produced with; change them together.
TORCH=${TORCH:-2.15.0}
TRANSFORMERS=${TRANSFORMERS:-}
PEFT=${PEFT:-0.21.2}
GGUF=${GGUF:-0.19.0}
if [[ ! -x $VENV/bin/python ]]; then
  python3 -m venv "$VENV"
fi
"$VENV/bin/pip" install --quiet --upgrade pip
"$VENV/bin/pip" install --quiet "torch==$TORCH" "peft==$PEFT" \
  "transformers${TRANSFORMERS:+==$TRANSFORMERS}" safetensors numpy "gguf==$GGUF"
"$VENV/bin/python" -c 'import torch, transformers, peft, gguf; print("torch", torch.__version__, "transformers", transformers.__version__, "peft", peft.__version__, "gguf ok")'
