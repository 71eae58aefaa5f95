#!/usr/bin/env bash
# The RESULTS.md method comparison (issue 6): all-MiniLM-L6-v2 with every method on the GLUE
# dev sets, each method at its own default learning rate (`ttlora train --help`, `ttlora
# methods`), batch 32, 128 tokens; the same epochs and training subsets as
# scripts/glue_results.sh. Finished runs (eval_results.json present) are skipped, so rerunning
# resumes. RUNS at a time (default 2), one thread each. LoRA and TT-LoRA runs of
# scripts/glue_results.sh are linked in where this folder lacks its own (REUSE=0: train them).
#
#   scripts/glue_methods.sh                       # everything, seeds 1 2 3
#   SEEDS="1" TASKS="mrpc rte" METHODS="adapter-houlsby loretta-rep" scripts/glue_methods.sh
#
# Then: target/release/ttlora summarize --by-method runs/methods > table.md   (the paper's layout)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DATA=${DATA:-../shared/data}
OUT=${OUT:-runs/methods}
SEEDS=${SEEDS:-1 2 3}
TASKS=${TASKS:-mrpc stsb rte cola sst2}
METHODS=${METHODS:-lora ttlora adapter-houlsby adapter-pfeiffer loretta-rep loretta-adp prefix prompt full}
RUNS=${RUNS:-2}
REUSE=${REUSE:-1}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
for seed in $SEEDS; do
  for task in $TASKS; do
    task_args "$task"
    for variant in $METHODS; do
      case $variant in
        adapter-*) method=(--method adapter --adapter-config "{\"variant\":\"${variant#adapter-}\"}") ;;
        *) method=(--method "$variant") ;;
      esac
      dir=$OUT/$task-$variant-s$seed
      [[ -f $dir/eval_results.json ]] && continue
      # LoRA and TT-LoRA (α 8) ran with these settings for scripts/glue_results.sh: where this
      # folder has no run of its own, link to those (REUSE=0 trains them here instead).
      case $variant in lora) prior=lora ;; ttlora) prior=ttlora-alpha8 ;; *) prior= ;; esac
      if [[ $REUSE == 1 && -n $prior && -f runs/glue/$task-$prior-s$seed/eval_results.json ]]; then
        mkdir -p "$OUT" && ln -sfn "../glue/$task-$prior-s$seed" "$dir" && continue
      fi
      while (( $(jobs -rp | wc -l) >= RUNS )); do wait -n; done
      echo "== $task $variant seed $seed" >&2
      "$BIN" train --model all-MiniLM-L6-v2 --task "$task" --data "$DATA" "${method[@]}" \
        --batch-size 32 --max-len 128 --seed "$seed" "${extra[@]}" \
        --out "$dir" --quiet --resume &
    done
  done
done
wait
