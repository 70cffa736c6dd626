"""Where the time of tunelab's sentiment training steps goes, by kind of operation (never part of `make test`):

    python -m bench.breakdown [--size 2000] [--isa avx2]

Runs bench.sentiment's tunelab job (the same config: LoRA r=8 on query/value of every MiniLM layer, one
epoch of --size tweets, 2 threads) under torch.profiler, from the first training step to the end-of-epoch
validation (not profiled), and sums each operator's own time into kinds: matrix products, dropout, GELU,
copies, ... The matrix products' rate (model FLOPs on real tokens / their time) is set against the fp32
or bf16 GEMM peak measured in the same process: the time outside them is what fusing element-wise work
could win at most, so `1 / matrix share` bounds the speed-up of any kernel work that leaves the GEMMs as
they are. The profiler itself adds per-op cost (~5% more step time here), so shares are approximate.
Results: bench/results/<cpu kind>/breakdown-sentiment-<size>.json and .md, with the CPU.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections import defaultdict

# Operator name (and input shapes) -> kind, by the operators' own time. An autograd Function written in
# Python (tunelab's FusedDropout) shows as one event whose own time is its numba kernel.
MATMUL = {"aten::mm", "aten::addmm", "aten::bmm", "aten::baddbmm", "aten::addbmm"}
ELEMENTWISE = {"aten::add", "aten::add_", "aten::mul", "aten::mul_", "aten::div", "aten::div_", "aten::masked_fill_",
               "aten::masked_fill", "aten::sub", "aten::neg", "aten::where", "aten::sum", "aten::fill_", "aten::zero_"}
LORA_R = 8  # bench.sentiment's rank
ATTENTION, LORA, LINEAR = "attention products (bmm)", "LoRA products (rank-r mm)", "linear layers (mm, addmm)"
MATMUL_KINDS = {ATTENTION, LORA, LINEAR}
KINDS = [
    (ATTENTION, lambda n, shapes: n in MATMUL and "bmm" in n),
    (LORA, lambda n, shapes: n in MATMUL and any(LORA_R in s for s in shapes if len(s) == 2)),
    (LINEAR, lambda n, shapes: n in MATMUL),
    ("dropout", lambda n, shapes: "Dropout" in n or n in ("aten::bernoulli_", "aten::native_dropout")),
    ("GELU", lambda n, shapes: n.startswith("aten::gelu")),
    ("softmax", lambda n, shapes: "softmax" in n),
    ("layer norm", lambda n, shapes: "layer_norm" in n),
    ("copies", lambda n, shapes: n in ("aten::copy_", "aten::clone", "aten::contiguous", "aten::_to_copy")),
    ("other element-wise", lambda n, shapes: n in ELEMENTWISE),
]


def kind_of(name: str, shapes: list, in_optimizer: bool) -> str:
    if in_optimizer:
        return "optimizer"
    return next((kind for kind, match in KINDS if match(name, shapes)), "rest (autograd, views, allocation, Python)")


def profile(size: int) -> dict:
    import torch
    from torch.profiler import ProfilerActivity

    from bench.common import encoder_train_flops, machine, setup, versions
    from bench.gemm import bf16_is_slow, gemm_flops
    from bench.sentiment import config, session_fit
    from tunelab.models.head_positions import computes_first_token_only
    from tunelab.session import Session

    setup("cpu")
    session = Session.from_config(config(size), overwrite=True)
    session.prepare()
    task, lengths = session.task, []
    hooks = session.hooks()
    collate, validate = hooks.collate, hooks.validate
    prof = torch.profiler.profile(activities=[ProfilerActivity.CPU], record_shapes=True)
    phase = {"profiling": False, "done": False}  # from the first batch to the first validation

    def count(idx):
        if not phase["profiling"] and not phase["done"]:
            prof.start()
            phase["profiling"] = True
        lengths.extend(int(task.enc["train"].lengths[i]) for i in idx)
        return collate(idx)

    def validate_unprofiled(model):
        if phase["profiling"]:
            prof.stop()
            phase.update(profiling=False, done=True)
        return validate(model)

    hooks.collate, hooks.validate = count, validate_unprofiled
    state = session_fit(session, hooks)

    by_kind: dict[str, float] = defaultdict(float)
    for ev in prof.events():
        parent, in_opt = ev.cpu_parent, ev.name.startswith("Optimizer.")
        while parent is not None and not in_opt:
            in_opt, parent = parent.name.startswith("Optimizer."), parent.cpu_parent
        by_kind[kind_of(ev.name, ev.input_shapes or [], in_opt)] += ev.self_cpu_time_total / 1e6
    total = sum(by_kind.values())

    base = session.model.get_base_model() if hasattr(session.model, "get_base_model") else session.model
    flops = encoder_train_flops(base.config, lengths, lora_r=LORA_R, lora_modules=2,
                                first_token_last_layer=computes_first_token_only(session.model))
    precision = session.precision
    peak_dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    slow = bf16_is_slow() if precision == "bf16" else None
    peak = None if slow else gemm_flops(peak_dtype)[0]
    steps = state["step"]
    matmul = sum(v for k, v in by_kind.items() if k in MATMUL_KINDS)
    return {"workload": "sentiment", "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "size": size,
            "steps": steps, "precision": precision, "train_seconds_profiled": round(state["train_seconds"], 3),
            "profiled_op_seconds": round(total, 3),
            "seconds_by_kind": {k: round(v, 3) for k, v in sorted(by_kind.items(), key=lambda kv: -kv[1])},
            "model_flops": flops, "matmul_gflops": flops / matmul / 1e9, "matmul_seconds": round(matmul, 3),
            "peak_gflops": peak and peak / 1e9, "matmul_share": matmul / total, "ceiling_speedup": total / matmul,
            "machine": machine(), "versions": versions()}


def markdown(r: dict) -> str:
    m = r["machine"]
    cap = ("; kernels capped by " + " ".join(f"{k}={v}" for k, v in m["isa_cap"].items())) if "isa_cap" in m else ""
    steps, total = r["steps"], r["profiled_op_seconds"]
    lines = [f"# Where a sentiment training step's time goes ({r['size']} tweets, {steps} steps, {r['precision']})", "",
             f"Machine: {m['cpu']} (kind {m['cpu_kind']}, torch CPU capability {m['torch_capability']}{cap}), "
             f"flags {' '.join(m['cpu_flags'])}, {m['cores']} cores. Written by `python -m bench.breakdown` "
             f"on {r['date']}.", "",
             "| kind of operation | ms per step | share |", "|---|---|---|"]
    for kind, sec in r["seconds_by_kind"].items():
        lines.append(f"| {kind} | {1000 * sec / steps:.1f} | {100 * sec / total:.1f}% |")
    lines.append(f"| all profiled operators | {1000 * total / steps:.1f} | 100% |")
    peak = (f"{r['peak_gflops']:.0f} GFLOP/s measured peak ({100 * r['matmul_gflops'] / r['peak_gflops']:.0f}% of it)"
            if r["peak_gflops"] else "no peak measured")
    lines += ["", f"- Matrix products (linear layers, LoRA and attention together) run at {r['matmul_gflops']:.0f} "
                  f"GFLOP/s of model FLOPs (real tokens only), against a {peak}.",
              f"- Everything outside them is {100 * (1 - r['matmul_share']):.0f}% of the "
              f"operators' time: removing all of it would make a step at most {r['ceiling_speedup']:.2f}x faster; "
              f"fusing part of it wins a part of that.",
              f"- Training under the profiler: {r['train_seconds_profiled']:.1f} s "
              f"({1000 * r['train_seconds_profiled'] / steps:.0f} ms a step, the profiler's own cost included)."]
    return "\n".join(lines) + "\n"


def main() -> None:
    from bench.common import ISA_ENV

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--size", type=int, default=2000)
    ap.add_argument("--isa", choices=list(ISA_ENV), help="hold the CPU kernels to this instruction set (as bench.run)")
    args = ap.parse_args()
    if args.isa:  # before torch and numba load
        if "torch" in sys.modules:
            sys.exit("--isa: torch was already imported")
        os.environ.update(ISA_ENV[args.isa])
    from bench.common import results_dir

    r = profile(args.size)
    out = results_dir() / f"breakdown-sentiment-{args.size}"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.with_suffix(".json").write_text(json.dumps(r, indent=1) + "\n")
    out.with_suffix(".md").write_text(markdown(r))
    print(markdown(r))


if __name__ == "__main__":
    main()
