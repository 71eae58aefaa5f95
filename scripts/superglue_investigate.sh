#!/usr/bin/env bash
# Issue 19's investigations of the SuperGLUE rows that do not beat zero-shot (RESULTS.md):
# each row one `ttlora train --objective lm-score` run on SmolLM2 (TT-LoRA unless the row names
# LoRA) with one setting changed from scripts/superglue_train.sh's (same sampling, batch 8,
# --max-len 256, seed 42).
# Finished rows are skipped and an interrupted one resumes from its checkpoint, so rerunning
# resumes. Folders under $OUT (default runs/superglue-investigate), eval_results.json tracked.
#
#   scripts/superglue_investigate.sh
#   ROWS="rte-ttlora-seed42-3ep" BIN=/tmp/ttlora scripts/superglue_investigate.sh
#
# Rows (name: what changes):
#   copa-ttlora-seed42-candidates   COPA trained on the candidates' cross-entropy, not the gold LM loss
#   copa-ttlora-seed42-gold-lr1e-3  COPA's gold LM loss at lr 1e-3 instead of 5e-3
#   rte-ttlora-seed42-3ep           RTE for 3 epochs instead of 1
#   rte-lora-seed42-3ep             the same for LoRA r = 8 (the comparison at equal steps)
#   rte-ttlora-seed42-lr2e-2        RTE at lr 2e-2 instead of 5e-3 (1 epoch)
#   wic-ttlora-seed42-lr2e-2        WiC at lr 2e-2 instead of 5e-3 (1 epoch)
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DATA=${DATA:-../shared/data}
MODEL=${MODEL:-smollm2}
OUT=${OUT:-runs/superglue-investigate}

# The row's changed arguments (its task and method are the first two parts of its name).
row_args() {
  case $1 in
    copa-ttlora-seed42-candidates) echo "--epochs 3 --choice-loss candidates" ;;
    copa-ttlora-seed42-gold-lr1e-3) echo "--epochs 3 --choice-loss gold --lr 1e-3" ;;
    rte-ttlora-seed42-3ep | rte-lora-seed42-3ep) echo "--epochs 3" ;;
    rte-ttlora-seed42-lr2e-2 | wic-ttlora-seed42-lr2e-2) echo "--epochs 1 --lr 2e-2" ;;
    *) echo "unknown row $1" >&2; return 2 ;;
  esac
}

default="copa-ttlora-seed42-candidates copa-ttlora-seed42-gold-lr1e-3 wic-ttlora-seed42-lr2e-2 rte-ttlora-seed42-lr2e-2 rte-ttlora-seed42-3ep rte-lora-seed42-3ep"
for row in ${ROWS:-$default}; do
  dir=$OUT/$row
  [[ -f $dir/eval_results.json ]] && continue
  spec=$(row_args "$row")
  read -r -a changed <<< "$spec"
  task=${row%%-*}
  method=${row#*-}
  method=${method%%-seed*}
  method_args "$method"
  resume=()
  [[ -d $dir/checkpoint ]] && resume=(--resume)
  echo "== $row" >&2
  start=$(date +%s)
  "$BIN" train --objective lm-score --task "$task" --model "$MODEL" --data "$DATA" \
    "${args[@]}" --seed 42 --batch-size 8 --max-len 256 "${changed[@]}" \
    --out "$dir" --offline -q ${resume[@]+"${resume[@]}"} > /dev/null
  echo "$row: $(( $(date +%s) - start )) s" >&2
done
