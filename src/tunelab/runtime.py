"""The hardware side of training and inference alike: the device, the compute precision (bf16 autocast
where the hardware does bf16 natively, else fp32), half-precision weights, threads and the process's
place in a distributed run. Master weights and optimizer state always stay fp32.

Both sides use it (train/ and the inference layer), so it sits low: it imports nothing of tunelab but
errors."""

from __future__ import annotations

import contextlib
import functools
import os

import torch


# Environment variables that cap the instruction set kernels use below what the CPU has: ATen's own
# vectorized kernels, oneDNN (bf16 matmuls, convolutions), MKL (fp32 GEMMs), fbgemm (torch's int8
# matmuls, which pick their ISA from the CPU and ignore the three above) and numba (the fused dropout
# kernel, compiled for the host CPU unless NUMBA_CPU_NAME names another). With all of them at AVX2 /
# haswell, an AVX-512 machine runs the code paths of an AVX2-only one (bench.run --isa avx2). torch's own
# three decide `isa_capped` (and so the kind); all of them are recorded with a result.
TORCH_ISA_CAPS = ("ATEN_CPU_CAPABILITY", "ONEDNN_MAX_CPU_ISA", "MKL_ENABLE_INSTRUCTIONS")
ISA_CAPS = (*TORCH_ISA_CAPS, "FBGEMM_ENABLE_INSTRUCTIONS", "NUMBA_CPU_NAME")


@functools.cache
def _cpuinfo() -> tuple[str, frozenset[str]]:
    """The CPU's model name and flags, read once per process."""
    model, flags = "?", set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name") and model == "?":
                    model = line.split(":", 1)[1].strip()
                elif line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    return model, frozenset(flags)


def isa_capped() -> bool:
    """True when this process's kernels are held below AVX-512 by TORCH_ISA_CAPS (torch reports AVX2 or less)."""
    return any(os.environ.get(v) for v in TORCH_ISA_CAPS) and torch.backends.cpu.get_cpu_capability() != "AVX512"


@functools.cache
def cpu_has_bf16() -> bool:
    """True when the CPU has native bf16 dot products (AVX512-BF16 or AMX) and this process may use them;
    elsewhere bf16 autocast is emulated and slower than fp32 (a 2048x2048 bf16 matmul took 13+ minutes on
    an AVX2-only EPYC)."""
    return bool(_cpuinfo()[1] & {"avx512_bf16", "amx_bf16"}) and not isa_capped()


SPEED_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_bf16", "amx_tile", "amx_int8")


def cpu_kind() -> str:
    """"amx-bf16", "avx512-bf16", "avx512", "avx2" or "other": what decides which kernels run, from the flags
    and torch's CPU capability (so an AVX-512 machine capped to AVX2 counts as "avx2"). AMX is a kind of its
    own: oneDNN runs bf16 GEMMs on its tile units, several times the AVX512-BF16 dot products' rate."""
    flags, capability = _cpuinfo()[1], torch.backends.cpu.get_cpu_capability()
    if cpu_has_bf16():
        return "amx-bf16" if "amx_bf16" in flags else "avx512-bf16"
    if "avx512f" in flags and capability == "AVX512":
        return "avx512"
    return "avx2" if "avx2" in flags else "other"


def cpu_description() -> dict:
    """What a timing was measured on: the CPU model, the flags that decide which kernels run, torch's
    CPU capability, the kind (cpu_kind) to group results by, and any ISA cap set in the environment."""
    model, flags = _cpuinfo()
    caps = {v: os.environ[v] for v in ISA_CAPS if os.environ.get(v)}
    return {"model": model, "kind": cpu_kind(), "flags": [f for f in SPEED_FLAGS if f in flags],
            "torch_capability": torch.backends.cpu.get_cpu_capability(), "cores": os.cpu_count(),
            **({"isa_cap": caps} if isa_capped() else {})}


def machine(device: str = "cpu") -> dict:
    """What a run's timings were measured on, kept in its summary.json: the CPU (cpu_description), the
    device and torch's thread count, and the GPU's name where the run used one. The same tweets train
    in fp32 at 43 examples/s on an AVX2 EPYC and in bf16 several times faster on an AMX Xeon, so a time
    without its machine cannot be compared."""
    cpu = cpu_description()
    out = {"device": str(device), "threads": torch.get_num_threads(), "cpu": cpu.pop("model"),
           "cpu_kind": cpu.pop("kind"), **cpu}
    if torch.device(device).type == "cuda":
        out["gpu"] = torch.cuda.get_device_name(torch.device(device))
    return out


