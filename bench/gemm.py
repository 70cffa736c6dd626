"""Measured GEMM peak of this machine: a square matmul on the benchmark's thread count (2048 on the CPU,
8192 on a CUDA GPU), fp32 and bf16. Reports the best of the timed repeats (the ceiling a step's GEMMs
could reach; MFU uses it) and their median (what a shared machine typically gives)."""

from __future__ import annotations

import argparse
import json
import statistics
import time

import torch


def gemm_flops(dtype: torch.dtype, n: int = 2048, repeats: int = 10, device: str = "cpu") -> tuple[float, float]:
    """(best, median) FLOP/s of an n x n matmul."""
    a, b = torch.randn(n, n, dtype=dtype, device=device), torch.randn(n, n, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device == "cuda" else lambda: None
    for _ in range(3):
        a @ b
    times = []
    for _ in range(repeats):
        sync()
        t0 = time.perf_counter()
        a @ b
        sync()
        times.append(time.perf_counter() - t0)
    return 2 * n**3 / min(times), 2 * n**3 / statistics.median(times)


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    device = p.parse_args().device
    if device == "cpu":
        torch.set_num_threads(2)
    rec = {"workload": "gemm", "unit": "GFLOP/s", "device": device, "threads": torch.get_num_threads()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        best, median = gemm_flops(dtype, 2048 if device == "cpu" else 8192, device=device)
        rec[name], rec[name + "_median"] = best / 1e9, median / 1e9
    print("BENCH_RECORD " + json.dumps(rec))
