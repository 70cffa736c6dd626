"""Measured GEMM peak of this machine: a square matmul on the benchmark's thread count (2048 on the CPU,
8192 on a CUDA GPU), fp32 and bf16. Reports the best of the timed repeats (the ceiling a step's GEMMs
could reach; MFU uses it) and their median (what a shared machine typically gives).

bf16 on a CPU without AVX512-BF16 or AMX has no fast kernel (a 2048x2048 bf16 matmul took over 13
minutes on an AVX2-only EPYC, and tunelab trains in fp32 there): its peak is skipped (recorded as null,
with the reason and the speed of one 512x512 probe)."""

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


def bf16_is_slow(probe: int = 512) -> str | None:
    """Why the bf16 peak is not measured on this CPU, or None when it has native bf16 (AVX512-BF16/AMX).
    Without it tunelab trains in fp32, so the bf16 peak is no MFU denominator; one probe-sized matmul says
    how slow the emulation is. A time projection from a small probe was not enough: on an AVX-512 Xeon
    capped to AVX2 a 256x256 probe projected 9.7 s for 2048x2048 and the measurement ran past 5 minutes."""
    from tunelab.runtime import cpu_has_bf16

    if cpu_has_bf16():
        return None
    a = torch.randn(probe, probe, dtype=torch.bfloat16)
    a @ a
    t0 = time.perf_counter()
    a @ a
    gflops = 2 * probe**3 / (time.perf_counter() - t0) / 1e9
    return (f"no native bf16 on this CPU ({torch.backends.cpu.get_cpu_capability()}; a {probe}x{probe} bf16 matmul "
            f"ran at {gflops:.0f} GFLOP/s): tunelab trains in fp32 here")


if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    device = p.parse_args().device
    if device == "cpu":
        torch.set_num_threads(2)
    rec = {"workload": "gemm", "unit": "GFLOP/s", "device": device, "threads": torch.get_num_threads(),
           "cpu_capability": torch.backends.cpu.get_cpu_capability()}
    for name, dtype in (("fp32", torch.float32), ("bf16", torch.bfloat16)):
        skip = bf16_is_slow() if name == "bf16" and device == "cpu" else None
        if skip:
            rec[name], rec[name + "_median"], rec[name + "_skipped"] = None, None, skip
            continue
        best, median = gemm_flops(dtype, 2048 if device == "cpu" else 8192, device=device)
        rec[name], rec[name + "_median"] = best / 1e9, median / 1e9
    print("BENCH_RECORD " + json.dumps(rec))
