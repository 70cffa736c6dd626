"""The training loop: plain PyTorch on accelerate (device placement, mixed precision, backward,
gradient clipping, and several processes through torchrun or `accelerate launch`). Read it top to bottom.

What the loop does not know: the run folder, the console, checkpoints, early stopping, time budgets,
trackers, search pruners. Those are callbacks (train/callbacks.py) that see the loop at fixed points
(train begin, each step's end, each validation, each save point, train end) and may ask it to stop.

Resumable exactly: batch order is a pure function of (seed, epoch), and a checkpoint holds weights,
optimizer, scheduler, RNG and loop state, so a resumed run takes the same steps as one that never
stopped.

Several processes (`torchrun --nproc_per_node N`): every micro-batch of a step is cut into N
row shards, one per process; the gradient of each shard is weighted by its share of the global batch
(examples, or target tokens), gradients are synchronized once per optimizer step (not on accumulation
micro-steps), and the logged loss is the global one, so N processes take the same steps as one process
with the same global batch. Only the main process writes files or prints (the callbacks check).
"""

from __future__ import annotations

import contextlib
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from accelerate import Accelerator
from transformers import get_scheduler

from tunelab.config.schema import TrainConfig
from tunelab.errors import NonFiniteLossError, TunelabError
from tunelab.runtime import autocast, resolve_device, resolve_precision, training_weights


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


class Callback:
    """Sees the loop at fixed points; every method is optional. `loop` is the running `Loop`: its
    `state` dict (step, best_metric, ...), model, optimizer, scheduler, method; `loop.stop(reason)`
    ends training after the current step (validated and saved first).

    The `on_run_*` events are the run's phases around the loop, emitted by the Session (a tracker sees
    a whole run through them: its config, the test metrics before and after, the files it wrote)."""

    def on_train_begin(self, loop: Loop) -> None: ...

    def on_before_optimizer_step(self, loop: Loop) -> None:
        """Gradients in place (clipped), before the optimizer steps: a callback may add to them
        (federated FedProx: the proximal term's gradient)."""

    def on_step_end(self, loop: Loop, record: dict) -> None: ...

    def on_evaluate(self, loop: Loop, metrics: dict, improved: bool) -> None: ...

    def on_save(self, loop: Loop) -> None: ...

    def on_train_end(self, loop: Loop) -> None: ...

    def on_run_begin(self, run: dict) -> None:
        """run: name, path, config (the resolved config as a dict), tags, resumed."""

    def on_run_test(self, phase: str, columns: dict) -> None:
        """phase 'before' (baseline columns: majority class, zero-shot, ...) or 'after' (the trained
        model); columns: name -> metrics on the test split."""

    def on_run_end(self, summary: dict, files: dict) -> None:
        """summary.json's content; files: artifact name -> path (adapter, report, plots, summary, ...)."""

    def on_run_failed(self, error: str, interrupted: bool) -> None: ...


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


def shard(idx: np.ndarray, rank: int, world: int) -> tuple[np.ndarray, bool]:
    """This process's rows of a micro-batch, and whether they are a stand-in: a process left without
    rows still runs one (weighted 0) so that every process takes part in the gradient sync."""
    mine = np.asarray(idx)[rank::world]
    return (mine, False) if len(mine) else (np.asarray(idx)[:1], True)


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
    # bf16 autocast is ours (runtime.autocast around forward + loss), not accelerate's: its state is one
    # per process and refuses another mixed_precision, and in-process runs (a tuning study, the Python
    # API) change precision between fits. fp16 stays with accelerate for its gradient scaler.
    acc = Accelerator(cpu=device == "cpu", mixed_precision="fp16" if precision == "fp16" else "no")
    return acc, precision


class Loop:
    """The state of one `fit`, as callbacks see it."""

    def __init__(self, model, optimizer, scheduler, method, cfg: TrainConfig, state: dict, accelerator: Accelerator):
        self.model, self.optimizer, self.scheduler, self.method = model, optimizer, scheduler, method
        self.cfg, self.state, self.accelerator = cfg, state, accelerator
        self.stop_reason: str | None = None
        self.paused = False

    @property
    def unwrapped(self) -> torch.nn.Module:
        """The model without a DistributedDataParallel wrapper: parameter names as saved."""
        return self.accelerator.unwrap_model(self.model)

    @property
    def is_main(self) -> bool:
        return self.accelerator.is_main_process

    def stop(self, reason: str) -> None:
        """End training after this step (early stopping, a time budget, a search pruner, a user)."""
        self.stop_reason = self.stop_reason or reason
        self.state["stop_reason"] = self.stop_reason
        self.state["stopped_early"] = self.stop_reason == "early_stopping"

    def pause(self) -> None:
        """End training after this step with a checkpoint, without ending the run (no last validation,
        the step budget kept): resuming continues it to the end."""
        self.paused = True


