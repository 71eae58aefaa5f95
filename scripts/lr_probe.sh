#!/usr/bin/env bash
# The learning-rate probe of RESULTS.md: on CoLA and RTE both methods stay at the majority
# class / chance with the shared lr 5e-3. Do lower learning rates train them? Full training
# split, 3 epochs, seed 1, official dev split. Finished runs are skipped.
#
#   TASKS="cola rte" LRS="1e-3" METHODS="lora ttlora" scripts/lr_probe.sh
#   target/release/ttlora summarize runs/lr-probe
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/lr-probe}
TASKS=${TASKS:-cola rte}
LRS=${LRS:-1e-3}
METHODS=${METHODS:-lora ttlora}
for task in $TASKS; do
  for lr in $LRS; do
    for method in $METHODS; do
      dir=$OUT/$task-$method-lr$lr-s1
      [[ -f $dir/eval_results.json ]] && continue
      echo "== $task $method lr $lr" >&2
      "$BIN" train --model all-MiniLM-L6-v2 --task "$task" --data "$DATA" --method "$method" \
        --lr "$lr" --epochs 3 --seed 1 --batch-size 32 --max-len 128 --out "$dir" --quiet --resume
    done
  done
done
