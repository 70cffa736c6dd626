"""The training loop: plain PyTorch on accelerate (device placement, mixed precision, backward,
gradient clipping; multi-GPU through `accelerate launch`). Read it top to bottom.

Resumable exactly: batch order is a pure function of (seed, epoch), and a checkpoint holds weights,
optimizer, scheduler, RNG and loop state, so a resumed run takes the same steps as one that never
stopped.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from transformers import get_scheduler

from tunelab.config.schema import TrainConfig
from tunelab.console import console, task_bar
from tunelab.errors import NonFiniteLossError
from tunelab.runs.rundir import RunDir
from tunelab.train.checkpoint import (
    load_checkpoint,
    load_trainable_state,
    latest_checkpoint,
    save_checkpoint,
    trainable_state,
)
from tunelab.train.precision import resolve_device, resolve_precision, training_weights


@dataclass
class LoopHooks:
    """What the loop needs from the task; keeps the loop task-agnostic."""

    batches: Callable[[int], list]  # epoch -> list of micro-batch index arrays (deterministic)
    collate: Callable[[object], dict]  # index array -> tensors
    loss: Callable[[torch.nn.Module, dict], torch.Tensor]
    validate: Callable[[torch.nn.Module], dict]  # -> metrics on the validation split
    metric: str = "loss"  # validation metric that picks the best checkpoint
    higher_is_better: bool = False
    # What the task's loss averages over in a batch (examples, or target tokens for generative tasks):
    # micro-batches and pieces are weighted by it, so a step's gradient is that of one big batch.
    weight: Callable[[dict], float] | None = None


def rows(batch: dict) -> int:
    return len(next(iter(batch.values())))


def split_rows(batch: dict, max_tokens: int | None) -> list[dict]:
    """Pieces of whole rows holding at most `max_tokens` (padded) tokens each (one row at least), so
    the activations of a forward pass, the bulk of training memory, are capped by the budget rather
    than by the largest batch the data happens to produce."""
    n, width = batch["input_ids"].shape[:2]
    per = max(1, max_tokens // width) if max_tokens else n
    if per >= n:
        return [batch]
    return [{k: v[i : i + per] for k, v in batch.items()} for i in range(0, n, per)]


def decay_groups(model: torch.nn.Module, weight_decay: float) -> list[dict]:
    """AdamW groups: no weight decay on biases and norm weights (standard practice). Frozen weights
    get no optimizer state at all."""
    decay, no_decay = [], []
    for name, p in model.named_parameters():
        if not p.requires_grad:
            continue
        (no_decay if p.ndim < 2 or "norm" in name.lower() else decay).append(p)
    return [{"params": decay, "weight_decay": weight_decay}, {"params": no_decay, "weight_decay": 0.0}]


def make_accelerator(cfg: TrainConfig) -> tuple[Accelerator, str]:
    device = resolve_device(cfg.device)
    precision = resolve_precision(cfg.precision, device)
    acc = Accelerator(cpu=device == "cpu", mixed_precision={"fp32": "no"}.get(precision, precision))
    return acc, precision


def fit(model: torch.nn.Module, cfg: TrainConfig, hooks: LoopHooks, run: RunDir, *, resume: bool = False,
        method=None) -> dict:
    """Train `model` in place. Returns the loop state (best metric and step, steps done, ...);
    `run.best_dir` holds the best trainable weights (and the method's extra state). `method` (a tunelab
    Method) may supply its own optimizer groups, hooks run around each optimizer step and extra state."""
    accelerator, precision = make_accelerator(cfg)
    groups = method.optimizer_groups(model, cfg.weight_decay, cfg.lr) if method is not None else None
    optimizer = torch.optim.AdamW(groups or decay_groups(model, cfg.weight_decay), lr=cfg.lr)
    micro_per_epoch = len(hooks.batches(0))
    steps_per_epoch = max(1, math.ceil(micro_per_epoch / cfg.grad_accum))
    total_steps = math.ceil(cfg.epochs * steps_per_epoch)
    if cfg.max_steps:
        total_steps = min(total_steps, cfg.max_steps)
    scheduler = get_scheduler(
        cfg.scheduler if cfg.scheduler != "constant" else "constant_with_warmup",
        optimizer,
        num_warmup_steps=round(cfg.warmup_ratio * total_steps),
        num_training_steps=total_steps,
    )
    model, optimizer = accelerator.prepare(model, optimizer)
    if cfg.compile:
        model.compile()  # in place: parameter names (checkpoints, adapters) stay as they are
    trainable = [p for p in model.parameters() if p.requires_grad]
    eval_every = cfg.eval_every_steps or steps_per_epoch
    save_every = cfg.save_every_steps or steps_per_epoch

    state = {"step": 0, "best_metric": None, "best_step": None, "bad_evals": 0, "stopped_early": False,
             "train_seconds": 0.0, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
             "precision": precision}
    ckpt = latest_checkpoint(run.checkpoints) if resume else None
    if ckpt is not None:
        state.update(load_checkpoint(ckpt, model, optimizer, scheduler, method))
        run.truncate_metrics(state["step"])
        console.print(f"Resuming from {ckpt.name} (step {state['step']} of {total_steps})")
    elif resume:
        run.truncate_metrics(0)

    def evaluate_and_keep_best() -> None:
        metrics = hooks.validate(model)
        if hooks.metric not in metrics:
            from tunelab.errors import TunelabError

            names = ", ".join(k for k, v in metrics.items() if isinstance(v, (int, float)))
            raise TunelabError(f"train.metric_for_best '{hooks.metric}' is not a validation metric of this task; choose one of: {names}")
        value = metrics[hooks.metric]
        run.log({"step": state["step"], "split": "validation", **{k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}})
        best = state["best_metric"]
        improved = best is None or (value > best if hooks.higher_is_better else value < best)
        if improved:
            state.update(best_metric=value, best_step=state["step"], bad_evals=0)
            _save_best(run, model, method)
        else:
            state["bad_evals"] += 1
            if cfg.early_stopping_patience and state["bad_evals"] >= cfg.early_stopping_patience:
                state["stopped_early"] = True
        console.print(
            f"  step {state['step']:>5}  val {hooks.metric} {value:.4f}  val loss {metrics.get('loss') or 0:.4f}"
            + ("  [green]best[/]" if improved else "") + ("  [yellow]early stop[/]" if state["stopped_early"] else "")
        )

    # Under bf16 on CPU the frozen weights are held in bf16 for the loop: no re-cast per step, and a bf16
    # residual stream instead of float32 casts before every linear map.
    with task_bar("Training", total=total_steps) as advance, \
            training_weights(model, precision, accelerator.device):
        advance(state["step"])
        while state["step"] < total_steps and not state["stopped_early"]:
            epoch, done_in_epoch = divmod(state["step"], steps_per_epoch)
            micro = hooks.batches(epoch)
            groups = [micro[i : i + cfg.grad_accum] for i in range(0, len(micro), cfg.grad_accum)]
            for group in groups[done_in_epoch:]:
                if state["step"] >= total_steps or state["stopped_early"]:
                    break
                t0 = time.perf_counter()
                model.train()
                n_examples = sum(len(idx) for idx in group)
                pieces = [p for idx in group for p in split_rows(hooks.collate(idx), cfg.max_batch_tokens)]
                weights = [float(hooks.weight(p)) if hooks.weight else rows(p) for p in pieces]
                total = sum(weights)
                step_loss = 0.0
                for batch, w in zip(pieces, weights):
                    if w == 0 and total > 0:
                        continue  # nothing to learn from in this piece (e.g. no reply tokens)
                    batch = {k: v.to(accelerator.device) for k, v in batch.items()}
                    with accelerator.autocast():
                        loss = hooks.loss(model, batch)
                    if not torch.isfinite(loss):
                        raise NonFiniteLossError(f"loss is {float(loss)} at step {state['step'] + 1}", state["step"] + 1)
                    # Each piece counts by its share of what the loss averages over: the step's loss is
                    # the mean over all of its examples (or target tokens), as one big batch would give.
                    share = w / total if total else 1 / len(pieces)
                    accelerator.backward(loss * share)
                    step_loss += float(loss.detach()) * share
                grad_norm = None
                if cfg.max_grad_norm:
                    grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
                    if not math.isfinite(grad_norm):
                        raise NonFiniteLossError(f"gradient norm is {grad_norm} at step {state['step'] + 1}", state["step"] + 1)
                if method is not None:
                    method.before_optimizer_step(model, optimizer, state["step"] + 1, total_steps)
                optimizer.step()
                scheduler.step()
                if method is not None:
                    method.on_optimizer_step(model, optimizer, state["step"] + 1, total_steps)
                optimizer.zero_grad(set_to_none=True)
                state["step"] += 1
                dt = time.perf_counter() - t0
                state["train_seconds"] += dt
                run.log({"step": state["step"], "split": "train", "epoch": state["step"] / steps_per_epoch,
                         "loss": step_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                         "examples": n_examples, "seconds": dt})
                advance(1, info=f"loss {step_loss:.4f}")
                last = state["step"] == total_steps or bool(cfg.max_minutes and state["train_seconds"] >= 60 * cfg.max_minutes)
                if last:
                    state["total_steps"] = total_steps = state["step"]  # a time budget ends the run here
                if state["step"] % eval_every == 0 or last:
                    evaluate_and_keep_best()
                if state["step"] % save_every == 0 or last or state["stopped_early"]:
                    save_checkpoint(run.checkpoints, state["step"], model, optimizer, scheduler, state, cfg.keep_checkpoints,
                                    method)
    return state


def _save_best(run: RunDir, model: torch.nn.Module, method=None) -> None:
    import os
    import shutil

    from safetensors.torch import save_file

    tmp = run.path / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file(trainable_state(model, method), tmp / "model.safetensors")
    old = run.path / ".best.old"
    shutil.rmtree(old, ignore_errors=True)
    if run.best_dir.exists():
        os.replace(run.best_dir, old)
    os.replace(tmp, run.best_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_best(run: RunDir, model: torch.nn.Module, method=None) -> None:
    from safetensors.torch import load_file

    load_trainable_state(model, load_file(run.best_dir / "model.safetensors"), method)


def set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
