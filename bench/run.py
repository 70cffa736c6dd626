"""Benchmark driver: runs every configuration of a workload in its own subprocess (so peak RSS is that
run's), baseline and tunelab interleaved, repeated; measures the GEMM peak in the same run; writes
bench/results/<cpu kind>/<workload>.json and that folder's README.md (median and min-max tables).

    python -m bench.run                       # everything (make bench)
    python -m bench.run --workload sentiment  # one workload (chunks for a shared machine)
    python -m bench.run --quick               # tiny sizes, 1 repeat: checks the suite works (make bench-quick)
    python -m bench.run --isa avx2            # torch's kernels held to AVX2 on an AVX-512 CPU: bench/results/avx2-capped/
    python -m bench.run --device cuda         # both sides on the CUDA GPU: results in bench/results/cuda/
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from bench.common import ISA_ENV, machine, results_dir
from bench.table import write_readme

ROOT = Path(__file__).resolve().parent

# workload -> (module, baseline impls: the docs' defaults first, then the expert's, data sizes, quick sizes).
# Sizes and repeats keep `make bench` under 40 minutes on a 2-core fp32-only CPU: 26 min on an AVX-512 Xeon
# capped to AVX2, whose fp32 training ran ~1.5x faster than the AVX2 EPYC's (68 vs 43 tweets/s). More
# sizes: --size N (merged into the results).
WORKLOADS = {
    "sentiment": ("bench.sentiment", ["hf", "hf-expert"], [500, 2000], [64]),
    "chat": ("bench.chat", ["trl", "trl-expert"], [8, 16], [8]),
    "generation": ("bench.generation", ["loop"], [4, 8], [2]),
}


def child(module: str, *args: str, baseline: bool = False) -> dict:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT.parent / "src"), str(ROOT.parent),
                                                       os.environ.get("PYTHONPATH", "")])}
    if baseline:  # torch's own kernel-cache sizes, as a user gets them (importing tunelab would cap them)
        env.update(ONEDNN_PRIMITIVE_CACHE_CAPACITY="1024", LRU_CACHE_CAPACITY="1024")
    proc = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, env=env)
    for line in reversed(proc.stdout.splitlines()):
        if line.startswith("BENCH_RECORD "):
            return json.loads(line[len("BENCH_RECORD "):])
    raise RuntimeError(f"{module} {' '.join(args)} failed:\n{proc.stderr[-3000:]}")


def run_workload(name: str, repeats: int, quick: bool, only_sizes: list[int] | None, previous: dict | None,
                 device: str = "cpu") -> dict:
    module, baselines, sizes, quick_sizes = WORKLOADS[name]
    sizes = only_sizes or (quick_sizes if quick else sizes)
    # --size reruns some sizes and keeps the other sizes' records (and GEMM peaks) of the previous result.
    records = [r for r in (previous or {}).get("records", []) if r["size"] not in sizes]
    on = ["--device", device]
    gemm = [*(previous or {}).get("gemm", []), child("bench.gemm", *on)] if records else [child("bench.gemm", *on)]
    for rep in range(repeats):
        for size in sizes:
            # Rotate which side goes first so slow drifts of the machine hit every side alike.
            sides = [*baselines, "tunelab"]
            for impl in sides[rep % len(sides):] + sides[:rep % len(sides)]:
                t0 = time.time()
                rec = child(module, "--impl", impl, "--size", str(size), *on, baseline=impl != "tunelab")
                rec["repeat"] = rep
                records.append(rec)
                print(f"  {name} {impl:8s} size {size:5d} rep {rep}: {rec['examples_per_s']:.2f} ex/s, "
                      f"{rec['tokens_per_s']:.1f} tok/s, {rec['peak_rss_mb']:.0f} MB ({time.time() - t0:.0f} s)", flush=True)
    gemm.append(child("bench.gemm", *on))
    # bf16 is null where the CPU has no fast bf16 kernel (bench/gemm.py): no bf16 peak, fp32 MFU only
    peak = {p: max(g[p] for g in gemm if g.get(p) is not None) * 1e9 for p in ("fp32", "bf16")
            if any(g.get(p) is not None for g in gemm)}
    for rec in records:
        if "flops_per_s" in rec:
            rec["mfu"] = rec["flops_per_s"] / peak[rec["precision"] if rec["precision"] in peak else "fp32"]
    return {"workload": name, "baseline": baselines[0], "baselines": baselines, "device": device, "repeats": repeats,
            "quick": quick, "gemm": gemm, "gemm_peak_gflops": {k: v / 1e9 for k, v in peak.items()}, "records": records,
            "machine": machine(), "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--workload", choices=list(WORKLOADS), action="append", help="default: all")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--quick", action="store_true", help="tiny sizes, one repeat, results not written over")
    p.add_argument("--size", type=int, action="append", help="run only this data size (repeatable), merged into "
                   "the existing results: splits a long workload into chunks")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides run; CUDA results go "
                   "to their own folder")
    p.add_argument("--isa", choices=list(ISA_ENV), help="hold the CPU kernels (ATen, oneDNN, MKL, fbgemm, numba) to this "
                   "instruction set: an AVX2-only CPU's code paths on an AVX-512 machine (results in <kind>-capped/)")
    args = p.parse_args()
    if args.isa:  # set before anything imports torch in the children (and in this process's results_dir)
        os.environ.update(ISA_ENV[args.isa])
        import torch

        if torch.backends.cpu.get_cpu_capability() != args.isa.upper():
            sys.exit(f"--isa {args.isa}: torch was already loaded with {torch.backends.cpu.get_cpu_capability()}")
    out_dir = results_dir(args.device) / ("quick" if args.quick else "")
    out_dir.mkdir(parents=True, exist_ok=True)
    for name in args.workload or list(WORKLOADS):
        print(f"{name}:", flush=True)
        path = out_dir / f"{name}.json"
        previous = json.loads(path.read_text()) if args.size and path.exists() else None
        t0 = time.time()
        result = run_workload(name, 1 if args.quick else args.repeats, args.quick, args.size, previous, args.device)
        result["minutes"] = (time.time() - t0) / 60
        path.write_text(json.dumps(result, indent=1))
    write_readme(out_dir)
    print(f"results in {out_dir}")


if __name__ == "__main__":
    main()
