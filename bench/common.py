"""Helpers every workload script shares: threads, peak memory, versions, the JSON record, FLOP counts."""

from __future__ import annotations

import argparse
import atexit
import json
import os
import resource
import shutil
import sys
import tempfile
import time
from pathlib import Path

SEED = 42


def setup(device: str, threads: int = 2) -> None:
    """Same thread count on both sides: the physical cores of this machine (one torch process at a time).
    On CUDA the host threads are left to torch's default, and asking for a GPU torch cannot see fails."""
    import torch

    if device == "cuda" and not torch.cuda.is_available():
        sys.exit("--device cuda: torch sees no CUDA GPU on this machine")
    if device == "cpu":
        torch.set_num_threads(threads)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")


def peak_rss_mb() -> float:
    """Peak resident memory of this process (one configuration per process, so it is this run's)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def machine() -> dict:
    """What the numbers were measured on: the CPU model, the instruction-set flags that decide which
    kernels run (bf16 is fast only with AVX512-BF16 or AMX), torch's CPU capability, the CPU kind, any
    ISA cap (--isa) and the cores (tunelab.runtime.cpu_description). Recorded with every result."""
    from tunelab.runtime import cpu_description

    d = cpu_description()
    return {"cpu": d["model"], "cpu_flags": d["flags"], "cpu_kind": d["kind"], "torch_capability": d["torch_capability"],
            "cores": d["cores"], **({"isa_cap": d["isa_cap"]} if "isa_cap" in d else {})}


# --isa avx2: kernels held to AVX2 (ATen, oneDNN, MKL, fbgemm, numba; tunelab.runtime.ISA_CAPS) on an
# AVX-512 machine, to measure the code paths of an AVX2-only CPU where none is at hand. Same instructions,
# not the same chip: clocks, caches and memory are this machine's, so such results go to their own folder.
# numba: a CPU name alone keeps the host's feature flags (AVX-512 code still), so the features are
# emptied to haswell's own. Measured on the AMX Xeon: the fused dropout pass over 32x40x1536 fp32 took
# 0.69 ms as host code, 0.76 with only the name set, 0.99 as AVX2 code.
ISA_ENV = {"avx2": {"ATEN_CPU_CAPABILITY": "avx2", "ONEDNN_MAX_CPU_ISA": "AVX2", "MKL_ENABLE_INSTRUCTIONS": "AVX2",
                    "FBGEMM_ENABLE_INSTRUCTIONS": "AVX2", "NUMBA_CPU_NAME": "haswell", "NUMBA_CPU_FEATURES": ""}}
RESULTS = Path(__file__).resolve().parent / "results"


def results_dir(device: str = "cpu") -> Path:
    """bench/results/<cpu kind>/ (avx512-bf16, avx512, avx2, ...; "-capped" when --isa holds the kernels
    below what the CPU has), or bench/results/cuda/: every kind keeps its own tables."""
    if device == "cuda":
        return RESULTS / "cuda"
    m = machine()
    return RESULTS / (m["cpu_kind"] + ("-capped" if "isa_cap" in m else ""))


def versions() -> dict:
    import accelerate
    import peft
    import torch
    import transformers
    import trl

    return {"python": sys.version.split()[0], "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "trl": trl.__version__, "accelerate": accelerate.__version__}


def parser(description: str, impls: list[str]) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=description)
    p.add_argument("--impl", choices=impls, required=True)
    p.add_argument("--size", type=int, required=True, help="training examples (or prompts)")
    p.add_argument("--out", type=Path, help="write the JSON record here (else stdout)")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu", help="where both sides train (default: cpu)")
    return p


def emit(record: dict, out: Path | None) -> None:
    record.setdefault("peak_rss_mb", round(peak_rss_mb(), 1))
    if record.get("device") == "cuda":
        import torch

        record.setdefault("peak_gpu_mb", round(torch.cuda.max_memory_allocated() / 2**20, 1))
    text = json.dumps(record, indent=1)
    if out:
        out.write_text(text)
    print("BENCH_RECORD " + json.dumps(record))


def scratch_dir() -> str:
    """A temp folder for run outputs and checkpoints, removed when the process exits."""
    path = tempfile.mkdtemp(prefix="tunelab-bench-")
    atexit.register(shutil.rmtree, path, ignore_errors=True)
    return path


def main(doc: str, impls: list[str], run) -> None:
    """Command line of a workload script: run one configuration, time the whole process, emit the record."""
    args = parser(doc.splitlines()[0], impls).parse_args()
    setup(args.device)
    with Timer() as wall:
        rec = run(args.impl, args.size, args.device)
    rec["device"] = args.device
    rec["wall_seconds"] = round(wall.seconds, 2)
    emit(rec, args.out)


def step_clock():
    """A Trainer callback timing the training steps only (on_train_begin to on_train_end), like
    tunelab's summed step times; read `.t.seconds` after training."""
    from transformers import TrainerCallback

    class Clock(TrainerCallback):
        def on_train_begin(self, *a, **k):
            self.t = Timer().__enter__()

        def on_train_end(self, *a, **k):
            self.t.__exit__()

    return Clock()


