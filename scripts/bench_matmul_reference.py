#!/usr/bin/env python3
"""PyTorch's f32 matmul rate on this machine, the counterpart of `ttlora bench matmul` (its two
default shapes, or the `MxNxK` shapes given, as `--shapes` takes them: comma- or
space-separated): median of 10 products
after 3 warm-ups, one JSON line per shape with the CPU.

    .venv-ref/bin/python scripts/bench_matmul_reference.py
    .venv-ref/bin/python scripts/bench_matmul_reference.py 8192x384x384 8192x1536x384
"""
import json
import sys
import time

import torch

from bench_machine import cpu  # scripts/, this file's folder, is on sys.path


def main():
    torch.manual_seed(0)
    given = [s for arg in sys.argv[1:] for s in arg.split(",") if s]
    shapes = [tuple(int(d) for d in s.split("x")) for s in given]
    for m, n, k in shapes or [(2048, 2048, 2048), (4096, 1536, 384)]:
        a, b = torch.randn(m, k), torch.randn(k, n)
        for _ in range(3):
            a @ b
        times = []
        for _ in range(10):
            start = time.perf_counter()
            a @ b
            times.append(time.perf_counter() - start)
        t = sorted(times)[len(times) // 2]
        print(json.dumps({"impl": "pytorch", "kind": "matmul", "m": m, "n": n, "k": k,
                          "ms": t * 1e3, "gflops": 2 * m * n * k / t / 1e9,
                          "threads": torch.get_num_threads(), "cpu": cpu()}))


if __name__ == "__main__":
    main()
