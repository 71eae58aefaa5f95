"""Formats the JSON lines of scripts/bench_compare.sh as the BENCHMARKS.md table, with ratios
against the matching PyTorch + PEFT row."""

import json
import sys


def label(r: dict) -> str:
    path = r.get("method_config", {}).get("path")
    name = {"none": "base", "lora": "LoRA r=8", "ttlora": "TT-LoRA", "full": "full FT"}[r["method"]]
    return f"{name} ({path})" if path else name


def main() -> None:
    rows = [json.loads(l) for l in open(sys.argv[1]) if l.strip()]
    ref = {}
    for r in rows:
        if r["impl"] == "pytorch":
            ref[(r["kind"], r["method"], r["batch_size"])] = r
    # What each ttlora row is compared with: the same kind, batch and method on PyTorch; TT-LoRA
    # against PyTorch's LoRA (PEFT has no TT-LoRA).
    print("| work | batch × seq | impl | variant | ms / step | tokens/s | peak RSS MiB | trainable | vs PyTorch (time) | vs PyTorch (RSS) |")
    print("|---|---|---|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        method = "lora" if r["method"] == "ttlora" else r["method"]
        base = ref.get((r["kind"], method, r["batch_size"]))
        vs_t = vs_m = ""
        if r["impl"] == "ttlora" and base:
            vs_t = f"{r['step_ms'] / base['step_ms']:.2f}x"
            vs_m = f"{r['peak_rss_mib'] / base['peak_rss_mib']:.2f}x"
        print(
            f"| {r['kind']} | {r['batch_size']} × {r['seq_len']} | {r['impl']} | {label(r)} | "
            f"{r['step_ms']:.1f} | {r['tokens_per_s']:.0f} | {r['peak_rss_mib']:.0f} | "
            f"{r['trainable']} | {vs_t} | {vs_m} |"
        )


if __name__ == "__main__":
    main()
