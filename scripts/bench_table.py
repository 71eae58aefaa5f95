"""Formats the JSON lines of scripts/bench_compare.sh as the BENCHMARKS.md tables: one table per
CPU kind the rows record (a ratio is only read between rows of one CPU), every row with its
ratio against the matching PyTorch + PEFT row, achieved GFLOP/s against the measured matmul
rate (the roofline), and the sequence-length / batch-size sweep."""

import json
import sys

from bench_machine import kind


def label(r: dict) -> str:
    path = r.get("method_config", {}).get("path")
    name = {"none": "base", "lora": "LoRA r=8", "ttlora": "TT-LoRA", "full": "full FT"}[r["method"]]
    return f"{name} ({path})" if path else name


def main() -> None:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    # Grouped by model and extensions, not threads: Python counts CPUs by affinity and Rust
    # by the cgroup quota too, which can differ in a container on the same CPU.
    by_cpu = {}
    for r in rows:
        c = r.get("cpu")
        key = (c["model"], tuple(c["features"])) if c else None
        by_cpu.setdefault(key, []).append(r)
    for key, group in by_cpu.items():
        c = next((r["cpu"] for r in group if r.get("impl") == "ttlora" and "cpu" in r), None)
        c = c or (group[0].get("cpu"))
        print(f"### {kind(c) if c else 'CPU not recorded'}\n")
        table(group)
        print()


def table(rows: list) -> None:
    peaks = [r for r in rows if r["kind"] == "matmul"]
    rows = [r for r in rows if r["kind"] != "matmul"]
    peak = max((r["gflops"] for r in peaks), default=None)
    for r in peaks:
        print(f"- f32 matmul {r['m']}×{r['n']}×{r['k']}: {r['gflops']:.0f} GFLOP/s ({r['ms']:.1f} ms)")
    if peaks:
        print()
    ref = {}
    for r in rows:
        if r["impl"] == "pytorch":
            ref[(r["kind"], r["method"], r["batch_size"], r["seq_len"])] = r
    # What each ttlora row is compared with: the same kind, shape and method on PyTorch; TT-LoRA
    # against PyTorch's LoRA (PEFT has no TT-LoRA).
    print("| work | batch × seq | impl | variant | ms / step | tokens/s | peak RSS MiB | trainable | GFLOP/s (% of matmul rate) | vs PyTorch (time) | vs PyTorch (RSS) |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        method = "lora" if r["method"] == "ttlora" else r["method"]
        base = ref.get((r["kind"], method, r["batch_size"], r["seq_len"]))
        vs_t = vs_m = rate = ""
        if r["impl"] == "ttlora" and base:
            vs_t = f"{r['step_ms'] / base['step_ms']:.2f}x"
            vs_m = f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x"
        # The same work on both sides, counted by ttlora (PyTorch rows borrow the count of
        # the ttlora row of the same kind, shape and method family).
        work = r.get("gflop") or next(
            (o["gflop"] for o in rows if o["impl"] == "ttlora" and o.get("gflop")
             and (o["method"] == "full") == (r["method"] == "full")
             and (o["kind"], o["batch_size"], o["seq_len"]) == (r["kind"], r["batch_size"], r["seq_len"])),
            None)
        if work:
            achieved = work / (r["step_ms"] / 1e3)
            rate = f"{achieved:.0f}" + (f" ({100 * achieved / peak:.0f}%)" if peak else "")
        print(
            f"| {r['kind']} | {r['batch_size']} × {r['seq_len']} | {r['impl']} | {label(r)} | "
            f"{r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | "
            f"{r['trainable']} | {rate} | {vs_t} | {vs_m} |"
        )


if __name__ == "__main__":
    main()
