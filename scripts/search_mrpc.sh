#!/usr/bin/env bash
# Issue 20's MRPC studies on all-MiniLM-L6-v2: for each repeat (seeds 1, 2, 3), TT-LoRA over
# the paper's grid (examples/search/ttlora-space.toml) by random search without early
# stopping (9 trials × 9 epochs) and with ASHA (27 trials, η 3, rungs at 1, 3, 9 epochs);
# then LoRA's rank sweep and LoRETTA-rep's tensor ranks as grids (the trade-off plot's
# references: `ttlora search report runs/search-mrpc/asha-1 --compare runs/search-mrpc/lora-sweep
# --compare runs/search-mrpc/loretta-sweep`). Every study lives in runs/search-mrpc/<name>/ and
# resumes when the script runs again (a finished study is not rerun). Reports:
# `ttlora search report DIR`.
#
#   scripts/search_mrpc.sh                 # all studies in order
#   STUDIES="asha-1 random-1" scripts/search_mrpc.sh
#   BIN=/tmp/ttlora scripts/search_mrpc.sh # a prebuilt binary (safe while rebuilding)
#
# Sizes, to fit working sessions on 2 cores: 1,000 training examples sampled (10% held out
# for selection), max length 128, batch 32, the method's default schedule (AdamW, linear
# decay, 6% warm-up).
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ttlora}
OUT=${OUT:-runs/search-mrpc}
common=(--task mrpc --max-train 1000 --max-len 128 --batch-size 32 --max-t 9 --offline --quiet)

study() {
  local name=$1; shift
  echo "== $name" >&2
  "$BIN" search "${common[@]}" --out "$OUT/$name" "$@" > /dev/null
  "$BIN" search report "$OUT/$name" | tail -4 >&2
}

for s in ${STUDIES:-asha-1 random-1 lora-sweep loretta-sweep asha-2 random-2 asha-3 random-3}; do
  case $s in
    asha-*) study "$s" --space examples/search/ttlora-space.toml --scheduler asha \
              --reduction-factor 3 --grace-period 1 --trials 27 --seed "${s#asha-}" ;;
    random-*) study "$s" --space examples/search/ttlora-space.toml --scheduler none \
              --trials 9 --seed "${s#random-}" ;;
    lora-sweep) study "$s" --space examples/search/lora-sweep.toml --sampler grid \
              --scheduler none --trials 10 --seed 1 ;;
    loretta-sweep) study "$s" --space examples/search/loretta-sweep.toml --sampler grid \
              --scheduler none --trials 4 --seed 1 ;;
    *) echo "unknown study $s" >&2; exit 2 ;;
  esac
done
