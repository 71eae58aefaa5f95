#!/usr/bin/env bash
# Compresses trained LoRA r=8 adapters (from scripts/glue_results.sh) into TT-LoRA by TT-SVD
# at several rank caps and scores each on the official dev split: the RESULTS.md table
# "Compressing a trained LoRA". Prints one markdown row per adapter.
#
#   TASK=sst2 SEED=1 scripts/compress_lora.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DATA=${DATA:-../shared/data}
TASK=${TASK:-sst2}
SEED=${SEED:-1}
SRC=runs/glue/$TASK-lora-s$SEED
OUT=${OUT:-runs/compress}
[[ -f $SRC/adapter_config.json ]] || { echo "no $SRC; run scripts/glue_results.sh first" >&2; exit 1; }
score() {
  "$BIN" eval --adapter "$1" --data "$DATA" --offline --json |
    python3 -c 'import json, sys; print(", ".join(f"{k} {100 * v:.2f}" for k, v in json.load(sys.stdin).items()))'
}
echo "| adapter | TT ranks | adapter params | relative error of ΔW | dev metrics |"
echo "|---|---|---:|---:|---|"
echo "| LoRA r=8 (trained) | – | $("$BIN" inspect --json "$SRC" | grep -o '"adapter_params": [0-9]*' | grep -o '[0-9]*') | 0 | $(score "$SRC") |"
for cap in exact 16 8 5 3; do
  dir=$OUT/$TASK-lora-s$SEED-tt-$cap
  args=()
  [[ $cap != exact ]] && args=(--max-rank "$cap")
  report=$("$BIN" compress --adapter "$SRC" --out "$dir" --force --offline --json "${args[@]}")
  params=$(echo "$report" | grep -o '"params_after": [0-9]*' | tail -1 | grep -o '[0-9]*$')
  err=$(echo "$report" | grep -o '"rel_error": [0-9.e-]*' | tail -1 | grep -o '[0-9.e-]*$')
  echo "| TT-SVD of it | $cap | $params | $(printf '%.3g' "$err") | $(score "$dir") |"
done
