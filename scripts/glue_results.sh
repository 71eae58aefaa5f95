#!/usr/bin/env bash
# Reruns the RESULTS.md table: all-MiniLM-L6-v2 + TT-LoRA (q,v) vs LoRA r=8 (q,v) on GLUE
# dev sets; TT-LoRA with α = 8 (the default) and α = 64 (the α comparison). Finished runs
# (eval_results.json present) are skipped, so rerunning resumes. RUNS at a time (default 2),
# one thread each: on 2 cores that is faster than one run on two threads.
#
#   scripts/glue_results.sh                 # everything, seeds 1 2 3
#   SEEDS="1" TASKS="mrpc rte" scripts/glue_results.sh
#   DATA=/path/to/glue-root scripts/glue_results.sh   # folder holding glue/ (default: ../shared/data)
#
# Then: target/release/ttlora summarize runs/glue > table.md
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/glue}
SEEDS=${SEEDS:-1 2 3}
TASKS=${TASKS:-mrpc stsb rte cola sst2}
METHODS=${METHODS:-ttlora-alpha8 ttlora-alpha64 lora}
RUNS=${RUNS:-2}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
for seed in $SEEDS; do
  for task in $TASKS; do
    task_args "$task"
    for variant in $METHODS; do
      case $variant in
        ttlora-alpha*) method=(--method ttlora --alpha "${variant#ttlora-alpha}") ;;
        *) method=(--method "$variant") ;;
      esac
      dir=$OUT/$task-$variant-s$seed
      [[ -f $dir/eval_results.json ]] && continue
      while (( $(jobs -rp | wc -l) >= RUNS )); do wait -n; done
      echo "== $task $variant seed $seed" >&2
      "$BIN" train --model all-MiniLM-L6-v2 --task "$task" --data "$DATA" "${method[@]}" \
        --lr 5e-3 --batch-size 32 --max-len 128 --seed "$seed" "${extra[@]}" \
        --out "$dir" --quiet --resume &
    done
  done
done
wait
