#!/usr/bin/env bash
# The CoLA learning-rate probe of RESULTS.md: both methods sit at the majority class (MCC ≈ 0)
# with the shared lr 5e-3; does a lower lr train them? Full CoLA training split, 3 epochs,
# seed 1, official dev split; the held-out score (model selection) is printed beside it.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z ${BIN:-} ]]; then
  cargo build --release --quiet
  BIN=target/release/ttlora
fi
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/cola-probe}
run() {
  local name=$1; shift
  [[ -f $OUT/$name/eval_results.json ]] && return
  "$BIN" train --model all-MiniLM-L6-v2 --task cola --data "$DATA" --epochs 3 --seed 1 \
    --batch-size 32 --max-len 128 --out "$OUT/$name" --quiet "$@" | grep '^dev' | sed "s/^/$name: /"
}
run lora-lr1e-3 --method lora --lr 1e-3
run tt-lr1e-3 --lr 1e-3
run lora-lr2e-4 --method lora --lr 2e-4
run tt-lr2e-4 --lr 2e-4