def machine_line(m: dict) -> str:
    """One line for reports: 'Intel(R) Xeon(R) Processor (amx-bf16, torch AVX512), 2 threads'; the GPU
    first where there was one; kernels held below the CPU's own by an ISA cap say so."""
    cap = ", capped by " + " ".join(f"{k}={v}" for k, v in m["isa_cap"].items()) if m.get("isa_cap") else ""
    cpu = f"{m['cpu']} ({m['cpu_kind']}, torch {m['torch_capability']}{cap}), {m['threads']} threads"
    return f"{m['gpu']} ({m['device']}); host {cpu}" if m.get("gpu") else cpu


def resolve_device(requested: str = "auto") -> str:
    """`train.device` -> "cuda" or "cpu". Asking for CUDA where torch sees none is an error, not a silent
    CPU run (a benchmark or a time estimate would be wrong without anyone noticing)."""
    if requested == "cpu":
        return "cpu"
    if torch.cuda.is_available():
        return "cuda"
    if requested == "cuda":
        from tunelab.errors import TunelabError

        build = f"a CPU-only build ({torch.__version__})" if torch.version.cuda is None else f"CUDA {torch.version.cuda}"
        raise TunelabError(f"train.device=cuda but torch sees no CUDA GPU (torch is {build}); "
                           "set train.device=cpu or auto, or install a CUDA build of torch on a GPU machine")
    return "cpu"


def resolve_precision(requested: str, device: torch.device | str) -> str:
    device = torch.device(device)
    if requested != "auto":
        return requested
    if device.type == "cuda":
        return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
    return "bf16" if cpu_has_bf16() else "fp32"


def autocast(precision: str, device: torch.device | str):
    device = torch.device(device)
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


@contextlib.contextmanager
def half_weights(model: torch.nn.Module, precision: str, device: torch.device | str, *, frozen_only: bool):
    """Hold float32 weights in bf16/fp16 on CPU for the block (yields whether it did); the exact float32
    tensors come back after.

    Why: CPU autocast re-casts frozen weights at every forward (its cast cache keeps trainable leaves
    only), and a float32 LayerNorm/RMSNorm weight makes the residual stream float32, so every linear map
    casts its input again (5 casts of the same activations per BERT layer with LoRA on query/value) and
    the element-wise work runs in float32. Training (`frozen_only`): frozen weights only, as when a model
    is loaded in bf16 for LoRA (under fp16: frozen linear maps only); trainable weights (master weights)
    and optimizer state stay float32.
    Generation: every float32 weight, for pure half-precision inference (prefill 1.7x faster on SmolLM2).
    Costs a half-size copy of those weights."""
    device = torch.device(device)
    quantized = any(not p.is_floating_point() for p in model.parameters())  # bitsandbytes 4/8-bit: leave as is
    if precision == "fp32" or device.type != "cpu" or quantized:
        yield False
        return
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    params = model.parameters()
    if frozen_only and dtype == torch.float16:
        # fp16's range (max 65504) is too narrow for a residual stream (T5 and large LLMs overflow in it),
        # so fp16 training keeps norms and embeddings in float32 and halves only the frozen linear maps.
        params = dict.fromkeys(p for m in model.modules() if isinstance(m, torch.nn.Linear)
                                for p in m.parameters(recurse=False))
    saved = []
    for p in params:
        if p.dtype == torch.float32 and not (frozen_only and p.requires_grad):
            saved.append((p, p.data))
            p.data = p.data.to(dtype)
    try:
        yield True
    finally:
        for p, data in saved:
            p.data = data


@contextlib.contextmanager
def training_weights(model: torch.nn.Module, precision: str, device: torch.device | str):
    """The weights' dtypes for a training loop under `precision`: frozen weights in bf16/fp16 on CPU
    (`half_weights`), and peft's adapter layers keep that half-precision input instead of up-casting it
    to their float32 weights. Under autocast the matmul casts it straight back, so the up-cast cost two
    copies of the activations per adapted layer (forward and backward) and changed nothing."""
    from peft.helpers import disable_input_dtype_casting

    with half_weights(model, precision, device, frozen_only=True) as halved, \
            disable_input_dtype_casting(model, active=halved):
        yield halved


def default_threads() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return os.cpu_count() or 1


def setup_threads(threads: int | None = None) -> None:
    torch.set_num_threads(threads or default_threads())


def peak_rss_mb() -> float:
    """This process's own peak resident memory (MiB). Linux's VmHWM belongs to the address space, which
    exec replaces; getrusage's ru_maxrss survives exec, so a process started by a parent that had grown
    to 2 GB (compress's rows after a recovery fine-tune) reported the parent's 2 GB."""
    try:
        with open("/proc/self/status", encoding="utf-8") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        pass
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def process_rank() -> tuple[int, int]:
    """(rank, world size) of this process: `accelerate launch` / torchrun set RANK and WORLD_SIZE."""
    return int(os.environ.get("RANK", 0)), int(os.environ.get("WORLD_SIZE", 1))


def is_main_process() -> bool:
    """Only the main process writes files and prints in a multi-process run."""
    return process_rank()[0] == 0
