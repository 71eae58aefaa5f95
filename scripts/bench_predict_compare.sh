#!/usr/bin/env bash
# `ttlora predict` against PyTorch + transformers + PEFT on the same sentences (issue 21's
# throughput target): all-MiniLM-L6-v2 with a LoRA r=8 adapter (trained here for a few steps;
# exported to PEFT for the Python side; both sides merge it into the weights first, as `ttlora
# predict` does by default, or with MERGE=0 both keep it separate), the first $N sentences of the
# bundled SST-2 training file, batches of 64 sorted by length on both sides. ttlora's time is
# that of predicting all N minus that of predicting one sentence (the process start and model
# load cancel out); Python's is timed inside the script after loading. One JSON line per side
# to $OUT (default bench-predict.jsonl), with the CPU; a summary line to stdout; the commands'
# messages to $OUT.log. The labels are not compared: ttlora's classifier pools the mean of the
# tokens and HF's BertForSequenceClassification the first token (export warns), so the two
# sides run the same work on the same adapter weights but predict differently.
#
#   scripts/python_ref.sh && scripts/bench_predict_compare.sh
#   N=20000 ROUNDS=3 scripts/bench_predict_compare.sh
#   MERGE=0 scripts/bench_predict_compare.sh        # unmerged on both sides
set -euo pipefail
export LC_ALL=C  # EPOCHREALTIME's decimal point
cd "$(dirname "$0")/.."
source scripts/lib.sh
PY=${PY:-.venv-ref/bin/python}
[[ -x $PY ]] || { echo "no Python reference at $PY; run scripts/python_ref.sh first" >&2; exit 1; }
N=${N:-10000}
ROUNDS=${ROUNDS:-2}
MERGE=${MERGE:-1}
ours_merge=(); theirs_merge=(--merge)
[[ $MERGE == 0 ]] && { ours_merge=(--no-merge); theirs_merge=(); }
OUT=${OUT:-bench-predict.jsonl}
: > "$OUT.log"
MODEL_DIR=$("$BIN" fetch 2>>"$OUT.log" | tail -1)
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
head -n $((N + 1)) data/glue/SST-2/train.tsv | cut -f1 > "$work/sentences.tsv"
N=$(( $(wc -l < "$work/sentences.tsv") - 1 ))  # the sentences actually there
head -n 2 "$work/sentences.tsv" > "$work/one.tsv"
"$BIN" train --task sst2 --method lora --rank 8 --max-train 64 --epochs 1 --offline -q \
  --out "$work/adapter" > /dev/null 2>>"$OUT.log"
"$BIN" export --adapter "$work/adapter" --format peft-lora --out "$work/peft" \
  > /dev/null 2>>"$OUT.log"
: > "$OUT"
# The wall seconds of one `predict` over file $1, from bash's clock (no bc on a bare Debian).
seconds() {
  local start=$EPOCHREALTIME
  "$BIN" predict --adapter "$work/adapter" --file "$1" --text-column sentence --offline \
    --batch-size 64 --output "$work/out.tsv" ${ours_merge[@]+"${ours_merge[@]}"} \
    > /dev/null 2>>"$OUT.log"
  python3 -c "import sys; print(float(sys.argv[2]) - float(sys.argv[1]))" "$start" "$EPOCHREALTIME"
}
for round in $(seq "$ROUNDS"); do
  all=$(seconds "$work/sentences.tsv")
  one=$(seconds "$work/one.tsv")
  python3 - "$all" "$one" "$N" "$MERGE" >> "$OUT" <<'PY'
import json, sys
sys.path.insert(0, "scripts")
from bench_machine import cpu
all_s, one_s, n = float(sys.argv[1]), float(sys.argv[2]), int(sys.argv[3])
t = all_s - one_s
print(json.dumps({"impl": "ttlora", "kind": "predict", "sentences": n, "seconds": t,
                  "merged": sys.argv[4] == "1",
                  "sentences_per_s": (n - 1) / t, "wall_all_s": all_s, "wall_one_s": one_s,
                  "batch_size": 64, "cpu": cpu()}))
PY
  "$PY" scripts/bench_predict_reference.py --model "$MODEL_DIR" --adapter "$work/peft" \
    --file "$work/sentences.tsv" ${theirs_merge[@]+"${theirs_merge[@]}"} 2>>"$OUT.log" >> "$OUT"
done
python3 - "$OUT" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1])]
for impl in ("ttlora", "pytorch"):
    rates = [r["sentences_per_s"] for r in rows if r["impl"] == impl]
    print(f"{impl}: {', '.join(f'{x:.0f}' for x in rates)} sentences/s")
t = [r["sentences_per_s"] for r in rows if r["impl"] == "ttlora"]
p = [r["sentences_per_s"] for r in rows if r["impl"] == "pytorch"]
print(f"ttlora / pytorch throughput: {min(t) / max(p):.2f}-{max(t) / min(p):.2f}x")
PY
