"""Steps shared by the workflows: building the model + method, loading a finished run."""

from __future__ import annotations

import json
import resource
from dataclasses import dataclass

import numpy as np
import torch

from tunelab.config.schema import RunConfig
from tunelab.console import console, status
from tunelab.errors import TunelabError
from tunelab.models.cpu_kernels import prepare_dropout, use_cpu_kernels, widen_kernel_caches
from tunelab.methods import get_method
from tunelab.runs.rundir import RunDir
from tunelab.tasks import get_task
from tunelab.train.precision import default_threads, resolve_device, resolve_precision


def setup_threads(cfg: RunConfig) -> None:
    torch.set_num_threads(cfg.train.threads or default_threads())


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux reports KiB


def build_model(cfg: RunConfig, labels: list[str]):
    """(task, tokenizer, model with the method applied, method)."""
    task = get_task(cfg.task.type)
    if cfg.train.packing and task.type != "classification":
        widen_kernel_caches()  # before any GEMM runs: packed rows repeat their shapes
    method = get_method(cfg.method.name)(cfg.method)
    device = resolve_device(cfg.train.device)
    with status(f"Loading {cfg.model.name}"):
        tok, model = task.load(cfg.model, labels, **method.model_load_kwargs(device))
    model = method.apply(model, head_modules=task.head_modules(model), peft_task_type=task.peft_task_type)
    if cfg.model.cpu_kernels:
        use_cpu_kernels(model)  # again: the method may have added dropout modules (LoRA's)
        if device == "cpu":
            prepare_dropout(model)
    if cfg.train.gradient_checkpointing:
        if not getattr(model, "supports_gradient_checkpointing", False):
            raise TunelabError(f"model '{cfg.model.name}' does not support gradient checkpointing; "
                               "set train.gradient_checkpointing=false")
        # Non-reentrant checkpointing needs no input that requires grad, so it works with frozen embeddings.
        model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    return task, tok, model, method


def length_stats(lengths: np.ndarray, max_length: int) -> dict:
    return {
        "mean": round(float(lengths.mean()), 1),
        "p50": int(np.percentile(lengths, 50)),
        "p95": int(np.percentile(lengths, 95)),
        "max": int(lengths.max()),
        "truncated_percent": round(100 * float((lengths >= max_length).mean()), 2),
    }


@dataclass
class LoadedRun:
    run: RunDir
    cfg: RunConfig
    task: object
    tokenizer: object
    model: torch.nn.Module
    labels: list[str]
    precision: str


def load_run(path: str) -> LoadedRun:
    """The trained model of a finished run: base weights + the saved adapter folder."""
    run = RunDir.open(path)
    if not (run.adapter_dir / "adapter_config.json").is_file() and not (run.adapter_dir / "tunelab_method.json").is_file():
        raise TunelabError(f"run '{path}' has no saved adapter yet (training did not finish); resume it with `tunelab train --resume {path}`")
    cfg = run.config()
    setup_threads(cfg)
    labels_file = run.adapter_dir / "labels.json"
    labels = json.loads(labels_file.read_text(encoding="utf-8")) if labels_file.is_file() else []
    task = get_task(cfg.task.type)
    with status(f"Loading {cfg.model.name} + adapter"):
        method = get_method(cfg.method.name)(cfg.method)
        tok, base = task.load(cfg.model, labels, **method.model_load_kwargs())
        model = method.load(base, run.adapter_dir)
    model.eval()
    precision = resolve_precision(cfg.train.precision, "cpu")
    return LoadedRun(run, cfg, task, tok, model, labels, precision)


def print_notes(notes: list[str]) -> None:
    for note in notes:
        console.print(f"[dim]note:[/] {note}")
