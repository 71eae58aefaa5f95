#!/usr/bin/env bash
# The learning-rate search of RESULTS.md for CoLA and RTE, where the shared lr 5e-3 leaves both
# methods at the majority class / chance. Model selection uses only the training data:
#   1. search: seed 1, every lr in LRS, EPOCHS epochs, held-out evaluation after every epoch
#      (the best epoch's weights are kept, so the epoch count is chosen too);
#   2. confirm: per task and method, the lr with the best *held-out* score (never dev) is rerun
#      with seeds 2 and 3.
# Finished runs are skipped. Two runs go at a time, one thread each (JOBS, THREADS).
#
#   scripts/glue_search.sh
#   target/release/ttlora summarize runs/glue-search
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/glue-search}
TASKS=${TASKS:-cola rte}
METHODS=${METHODS:-lora ttlora}
LRS=${LRS:-5e-4 1e-3 2e-3 5e-3}
EPOCHS=${EPOCHS:-6}
JOBS=${JOBS:-2}
export RAYON_NUM_THREADS=${THREADS:-1}

run() { # task method lr seed
  local dir=$OUT/$1-$2-lr$3-s$4
  [[ -f $dir/eval_results.json ]] && return 0
  echo "== $1 $2 lr $3 seed $4" >&2
  "$BIN" train --model all-MiniLM-L6-v2 --task "$1" --data "$DATA" --method "$2" --lr "$3" \
    --epochs "$EPOCHS" --seed "$4" --batch-size 32 --max-len 128 --out "$dir" --quiet --resume
}

# Runs the queued "task method lr seed" lines, JOBS at a time.
drain() {
  local line
  while read -r line; do
    while (( $(jobs -rp | wc -l) >= JOBS )); do wait -n; done
    # shellcheck disable=SC2086
    run $line &
  done
  wait
}

for task in $TASKS; do for method in $METHODS; do for lr in $LRS; do
  echo "$task $method $lr 1"
done; done; done | drain

# The lr whose seed-1 run scored best on the held-out slice.
best_lr() { # task method
  python3 - "$OUT" "$1" "$2" $LRS <<'PY'
import json, sys
out, task, method, lrs = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
def held_out(lr):
    with open(f"{out}/{task}-{method}-lr{lr}-s1/eval_results.json") as f:
        return json.load(f)["summary"]["best_primary"]
print(max(lrs, key=held_out))
PY
}

for task in $TASKS; do for method in $METHODS; do
  lr=$(best_lr "$task" "$method")
  echo "chosen on held-out: $task $method lr $lr" >&2
  for seed in 2 3; do echo "$task $method $lr $seed"; done
done; done | drain

# The selection, for RESULTS.md: every seed-1 run's held-out score, and which lr was chosen.
python3 - "$OUT" "$TASKS" "$METHODS" "$LRS" <<'PY'
import json, sys
out, tasks, methods, lrs = sys.argv[1], *(a.split() for a in sys.argv[2:])
print("| task | method | lr | held-out (best epoch) | dev | chosen |")
print("|---|---|---|---:|---:|---|")
for task in tasks:
    for method in methods:
        scores = {}
        for lr in lrs:
            with open(f"{out}/{task}-{method}-lr{lr}-s1/eval_results.json") as f:
                r = json.load(f)
            scores[lr] = (r["summary"]["best_primary"], r["dev_metrics"][r["primary_metric"]])
        best = max(lrs, key=lambda lr: scores[lr][0])
        for lr in lrs:
            held, dev = scores[lr]
            print(f"| {task} | {method} | {lr} | {100 * held:.1f} | {100 * dev:.1f} | {'yes' if lr == best else ''} |")
PY
