#!/usr/bin/env bash
# Confirms issue 20's trade-off studies on the official dev split (TASK=mrpc or sst2, after
# scripts/search_tradeoff.sh): LoRA's rank sweep with its front and LoRA r = 8 (the rate with
# the better held-out score) as the reference, then TT-LoRA's ASHA front (asha-1) drawn beside
# the sweeps. Each config is trained again from scratch with SEEDS further seeds (the study's
# seed + 1, + 2, …; the study's training sample and held-out slice) and scored on dev; the
# runs are kept under DIR/confirm/ and reused, so a killed run resumes where it stopped.
#
#   scripts/search_confirm.sh                     # MRPC, 3 seeds
#   TASK=sst2 SEEDS=3 scripts/search_confirm.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-target/release/ttlora}
TASK=${TASK:-mrpc}
OUT=${OUT:-runs/search-$TASK}
SEEDS=${SEEDS:-3}

r8=$("$BIN" search status "$OUT/lora-sweep" --json | python3 -c '
import json, sys
trials = json.load(sys.stdin)["trials"]
r8 = [t for t in trials if t["status"] == "complete" and " r=8" in " " + t["config"]]
if not r8:
    sys.exit("no complete LoRA r = 8 trial in the sweep")
print(max(r8, key=lambda t: (t["score"], -t["id"]))["id"])')
echo "== $TASK lora-sweep (LoRA r = 8 is trial $r8)" >&2
"$BIN" search report "$OUT/lora-sweep" --confirm-seeds "$SEEDS" --confirm-trial "$r8" \
    > /dev/null
echo "== $TASK asha-1 beside the sweeps" >&2
"$BIN" search report "$OUT/asha-1" --confirm-seeds "$SEEDS" \
    --compare "$OUT/lora-sweep" --compare "$OUT/loretta-sweep"
