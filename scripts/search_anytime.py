#!/usr/bin/env python3
"""Compute against the best held-out score found, from `ttlora search` journals (issue 20's
"ASHA reaches random search's best with at most a third of its compute").

For each study folder, in journal order, every held-out evaluation of every reported job
(its `curve`: one point an epoch) is charged the trial-epochs spent up to it: a job resumed
from rung r charges only the epochs after r, and the trials before it what they used. A job
killed before it reported is counted through its retry, which reports the same rung (a
promoted trial whose checkpoint was lost retrains from its start: those epochs are not
charged, so the count is a lower bound there). Printed: the trial-epochs used, the best
held-out score, and the trial-epochs at which the best so far first reached TARGET (default:
the best score of the last folder given, e.g. the random search without early stopping).

    python3 scripts/search_anytime.py runs/search-mrpc/asha-1 runs/search-mrpc/random-1
    python3 scripts/search_anytime.py --target 0.8166 runs/search-mrpc/asha-1
"""
import argparse
import json
import sys
from pathlib import Path


def timeline(study: Path):
    """[(trial-epochs used so far, best score so far)] after each held-out evaluation."""
    reached = {}  # trial -> resource its last finished job reached
    used, best, points = 0, float("-inf"), []
    with open(study / "journal.jsonl") as f:
        for n, line in enumerate(f, 1):
            try:
                e = json.loads(line)
            except json.JSONDecodeError:
                print(f"{study}: line {n} is not JSON, skipped", file=sys.stderr)
                continue
            if e.get("event") != "reported":
                continue
            t, r = e["trial"], e["resource"]
            start = reached.get(t, 0)
            per_epoch = e["steps"] / r if r else 0
            for step, score in e.get("curve") or [[e["steps"], e["score"]]]:
                epoch = round(step / per_epoch) if per_epoch else r
                if epoch <= start:
                    continue  # an evaluation an earlier job of this trial already made
                best = max(best, score)
                points.append((used + epoch - start, best))
            used += r - start
            reached[t] = r
            best = max(best, e["score"])  # the job's selected score, its curve's best
            points.append((used, best))
    return points
def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("studies", nargs="+", type=Path)
    ap.add_argument("--target", type=float, help="score to reach (default: the last study's best)")
    args = ap.parse_args()
    lines = {s: timeline(s) for s in args.studies}
    target = args.target
    if target is None:
        last = lines[args.studies[-1]]
        if not last:
            sys.exit(f"{args.studies[-1]}: no reported job to take the target from")
        target = last[-1][1]
    print(f"target held-out score: {target:.4f}")
    print("| study | trial-epochs used | best held-out | trial-epochs to reach the target |")
    print("|---|---:|---:|---:|")
    for s, pts in lines.items():
        used, best = pts[-1] if pts else (0, float("nan"))
        hit = next((u for u, b in pts if b >= target - 1e-12), None)
        print(f"| {s.name} | {used} | {best:.4f} | {hit if hit is not None else 'not reached'} |")


if __name__ == "__main__":
    main()
