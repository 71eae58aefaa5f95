"""The CPU a benchmark row ran on, as `ttlora bench` records it (src/bench/machine.rs): the
model name (with family and model numbers on x86), the threads this process may use, and the
vector extensions that change which kernels run. Imported by the Python reference scripts."""

import os

FEATURES_THAT_MATTER = [
    "avx", "avx2", "fma", "f16c", "avx512f", "avx512bw", "avx512vl", "avx512_vnni",
    "avx512_bf16", "avx_vnni", "amx_tile", "amx_bf16", "amx_int8", "asimd", "asimdhp", "sve",
    "sve2", "i8mm", "bf16",
]


def cpu() -> dict:
    fields = {}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                key, sep, value = line.partition(":")
                if sep and key.strip() not in fields:
                    fields[key.strip()] = value.strip()
    except OSError:
        pass
    model = fields.get("model name") or (
        f"Arm CPU part {fields['CPU part']}" if "CPU part" in fields else "unknown")
    if "cpu family" in fields and "model" in fields:
        model = f"{model} (family {fields['cpu family']}, model {fields['model']})"
    have = set((fields.get("flags") or fields.get("Features") or "").split())
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"features": [f for f in FEATURES_THAT_MATTER if f in have], "model": model,
            "threads": threads}


def kind(c: dict) -> str:
    features = " ".join(c["features"]) or "no listed vector extensions"
    return f"{c['model']}, {c['threads']} threads, {features}"
