#!/usr/bin/env bash
# Reruns RESULTS.md's SuperGLUE table on a decoder by LM scoring (issue 19), so far its
# zero-shot rows: the base model alone, each task's validation file (at most 1,000 examples
# drawn with seed 0). Finished rows (their JSON present) are skipped, so rerunning resumes.
#
#   scripts/superglue_lm.sh                          # SmolLM2-135M, the tasks below
#   TASKS="cb copa" MODEL=path/to/model.gguf scripts/superglue_lm.sh
#   DATA=/path/to/root scripts/superglue_lm.sh       # folder holding superglue/ (default ../shared/data)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DATA=${DATA:-../shared/data}
MODEL=${MODEL:-smollm2}
OUT=${OUT:-runs/superglue-lm}
TASKS=${TASKS:-cb copa rte wic boolq wsc multirc}
mkdir -p "$OUT"
for task in $TASKS; do
  out=$OUT/zero-shot-$task.json
  [[ -f $out ]] && continue
  echo "== zero-shot $task" >&2
  start=$(date +%s)
  "$BIN" eval --model "$MODEL" --objective lm-score --task "$task" --data "$DATA" \
    --max-examples 1000 --seed 0 --offline --json > "$out.tmp"
  echo "$task: $(( $(date +%s) - start )) s" >&2
  mv "$out.tmp" "$out"
done
