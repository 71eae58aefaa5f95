#!/usr/bin/env python3
"""Compute against the best held-out score found, from `ttlora search` journals (issue 20's
"ASHA reaches random search's best with at most a third of its compute").

Every held-out evaluation of every reported job (its `curve`: one point an epoch, or every
grace period of steps) is charged the compute all workers had spent by the moment it was
made: a finished job its resource (a job resumed from rung r only what it trained after r),
a job under way the share of it done by then, read off its claim and report times as if it
progressed evenly. With one worker that is exactly the trial-epochs trained up to the
evaluation; with several it also counts the other workers' jobs in flight. A job killed
before it reported is not charged (its retry reports the same rung), so where a study was
interrupted the count is a lower bound. Printed: the resource used, the best held-out score,
and the resource spent when the best so far first reached TARGET (default: the best score of
the last folder given, e.g. the random search without early stopping).

    python3 scripts/search_anytime.py runs/search-mrpc/asha-1 runs/search-mrpc/random-1
    python3 scripts/search_anytime.py --target 0.8166 runs/search-mrpc/asha-1
"""
import argparse
import json
import sys
from pathlib import Path


def read_events(study: Path):
    events = []
    with open(study / "journal.jsonl") as f:
        for n, line in enumerate(f, 1):
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                print(f"{study}: line {n} is not JSON, skipped", file=sys.stderr)
    return events


def jobs(events):
    """Each reported job: (trial, resource before it, resource after, claim time, report
    time, [(resource at each evaluation, score)], selected score)."""
    claims, reached, out = {}, {}, []
    for e in events:
        kind = e.get("event")
        if kind == "claimed":
            claims[(e["trial"], e["resource"])] = e["time"]
        elif kind == "reported":
            t, r = e["trial"], e["resource"]
            start = reached.get(t, 0)
            per_unit = e["steps"] / r if r else 0
            evals = []
            for step, score in e.get("curve") or [[e["steps"], e["score"]]]:
                at = round(step / per_unit) if per_unit else r
                if at > start:  # else an evaluation an earlier job of this trial made
                    evals.append((at, score))
            claimed = claims.get((t, r), e["time"])
            out.append((t, start, r, claimed, e["time"], evals, e["score"]))
            reached[t] = r
    return out


def timeline(study: Path):
    """[(resource spent by all workers, best score so far)] after each evaluation, in the
    order the evaluations were made."""
    done = jobs(read_events(study))

    def spent(moment):
        total = 0.0
        for _, start, r, t0, t1, _, _ in done:
            if moment >= t1:
                total += r - start
            elif moment > t0:
                total += (r - start) * (moment - t0) / (t1 - t0)
        return total

    made = []  # (time, resource spent by then, score)
    for _, start, r, t0, t1, evals, score in done:
        for at, s in evals:
            moment = t0 + (t1 - t0) * (at - start) / (r - start) if r > start else t1
            made.append((moment, s))
        made.append((t1, score))  # the job's selected score, its curve's best
    points, best = [], float("-inf")
    for moment, s in sorted(made, key=lambda m: m[0]):
        best = max(best, s)
        points.append((round(spent(moment), 1), best))
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
        reached = f"{hit:g}" if hit is not None else "not reached"
        print(f"| {s.name} | {used:g} | {best:.4f} | {reached} |")


if __name__ == "__main__":
    main()
