"""Measured GEMM peak of this machine: 2048x2048 matmul on the benchmark's thread count, fp32 and bf16,
best of several timed repeats (the ceiling a training step's GEMMs could reach)."""

from __future__ import annotations

import json
import time

import torch


def gemm_peak(dtype: torch.dtype, n: int = 2048, repeats: int = 10) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    for _ in range(3):
        a @ b
    best = float("inf")
    for _ in range(repeats):
        t0 = time.perf_counter()
        a @ b
        best = min(best, time.perf_counter() - t0)
    return 2 * n**3 / best


if __name__ == "__main__":
    torch.set_num_threads(2)
    peaks = {"fp32": gemm_peak(torch.float32), "bf16": gemm_peak(torch.bfloat16)}
    print("BENCH_RECORD " + json.dumps({"workload": "gemm", **{k: v / 1e9 for k, v in peaks.items()}, "unit": "GFLOP/s",
                                        "threads": torch.get_num_threads()}))
