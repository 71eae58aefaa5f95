#!/usr/bin/env bash
# The small SST-2 probe of RESULTS.md: TT-LoRA's α, learning rate, init and rank against LoRA
# r=8 on a seeded 2,000-sentence sample, one epoch, seed 42, official dev split (872).
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release --quiet
OUT=${OUT:-runs/sst2-probe}
run() {
  local name=$1; shift
  [[ -f $OUT/$name/eval_results.json ]] && return
  target/release/ttlora train --task sst2 --max-train 2000 --epochs 1 --seed 42 \
    --out "$OUT/$name" --quiet "$@" | grep '^dev' | sed "s/^/$name: /"
}
run lora-lr5e-3 --method lora --lr 5e-3
run lora-lr1e-3 --method lora --lr 1e-3
run tt-lr5e-3 --lr 5e-3 --alpha 8
run tt-lr2e-2 --lr 2e-2 --alpha 8
run tt-alpha32 --lr 5e-3 --alpha 32
run tt-alpha2-lr2e-2 --lr 2e-2 --alpha 2
run tt-init-paper --lr 5e-3 --init paper --alpha 8
run tt-rank8 --lr 5e-3 --rank 8 --alpha 8
run tt-lr1e-2 --lr 1e-2 --alpha 8
run tt-all-linear --lr 5e-3 --targets all-linear --alpha 8
run tt-alpha64 --lr 5e-3 --alpha 64
run tt-alpha128 --lr 5e-3 --alpha 128
# lora-scale init: folded A at lora_A's scale, so α plays LoRA's lora_alpha/r (= 1 for r=8, α=8).
run tt-lorascale-alpha1 --lr 5e-3 --init lora-scale --alpha 1
run tt-lorascale-alpha2 --lr 5e-3 --init lora-scale --alpha 2
run tt-lorascale-alpha4 --lr 5e-3 --init lora-scale --alpha 4
# Fewer cores: with 2 cores ([384|384], rank 8) TT-LoRA *is* LoRA r=8 (A = core 1, B = core 2).
run tt-2cores-r8-lorascale --lr 5e-3 --init lora-scale --alpha 1 --shape "384|384" --rank 8
run tt-3cores-r8-lorascale --lr 5e-3 --init lora-scale --alpha 1 --shape "384|24,16" --rank 8
run tt-4cores-r8-lorascale --lr 5e-3 --init lora-scale --alpha 1 --shape "16,24|24,16" --rank 8
run tt-2cores-r8-zero --lr 5e-3 --alpha 8 --shape "384|384" --rank 8