class Timer:
    def __enter__(self):
        self.t0 = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.t0


# -- model FLOPs ---------------------------------------------------------------------------------
# Model FLOPs count the useful work on real tokens only (padding excluded, activation recomputation of
# gradient checkpointing excluded), 2 FLOPs per multiply-add:
#   forward, per layer and sequence of n real tokens: 2*n*P_lin (P_lin = weights of the layer's linear
#     maps) + 4*n^2*d (scores QK^T and weighted sum PV over all heads, d = hidden size).
#   backward with a FROZEN base: the input gradient of every linear map (2*n*P_lin again) and of the
#     attention (dP, dV, dQ, dK: 8*n^2*d), but no weight gradient for frozen weights; so linear maps cost
#     2x their forward in total and attention 3x.
#   LoRA (rank r on a d_in x d_out map): forward 2*n*r*(d_in+d_out); backward 2x that (input + weight grads).
#   Heads: the classifier on one position per sequence (negligible, counted); an LM head of V*d on the
#     positions whose logits the loss needs (forward + input gradient: 4*n_loss*V*d).


def encoder_train_flops(cfg, lengths, lora_r: int, lora_modules: int, first_token_last_layer: bool = False) -> float:
    """BERT-style encoder, frozen base + LoRA on `lora_modules` d x d maps per layer (query and value when
    2); `lengths` = real tokens of each trained sequence. `first_token_last_layer`: the last layer computes
    only the first token's output (models/head_positions.py): keys and values of all n tokens, the query,
    attention output map, feed-forward block and the query's LoRA for one."""
    d, f, L = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers
    p_lin = 4 * d * d + 2 * d * f
    lora = lora_modules * lora_r * (d + d)
    full = L - 1 if first_token_last_layer else L
    total = 0.0
    for n in lengths:
        fwd = full * (2 * n * p_lin + 4 * n * n * d)
        attn_fwd = full * 4 * n * n * d
        total += 2 * (fwd - attn_fwd) + 3 * attn_fwd + 3 * full * 2 * n * lora
        if first_token_last_layer:
            lin = 2 * (2 * n * d * d + 2 * d * d + 2 * d * f)  # K, V on n tokens; Q, O, FFN on one
            total += 2 * lin + 3 * 4 * n * d + 3 * 2 * lora_r * (d + d) * (n + 1)  # value's LoRA on n, query's on 1
        total += 3 * 2 * (d * d + d * cfg.num_labels)  # pooler + classifier on the first token
    return total


def decoder_train_flops(cfg, lengths, loss_tokens: int, lora_r: int) -> float:
    """Llama-style decoder, frozen base + LoRA on all 7 linear maps per layer; causal attention costs
    half of the full n^2 terms."""
    d, f, L, V = cfg.hidden_size, cfg.intermediate_size, cfg.num_hidden_layers, cfg.vocab_size
    kv = d * cfg.num_key_value_heads // cfg.num_attention_heads
    p_lin = d * d + 2 * d * kv + d * d + 3 * d * f
    lora = lora_r * ((d + d) + 2 * (d + kv) + (d + d) + 3 * (d + f))
    total = 0.0
    for n in lengths:
        total += L * (2 * 2 * n * p_lin + 3 * 2 * n * n * d + 3 * 2 * n * lora)
    return total + 4 * loss_tokens * V * d
