#!/usr/bin/env bash
# The decoder training step, ttlora against PyTorch + transformers + PEFT on the same machine
# (issues 18 and 21): SmolLM2-135M-Instruct (the packaged Q4_1 GGUF; transformers dequantizes
# it to f32), LoRA r=8 and TT-LoRA on q_proj/v_proj, a seeded random batch of BATCH × SEQ ids,
# the trainer's whole step. Each row runs in its own process (its own peak RSS) and records the
# CPU; the JSON lines go to $OUT (default bench-decoder.jsonl) and a table to stdout.
#
#   scripts/python_ref.sh && scripts/bench_decoder_compare.sh
#   BATCH=8 SEQ=256 ITERS=3 scripts/bench_decoder_compare.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
PY=${PY:-.venv-ref/bin/python}
[[ -x $PY ]] || { echo "no Python reference at $PY; run scripts/python_ref.sh first" >&2; exit 1; }
GGUF=$(ls "$("$BIN" fetch smollm2 | tail -1)"/*.gguf | head -1)
BATCH=${BATCH:-8}
SEQ=${SEQ:-256}
ITERS=${ITERS:-3}
OUT=${OUT:-bench-decoder.jsonl}
: > "$OUT"
: > "$OUT.log"  # the Python side's warnings and errors
ours() {
  "$BIN" bench model --model smollm2 --offline --base-dtype quantized --batch-size "$BATCH" \
    --seq-len "$SEQ" --iters "$ITERS" --min-seconds 1 "$@" | sed 's/^{/{"impl":"ttlora",/' >> "$OUT"
}
echo "PyTorch + PEFT, LoRA r=8..." >&2
"$PY" scripts/bench_decoder_reference.py "$GGUF" "$BATCH" "$SEQ" "$ITERS" 2>> "$OUT.log" \
  | sed 's/^{/{"impl":"pytorch","method":"lora",/' >> "$OUT"
echo "ttlora, LoRA r=8 and TT-LoRA..." >&2
ours --method lora --config '{"r":8}'
ours --method ttlora
"$PY" - "$OUT" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
from bench_machine import kind
rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
ref = next(r for r in rows if r["impl"] == "pytorch")
print(f"### {kind(next(r for r in rows if r['impl'] == 'ttlora')['cpu'])}\n")
print("| side | method | step | peak RSS | vs PyTorch (time, RSS) |")
print("|---|---|---:|---:|---:|")
for r in rows:
    print(f"| {r['impl']} | {r['method']} | {r['step_ms']:,.0f} ms | {r['peak_rss_mib']:,.0f} MiB | "
          f"{r['step_ms'] / ref['step_ms']:.2f}×, {r['peak_rss_mib'] / ref['peak_rss_mib']:.2f}× |")
PY
