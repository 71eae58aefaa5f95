#!/usr/bin/env bash
# The α investigation of RESULTS.md: TT-LoRA with α = 8 (the default before 2026-11-29; now 64)
# on the same GLUE runs as scripts/glue_results.sh, seed 1 unless SEEDS says otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/glue}
SEEDS=${SEEDS:-1}
TASKS=${TASKS:-stsb mrpc rte cola sst2}
for seed in $SEEDS; do
  for task in $TASKS; do
    case $task in
      sst2) extra=(--max-train 20000 --epochs 1) ;;
      *) extra=(--epochs 3) ;;
    esac
    dir=$OUT/$task-ttlora-alpha8-s$seed
    [[ -f $dir/eval_results.json ]] && continue
    echo "== $task ttlora alpha 8 seed $seed" >&2
    "$BIN" train --model all-MiniLM-L6-v2 --task "$task" --data "$DATA" \
      --method ttlora --alpha 8 --lr 5e-3 --batch-size 32 --max-len 128 --seed "$seed" \
      "${extra[@]}" --out "$dir" --quiet --resume
  done
done