def fit(model: torch.nn.Module, cfg: TrainConfig, hooks: LoopHooks, callbacks: Sequence[Callback] = (), *,
        method=None) -> dict:
    """Train `model` in place. Returns the loop state (best metric and step, steps done, ...).
    `method` (a tunelab Method) may supply its own optimizer groups, hooks run around each optimizer
    step and extra state. Resuming is the Checkpointing callback's: it restores the state at train
    begin and the loop continues from its step."""
    accelerator, precision = make_accelerator(cfg)
    rank, world = accelerator.process_index, accelerator.num_processes
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
             "stop_reason": None, "train_seconds": 0.0, "total_steps": total_steps, "steps_per_epoch": steps_per_epoch,
             "precision": precision}
    loop = Loop(model, optimizer, scheduler, method, cfg, state, accelerator)

    def emit(event: str, *args) -> None:
        # A callback need not subclass Callback: the events it does not define are skipped (a user's
        # duck-typed callback keeps working when the loop gains an event).
        for cb in callbacks:
            fn = getattr(cb, event, None)
            if fn is not None:
                fn(loop, *args)

    def evaluate() -> None:
        metrics = hooks.validate(loop.unwrapped)
        if hooks.metric not in metrics:
            names = ", ".join(k for k, v in metrics.items() if isinstance(v, (int, float)))
            raise TunelabError(f"train.metric_for_best '{hooks.metric}' is not a validation metric of this task; choose one of: {names}")
        value, best = metrics[hooks.metric], state["best_metric"]
        improved = best is None or (value > best if hooks.higher_is_better else value < best)
        if improved:
            state.update(best_metric=value, best_step=state["step"])
        emit("on_evaluate", metrics, improved)

    def step_once(group: list) -> tuple[float, float | None, int]:
        """One optimizer step over a group of micro-batches; returns (global loss, grad norm, this
        process's input tokens)."""
        pieces = []  # (batch, weight): this process's rows, cut to the token budget
        for idx in group:
            mine, stand_in = shard(idx, rank, world) if world > 1 else (idx, False)
            for p in split_rows(hooks.collate(mine), cfg.max_batch_tokens):
                pieces.append((p, 0.0 if stand_in else float(hooks.weight(p)) if hooks.weight else float(rows(p))))
        tokens = sum(int(b["attention_mask"].sum()) if "attention_mask" in b else b["input_ids"].numel() for b, _ in pieces)
        local = sum(w for _, w in pieces)
        total = float(accelerator.reduce(torch.tensor(local, device=accelerator.device), "sum")) if world > 1 else local
        if world == 1:  # nothing to learn from in a piece without targets (e.g. no reply tokens)
            pieces = [(b, w) for b, w in pieces if w or not total] or pieces[:1]
        step_loss = torch.zeros((), device=accelerator.device)
        for i, (batch, w) in enumerate(pieces):
            batch = {k: v.to(accelerator.device) for k, v in batch.items()}
            # Gradients are synchronized on the last piece of the step only.
            sync = i == len(pieces) - 1
            with contextlib.nullcontext() if sync or world == 1 else accelerator.no_sync(model):
                with autocast(precision, accelerator.device):
                    loss = hooks.loss(model, batch)
                if w == 0 and world > 1:
                    loss = loss.nan_to_num(0.0)  # a stand-in or target-free piece: takes part, adds nothing
                elif not torch.isfinite(loss):
                    raise NonFiniteLossError(f"loss is {float(loss.detach())} at step {state['step'] + 1}", state["step"] + 1)
                # Each piece counts by its share of what the loss averages over in the whole step (all
                # processes): the step's loss is the mean over all of its examples (or target tokens), as
                # one big batch would give. DDP averages gradients over processes, hence * world.
                share = w / total if total else 1 / len(pieces)
                accelerator.backward(loss * share * world)
            step_loss += loss.detach().float() * share
        if world > 1:
            step_loss = accelerator.reduce(step_loss, "sum")
        grad_norm = None
        if cfg.max_grad_norm:
            grad_norm = float(accelerator.clip_grad_norm_(trainable, cfg.max_grad_norm))
            if not math.isfinite(grad_norm):
                raise NonFiniteLossError(f"gradient norm is {grad_norm} at step {state['step'] + 1}", state["step"] + 1)
        return float(step_loss), grad_norm, tokens

    emit("on_train_begin")
    total_steps = state["total_steps"] = min(state["total_steps"], total_steps)
    try:
        # Under bf16 on CPU the frozen weights are held in bf16 for the loop: no re-cast per step, and a
        # bf16 residual stream instead of float32 casts before every linear map.
        with training_weights(loop.unwrapped, precision, accelerator.device):
            while state["step"] < total_steps and loop.stop_reason is None and not loop.paused:
                epoch, done_in_epoch = divmod(state["step"], steps_per_epoch)
                micro = hooks.batches(epoch)
                step_groups = [micro[i : i + cfg.grad_accum] for i in range(0, len(micro), cfg.grad_accum)]
                for group in step_groups[done_in_epoch:]:
                    if state["step"] >= total_steps or loop.stop_reason is not None or loop.paused:
                        break
                    t0 = time.perf_counter()
                    model.train()
                    step_loss, grad_norm, tokens = step_once(group)
                    emit("on_before_optimizer_step")
                    if method is not None:
                        method.before_optimizer_step(loop.unwrapped, optimizer, state["step"] + 1, total_steps)
                    optimizer.step()
                    scheduler.step()
                    if method is not None:
                        method.on_optimizer_step(loop.unwrapped, optimizer, state["step"] + 1, total_steps)
                    optimizer.zero_grad(set_to_none=True)
                    state["step"] += 1
                    dt = time.perf_counter() - t0
                    state["train_seconds"] += dt
                    emit("on_step_end", {"step": state["step"], "split": "train", "epoch": state["step"] / steps_per_epoch,
                                         "loss": step_loss, "lr": scheduler.get_last_lr()[0], "grad_norm": grad_norm,
                                         "examples": sum(len(idx) for idx in group), "tokens": tokens, "seconds": dt})
                    last = state["step"] == total_steps or loop.stop_reason is not None
                    if last:
                        state["total_steps"] = total_steps = state["step"]  # a stop ends the run here
                    if state["step"] % eval_every == 0 or last:
                        evaluate()
                    if state["step"] % save_every == 0 or last or loop.stop_reason is not None or loop.paused:
                        emit("on_save")
    finally:
        emit("on_train_end")
    state["paused"] = loop.paused and state["step"] < total_steps
    return state


def set_seed(seed: int) -> None:
    import random

    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
