"""Formats RESULTS.md's SuperGLUE-on-decoders table from the run records: the zero-shot rows
(runs/superglue-lm/zero-shot-<task>.json, scripts/superglue_lm.sh) and the fine-tuned ones
(runs/superglue-train/*/eval_results.json, scripts/superglue_train.sh), one row per task,
method and objective, the dev metric as mean ± std over the seeds that have finished.
Records written before ttlora kept `max_len` read as 256, the --max-len every
scripts/superglue_train.sh run has passed.

    python3 scripts/superglue_table.py [runs]                 # the table
    python3 scripts/superglue_table.py --investigate [runs]   # runs/superglue-investigate's rows

The second form prints one row per investigation run (scripts/superglue_investigate.sh), with
its learning rate, epochs and loss beside the same columns.
"""

import json
import statistics
import sys
from collections import defaultdict
from pathlib import Path

TASKS = ["cb", "copa", "rte", "wic", "boolq", "wsc", "multirc"]


def objective_of(record: dict, folder: str) -> str:
    objective = record.get("objective")
    if not objective:
        # Records written before the field existed: the folder's suffix, else LM scoring.
        objective = next(
            (s for s in ("classify-frozen", "classify") if folder.endswith("-" + s)), "lm-score"
        )
    return objective


def pct(xs):
    xs = [100 * x for x in xs]
    if len(xs) == 1:
        return f"{xs[0]:.1f}"
    return f"{statistics.mean(xs):.1f} ± {statistics.stdev(xs):.1f}"


def investigate(root: Path) -> None:
    print("| row | task | method | objective | lr | train × epochs | max len | dev metric | held-out before → after | trainable | train time | peak RSS |")
    print("|---|---|---|---|---:|---|---:|---|---|---:|---:|---:|")
    for f in sorted((root / "superglue-investigate").glob("*/eval_results.json")):
        r = json.loads(f.read_text())
        names = [k[4:] for k in sorted(r["dev_metrics"]) if k.startswith("dev/") and "predicted_" not in k]
        shown = ", ".join(f"{n} {pct([r['dev_metrics']['dev/' + n]])}" for n in names)
        primary = r["primary_metric"]
        before = pct([r["dev_metrics"].get(f"held_out/{primary}_before", float("nan"))])
        after = pct([r["dev_metrics"][f"held_out/{primary}"]])
        fit, held, dev = r["examples"]
        params = r["params"]["adapter"] + r["params"]["head"]
        rss = r.get("peak_rss_mib") or 0
        print(
            f"| {f.parent.name} | {r['task']} | {r['method']} | {objective_of(r, f.parent.name)} "
            f"| {(r.get('train_config') or {}).get('lr', float('nan')):g} "
            f"| {fit} × {(r.get('train_config') or {}).get('epochs', '?')} | {r.get('max_len', 256)} "
            f"| {shown} ({dev} ex.) | {before} → {after} ({held} ex.) | {params:,} "
            f"| {r['wall_s'] / 60:.1f} min | {rss / 1024:.1f} GiB |"
        )


def main() -> None:
    args = sys.argv[1:]
    if args and args[0] == "--investigate":
        investigate(Path(args[1] if len(args) > 1 else "runs"))
        return
    root = Path(args[0] if args else "runs")
    zero = {}
    for f in sorted((root / "superglue-lm").glob("zero-shot-*.json")):
        r = json.loads(f.read_text())
        zero[r["task"]] = r
    groups = defaultdict(list)
    for f in sorted((root / "superglue-train").glob("*/eval_results.json")):
        r = json.loads(f.read_text())
        groups[(r["task"], r["method"], objective_of(r, f.parent.name))].append(r)
    print("| task | method | objective | seeds | train × epochs | max len | dev metric | held-out before → after | trainable | train time / run | peak RSS |")
    print("|---|---|---|---|---|---:|---|---|---:|---:|---:|")
    for task in TASKS:
        if task in zero:
            m = zero[task]["metrics"]
            shown = ", ".join(f"{k} {100 * v:.1f}" for k, v in sorted(m.items()))
            print(f"| {task} | base (zero-shot) | lm-score | — | — | whole prompts | {shown} ({zero[task]['examples']} ex.) | — | 0 | — | — |")
        rows = sorted((k, v) for k, v in groups.items() if k[0] == task)
        for (_, method, objective), rs in rows:
            first = rs[0]
            names = [k[4:] for k in sorted(first["dev_metrics"]) if k.startswith("dev/") and "predicted_" not in k]
            shown = ", ".join(f"{n} {pct([r['dev_metrics']['dev/' + n] for r in rs])}" for n in names)
            primary = first["primary_metric"]
            before = pct([r["dev_metrics"].get(f"held_out/{primary}_before", float("nan")) for r in rs])
            after = pct([r["dev_metrics"][f"held_out/{primary}"] for r in rs])
            epochs = first["train_config"]["epochs"]
            fit, held, dev = first["examples"]
            params = first["params"]["adapter"] + first["params"]["head"]
            wall = statistics.mean(r["wall_s"] for r in rs)
            rss = max(r.get("peak_rss_mib") or 0 for r in rs)
            seeds = ",".join(str(r["seed"]) for r in rs)
            max_len = ", ".join(sorted({str(r.get("max_len", 256)) for r in rs}))
            print(
                f"| {task} | {method} | {objective} | {seeds} | {fit} × {epochs} | {max_len} | {shown} ({dev} ex.) "
                f"| {before} → {after} ({held} ex.) | {params:,} | {wall / 60:.1f} min | {rss / 1024:.1f} GiB |"
            )


if __name__ == "__main__":
    main()
