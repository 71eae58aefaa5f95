#!/usr/bin/env bash
# ttlora against PyTorch + transformers + PEFT on the same machine, model and batch shapes
# (issue 5). Each configuration runs in its own process, so peak memory is its own. Needs the
# Python reference (scripts/python_ref.sh); prints a markdown table with ratios, and keeps the
# raw JSON lines in $OUT (default bench-results.jsonl).
#
#   scripts/python_ref.sh && scripts/bench_compare.sh
#   MIN_SECONDS=10 SEQ=128 BATCH=32 scripts/bench_compare.sh
#   SWEEP=0 scripts/bench_compare.sh     # skip the sequence-length / batch-size sweep
#
# Also measures the machine's f32 matmul rate (`ttlora bench matmul`), the roofline the table's
# GFLOP/s column is read against.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
PY=${PY:-.venv-ref/bin/python}
[[ -x $PY ]] || { echo "no Python reference at $PY; run scripts/python_ref.sh first" >&2; exit 1; }
MODEL=${MODEL:-all-MiniLM-L6-v2}
MODEL_DIR=$("$BIN" fetch "$MODEL" 2>/dev/null | tail -1)
BATCH=${BATCH:-32}
SEQ=${SEQ:-128}
MIN_SECONDS=${MIN_SECONDS:-5}
OUT=${OUT:-bench-results.jsonl}
SWEEP=${SWEEP:-1}
: > "$OUT"
common=(--iters 5 --min-seconds "$MIN_SECONDS")
ours() { "$BIN" bench model --model "$MODEL_DIR" --offline "${common[@]}" "$@" | sed 's/^{/{"impl":"ttlora",/' >> "$OUT"; }
theirs() { "$PY" scripts/bench_reference.py --model "$MODEL_DIR" "${common[@]}" "$@" 2>/dev/null | sed 's/^{/{"impl": "pytorch",/' >> "$OUT"; }

echo "matmul rate..." >&2
"$BIN" bench matmul | sed 's/^{/{"impl":"ttlora","kind":"matmul",/' >> "$OUT"
echo "training steps (batch $BATCH x $SEQ)..." >&2
theirs --kind train --method lora --batch-size "$BATCH" --seq-len "$SEQ"
theirs --kind train --method full --batch-size "$BATCH" --seq-len "$SEQ"
ours --kind train --method full --batch-size "$BATCH" --seq-len "$SEQ"
ours --kind train --method lora --batch-size "$BATCH" --seq-len "$SEQ"
for path in factored contract reconstruct; do
  ours --kind train --method ttlora --config "{\"path\":\"$path\"}" --batch-size "$BATCH" --seq-len "$SEQ"
done
echo "inference (batch 1 and 64 x $SEQ)..." >&2
for b in 1 64; do
  theirs --kind infer --method none --batch-size "$b" --seq-len "$SEQ"
  theirs --kind infer --method lora --batch-size "$b" --seq-len "$SEQ"
  ours --kind infer --method none --batch-size "$b" --seq-len "$SEQ"
  ours --kind infer --method lora --batch-size "$b" --seq-len "$SEQ"
  for path in factored contract reconstruct; do
    ours --kind infer --method ttlora --config "{\"path\":\"$path\"}" --batch-size "$b" --seq-len "$SEQ"
  done
done
if [[ $SWEEP == 1 ]]; then
  echo "scaling sweep (LoRA training steps)..." >&2
  sweep=(--iters 3 --min-seconds 0)
  for point in "32 64" "32 256" "32 512" "8 128" "16 128" "64 128"; do
    read -r b n <<< "$point"
    "$PY" scripts/bench_reference.py --model "$MODEL_DIR" "${sweep[@]}" --kind train --method lora \
      --batch-size "$b" --seq-len "$n" 2>/dev/null | sed 's/^{/{"impl": "pytorch",/' >> "$OUT"
    "$BIN" bench model --model "$MODEL_DIR" --offline "${sweep[@]}" --kind train --method lora \
      --batch-size "$b" --seq-len "$n" | sed 's/^{/{"impl":"ttlora",/' >> "$OUT"
  done
fi
"$PY" scripts/bench_table.py "$OUT"
