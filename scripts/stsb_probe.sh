#!/usr/bin/env bash
# STS-B probe of RESULTS.md: why TT-LoRA regression lags. Seeded 2,000-pair sample, 2 epochs,
# seed 42, official dev split (1,500 pairs). Runs without --alpha in the name use α = 8 (the
# default until 2026-11-29). DATA: folder holding glue/ (default ../shared/data).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
OUT=${OUT:-runs/stsb-probe}
DATA=${DATA:-../shared/data}
run() {
  local name=$1; shift
  [[ -f $OUT/$name/eval_results.json ]] && return
  target/release/ttlora train --task stsb --data "$DATA" --max-train 2000 --epochs 2 --seed 42 \
    --out "$OUT/$name" --quiet "$@" | grep '^dev' | sed "s/^/$name: /"
}
run tt-mean-lr5e-3 --lr 5e-3 --alpha 8
run lora-mean-lr5e-3 --method lora --lr 5e-3
run tt-cls-lr5e-3 --lr 5e-3 --pooling cls --alpha 8
run tt-mean-lr1e-3 --lr 1e-3 --alpha 8
run tt-mean-alpha64 --lr 5e-3 --alpha 64
run tt-mean-lr2e-2 --lr 2e-2 --alpha 8
run tt-mean-init-paper --lr 5e-3 --init paper --alpha 8
# lora-scale init: folded A at lora_A's scale, so α plays LoRA's lora_alpha/r (= 1 for r=8, α=8).
run tt-lorascale-alpha1 --lr 5e-3 --init lora-scale --alpha 1
run tt-lorascale-alpha2 --lr 5e-3 --init lora-scale --alpha 2
run tt-lorascale-alpha4 --lr 5e-3 --init lora-scale --alpha 4
run tt-mean-alpha32 --lr 5e-3 --alpha 32
run tt-mean-alpha128 --lr 5e-3 --alpha 128
run tt-lorascale-alpha0.5 --lr 5e-3 --init lora-scale --alpha 0.5
