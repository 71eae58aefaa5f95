#!/usr/bin/env bash
# Checks the MRPC trade-off study's answer on MRPC's full training split. The studies of
# scripts/search_tradeoff.sh train on a 1,000-example sample (to fit 2 cores), where every
# config scores near the majority class; this trains the configs named in TRIALS again, each
# with SEEDS, on the whole split with the GLUE table's settings (3 epochs, batch 32, max
# length 128, its held-out slice for checkpoint selection), scored on dev. A config is
# `STUDY:TRIAL`, read from runs/search-mrpc/STUDY/journal.jsonl: its method, lr and method
# fields; `STUDY:TRIAL@LR` trains it at another learning rate (the rate a sample chose may not
# suit the full split). Runs go to runs/search-mrpc/full-train/STUDY-tTRIAL[-lrLR]-sSEED and
# are reused (a killed run resumes), so the script reruns and resumes in one command. It ends
# with one line per
# config found in OUT (this run's and earlier ones'): dev F1 and accuracy, mean ± sample std.
#
#   scripts/search_full_train.sh                      # asha-1's trial 10 and LoRA r = 8
#   TRIALS="asha-1:9 lora-sweep:9" SEEDS="1 2 3" scripts/search_full_train.sh
#   TRIALS="asha-1:10@5e-3" scripts/search_full_train.sh
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib.sh
DATA=${DATA:-../shared/data}
STUDIES=${STUDIES:-runs/search-mrpc}
OUT=${OUT:-$STUDIES/full-train}
TRIALS=${TRIALS:-asha-1:10 lora-sweep:7}
SEEDS=${SEEDS:-1 2 3}
RUNS=${RUNS:-1}
export RAYON_NUM_THREADS=${RAYON_NUM_THREADS:-1}
failed=0

# The `--method M [--lr LR] --adapter-config JSON` of trial $2 of study $1, one per line.
trial_flags() {
  python3 - "$STUDIES/$1/journal.jsonl" "$2" <<'EOF'
import json, sys
path, trial = sys.argv[1], sys.argv[2]
if not trial.isdigit():
    sys.exit(f"{trial!r} is no trial number (TRIALS holds STUDY:TRIAL)")
for line in open(path):
    try:
        e = json.loads(line)
    except ValueError:
        continue
    if e.get("event") == "created" and e.get("trial") == int(trial):
        c = dict(e["config"]["params"])
        training = sorted(set(c) & {"weight_decay", "batch_size", "warmup_ratio", "targets"})
        if training:
            sys.exit(f"{path}: trial {trial} searched {', '.join(training)}; this script "
                     "passes only lr and the method's fields")
        print("--method", e["config"]["method"], sep="\n")
        if "lr" in c:
            print("--lr", c.pop("lr"), sep="\n")
        print("--adapter-config", json.dumps(c), sep="\n")
        break
else:
    sys.exit(f"{path}: no trial {trial}")
EOF
}

for seed in $SEEDS; do
  for st in $TRIALS; do
    study=${st%%:*} trial=${st##*:} lr=
    if [[ $trial == *@* ]]; then lr=${trial#*@} trial=${trial%%@*}; fi
    dir=$OUT/$study-t$trial${lr:+-lr$lr}-s$seed
    [[ -f $dir/eval_results.json ]] && continue
    # Read first, so that a bad STUDY:TRIAL stops the script (`set -e`) instead of training
    # the default method under this name.
    text=$(trial_flags "$study" "$trial")
    mapfile -t flags <<< "$text"
    if [[ -n $lr ]]; then
      kept=()
      for ((i = 0; i < ${#flags[@]}; i++)); do
        if [[ ${flags[i]} == --lr ]]; then i=$((i + 1)); else kept+=("${flags[i]}"); fi
      done
      flags=("${kept[@]}" --lr "$lr")
    fi
    while (( $(jobs -rp | wc -l) >= RUNS )); do wait -n || failed=$((failed + 1)); done
    echo "== mrpc full train: $study trial $trial (${flags[*]}) seed $seed" >&2
    "$BIN" train --model all-MiniLM-L6-v2 --task mrpc --data "$DATA" "${flags[@]}" \
      --batch-size 32 --max-len 128 --epochs 3 --seed "$seed" --out "$dir" --offline \
      --quiet --resume &
  done
done
while (( $(jobs -rp | wc -l) > 0 )); do wait -n || failed=$((failed + 1)); done
python3 - "$OUT" <<'EOF'
import json, pathlib, statistics, sys
runs = {}
for d in sorted(pathlib.Path(sys.argv[1]).glob("*-s*")):
    f = d / "eval_results.json"
    if f.is_file():
        name = d.name.rsplit("-s", 1)[0]
        m = json.loads(f.read_text())
        runs.setdefault(name, []).append(m)
for name, ms in runs.items():
    line = [name, f"{len(ms)} seeds"]
    for k in ("f1", "accuracy"):
        xs = [m["dev_metrics"][k] for m in ms if k in m["dev_metrics"]]
        if len(xs) > 1:
            line.append(f"{k} {statistics.mean(xs):.4f} ± {statistics.stdev(xs):.4f}")
        elif xs:
            line.append(f"{k} {xs[0]:.4f}")
    print("  ".join(line))
EOF
if (( failed > 0 )); then
  echo "$failed training run(s) failed; their folders are left to resume" >&2
  exit 1
fi
