#!/usr/bin/env bash
# Reruns RESULTS.md's SuperGLUE fine-tuning rows on a decoder (issue 19): `ttlora train
# --objective lm-score` (or classify) per (task, method, seed[, objective]), each run's folder under $OUT
# with its eval_results.json (tracked in git). Finished runs are skipped and an interrupted one
# continues from its checkpoint, so rerunning resumes. Rows run in the order below: the first
# seed of TT-LoRA and LoRA on CB, COPA and RTE; the classification head on CB and RTE; the
# other methods there; the other seeds; then WiC and BoolQ.
#
#   scripts/superglue_train.sh                      # SmolLM2-135M (Q4_1 GGUF), every row
#   ROWS="cb:ttlora:42 rte:lora:43:classify-frozen" scripts/superglue_train.sh
#   (a row is task:method:seed[:objective], objective lm-score (default), classify or
#   classify-frozen: the decoder's `score` head trained or frozen)
#   BIN=/tmp/ttlora scripts/superglue_train.sh      # a prebuilt binary (safe while rebuilding)
#
# Protocol (MeZO/LoRETTA): up to 1,000 training examples sampled, 500 more held out for
# selection (100 for CB and COPA), up to 1,000 validation examples drawn with seed 0 (the
# zero-shot rows' sample). Batch 8, the method's default learning rate, --max-len 256 (longer
# prompts lose their start). Epochs: 3 on CB and COPA (150 and 300 training examples),
# 1 on RTE, WiC and BoolQ (1,000), to fit a working session on 2 cores.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DATA=${DATA:-../shared/data}
MODEL=${MODEL:-smollm2}
OUT=${OUT:-runs/superglue-train}

rows() {
  local s t m h
  for t in cb copa rte; do for m in ttlora lora; do echo "$t:$m:42"; done; done
  # The classification head, frozen (the TT-LoRA authors' set-up) and trained.
  for t in cb rte; do for m in ttlora lora; do for h in classify-frozen classify; do
    echo "$t:$m:42:$h"; done; done; done
  for t in cb copa rte; do for m in loretta-rep adapter prefix prompt full; do echo "$t:$m:42"; done; done
  for s in 43 44; do for t in cb copa rte; do for m in ttlora lora; do echo "$t:$m:$s"; done; done; done
  for s in 42 43 44; do for t in wic boolq; do for m in ttlora lora; do echo "$t:$m:$s"; done; done; done
}

for row in ${ROWS:-$(rows)}; do
  IFS=: read -r task method seed objective <<< "$row"
  objective=${objective:-lm-score}
  case $objective in
    lm-score) dir=$OUT/$task-$method-seed$seed; obj=(--objective lm-score) ;;
    classify) dir=$OUT/$task-$method-seed$seed-classify; obj=(--objective classify) ;;
    classify-frozen) dir=$OUT/$task-$method-seed$seed-classify-frozen
                     obj=(--objective classify --freeze-head) ;;
    *) echo "unknown objective in row $row" >&2; exit 2 ;;
  esac
  [[ -f $dir/eval_results.json ]] && continue
  case $task in
    cb|copa) epochs=3 ;;
    *) epochs=1 ;;
  esac
  method_args "$method"
  resume=()
  [[ -d $dir/checkpoint ]] && resume=(--resume)
  echo "== $task $method seed $seed $objective ($epochs epochs)" >&2
  start=$(date +%s)
  "$BIN" train "${obj[@]}" --task "$task" --model "$MODEL" --data "$DATA" \
    "${args[@]}" --seed "$seed" --epochs "$epochs" --batch-size 8 --max-len 256 \
    --out "$dir" --offline -q ${resume[@]+"${resume[@]}"} > /dev/null
  echo "$task $method seed $seed $objective: $(( $(date +%s) - start )) s" >&2
done
