#!/usr/bin/env bash
# Issue 20's trade-off studies on all-MiniLM-L6-v2, one task at a time (TASK=mrpc or sst2):
# TT-LoRA over the paper's grid (examples/search/ttlora-space.toml) with ASHA (27 trials, η 3,
# grace 1 epoch) and by random search without early stopping (9 trials, the same first
# configs), each with seeds 1, 2, 3; LoRA's rank sweep and LoRETTA-rep's tensor ranks as
# grids, the trade-off plot's references; and tpe-1, ASHA with the TPE sampler on asha-1's
# seed and budget (27 trials; its first 10 configs are asha-1's), the model-based sampler
# against random draws on real trials. Every study lives in runs/search-$TASK/<name>/ and
# resumes when the script runs again (a finished study is not rerun). The plot:
#   ttlora search report runs/search-$TASK/asha-1 --compare runs/search-$TASK/lora-sweep \
#     --compare runs/search-$TASK/loretta-sweep
#
#   scripts/search_tradeoff.sh                        # MRPC, every study in order
#   TASK=sst2 scripts/search_tradeoff.sh              # SST-2's 20k-sentence sample
#   STUDIES="asha-1 random-1" scripts/search_tradeoff.sh
#   BIN=/tmp/ttlora scripts/search_tradeoff.sh        # a prebuilt binary (safe while rebuilding)
#
# Sizes, to fit working sessions on 2 cores: MRPC 1,000 training examples sampled, 9 epochs at
# most, ASHA's first rung at 1 epoch. SST-2 the 20,000-sentence sample of the GLUE tables and,
# as there, one epoch at most: the resource is optimizer steps (540 of the 563 batches of the
# 18,000 training sentences; ASHA's rungs at 60, 180 and 540 steps), so early stopping still
# has three rungs (its default studies: ASHA with seed 1 and the two sweeps), and every study,
# the sweeps without early stopping too, evaluates every 60 steps (`--grace-period 60`). Both hold out 10%
# for selection, cut at 128 tokens, batch 32, the method's default schedule (AdamW, linear decay
# over max_t, 6% warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ttlora}
TASK=${TASK:-mrpc}
OUT=${OUT:-runs/search-$TASK}
case $TASK in
  mrpc) size=(--max-train 1000 --max-t 9) grace=1 every=()
        default="asha-1 random-1 lora-sweep loretta-sweep asha-2 random-2 asha-3 random-3 tpe-1" ;;
  sst2) size=(--max-train 20000 --resource steps --max-t 540) grace=60 every=(--grace-period 60)
        default="asha-1 lora-sweep loretta-sweep" ;;
  *) echo "TASK must be mrpc or sst2, not $TASK" >&2; exit 2 ;;
esac
common=(--task "$TASK" "${size[@]}" --max-len 128 --batch-size 32 --offline --quiet)

study() {
  local name=$1; shift
  echo "== $TASK $name" >&2
  "$BIN" search "${common[@]}" --out "$OUT/$name" "$@" > /dev/null
  "$BIN" search report "$OUT/$name" | tail -4 >&2
}

for s in ${STUDIES:-$default}; do
  case $s in
    asha-*) study "$s" --space examples/search/ttlora-space.toml --scheduler asha \
              --reduction-factor 3 --grace-period "$grace" --trials 27 --seed "${s#asha-}" ;;
    tpe-*) study "$s" --space examples/search/ttlora-space.toml --scheduler asha --sampler tpe \
              --reduction-factor 3 --grace-period "$grace" --trials 27 --seed "${s#tpe-}" ;;
    random-*) study "$s" --space examples/search/ttlora-space.toml --scheduler none \
              "${every[@]}" --trials 9 --seed "${s#random-}" ;;
    lora-sweep) study "$s" --space examples/search/lora-sweep.toml --sampler grid \
              --scheduler none "${every[@]}" --trials 10 --seed 1 ;;
    loretta-sweep) study "$s" --space examples/search/loretta-sweep.toml --sampler grid \
              --scheduler none "${every[@]}" --trials 4 --seed 1 ;;
    *) echo "unknown study $s" >&2; exit 2 ;;
  esac
done
