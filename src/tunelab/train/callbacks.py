"""The loop's standard callbacks: each concern of a training run that is not the gradient step itself.
A Session puts together the list it needs (train/loop.py calls them); tracking, search pruning, UI
progress and federated rounds are more callbacks of the same shape.

Only the main process writes or prints: every callback here that does checks `loop.is_main`."""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import threading

from safetensors.torch import load_file, save_file

from tunelab.config.schema import TrainConfig
from tunelab.console import console, task_bar
from tunelab.runs.rundir import RunDir
from tunelab.train.checkpoint import latest_checkpoint, load_checkpoint, save_checkpoint
from tunelab.train.loop import Callback, Loop


class MetricsLog(Callback):
    """Every step's and validation's numbers as one line each in the run's metrics.jsonl."""

    def __init__(self, run: RunDir, resume: bool = False):
        self.run, self.resume = run, resume

    def on_train_begin(self, loop):
        if self.resume and loop.is_main:
            self.run.truncate_metrics(loop.state["step"])  # drop what was logged after the checkpoint

    def on_step_end(self, loop, record):
        if loop.is_main:
            self.run.log(record)

    def on_evaluate(self, loop, metrics, improved):
        if loop.is_main:
            numbers = {k: v for k, v in metrics.items() if not isinstance(v, (dict, list))}
            self.run.log({"step": loop.state["step"], "split": "validation", **numbers})


class ConsoleProgress(Callback):
    """The training bar (loss, elapsed, ETA) and one line per validation."""

    def __init__(self, metric: str):
        self.metric = metric
        self._bar = contextlib.ExitStack()
        self._advance = None

    def on_train_begin(self, loop):
        if loop.is_main:
            self._advance = self._bar.enter_context(task_bar("Training", total=loop.state["total_steps"]))
            self._advance(loop.state["step"])

    def on_step_end(self, loop, record):
        if self._advance:
            self._advance(1, info=f"loss {record['loss']:.4f}")

    def on_evaluate(self, loop, metrics, improved):
        if loop.is_main:
            stop = loop.stop_reason == "early_stopping"
            console.print(f"  step {loop.state['step']:>5}  val {self.metric} {metrics[self.metric]:.4f}  "
                          f"val loss {metrics.get('loss') or 0:.4f}" + ("  [green]best[/]" if improved else "")
                          + ("  [yellow]early stop[/]" if stop else ""))

    def on_train_end(self, loop):
        self._bar.close()
        self._advance = None


class EarlyStopping(Callback):
    """Stop after `patience` validations in a row without a new best. Must come before the callbacks
    that report the stop (ConsoleProgress), since it decides it in the same on_evaluate."""

    def __init__(self, patience: int):
        self.patience = patience

    def on_evaluate(self, loop, metrics, improved):
        loop.state["bad_evals"] = 0 if improved else loop.state["bad_evals"] + 1
        if loop.state["bad_evals"] >= self.patience:
            loop.stop("early_stopping")


class TimeBudget(Callback):
    """Stop once training time reaches `minutes` (validated and saved as the last step)."""

    def __init__(self, minutes: float):
        self.seconds = 60 * minutes

    def on_step_end(self, loop, record):
        if loop.state["train_seconds"] >= self.seconds:
            loop.stop("time_budget")


class PauseOnSignal(Callback):
    """Ctrl-C or SIGTERM (the UI's stop button, a cluster's preemption notice) pauses the run: the
    current step finishes, a checkpoint is written, and `tunelab train --resume` continues it. A second
    Ctrl-C aborts at once. Only in the main thread (signal handlers cannot be set elsewhere)."""

    def __init__(self):
        self.asked = False
        self._old: dict = {}

    def _handler(self, signum, frame):
        if self.asked and signum == signal.SIGINT:
            raise KeyboardInterrupt
        self.asked = True
        console.print("[yellow]stopping after this step[/] (a checkpoint is kept; resume with `tunelab train --resume`); "
                      "Ctrl-C again aborts")

    def on_train_begin(self, loop):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handler) for s in (signal.SIGINT, signal.SIGTERM)}

    def on_step_end(self, loop, record):
        if self.asked:
            loop.pause()

    def on_train_end(self, loop):
        for s, h in self._old.items():
            signal.signal(s, h)
        self._old = {}


class BestCheckpoint(Callback):
    """The trainable state of the best validation step in run/best/ (replaced atomically)."""

    def __init__(self, run: RunDir):
        self.run = run

    def on_evaluate(self, loop, metrics, improved):
        if improved and loop.is_main:
            save_best(self.run, loop.unwrapped, loop.method)


class Checkpointing(Callback):
    """Resumable checkpoints in run/checkpoints/ at each save point; with `resume`, training continues
    from the latest one (every process loads it)."""

    def __init__(self, run: RunDir, keep: int, resume: bool = False):
        self.run, self.keep, self.resume = run, keep, resume

    def on_train_begin(self, loop):
        ckpt = latest_checkpoint(self.run.checkpoints) if self.resume else None
        if ckpt is not None:
            loop.state.update(load_checkpoint(ckpt, loop.unwrapped, loop.optimizer, loop.scheduler, loop.method))
            if loop.is_main:
                console.print(f"Resuming from {ckpt.name} (step {loop.state['step']} of {loop.state['total_steps']})")

    def on_save(self, loop):
        if loop.is_main:
            save_checkpoint(self.run.checkpoints, loop.state["step"], loop.unwrapped, loop.optimizer, loop.scheduler,
                            loop.state, self.keep, loop.method)
        loop.accelerator.wait_for_everyone()


def run_callbacks(run: RunDir, cfg: TrainConfig, metric: str, resume: bool = False) -> list[Callback]:
    """The callbacks of an ordinary run, in the order they must see each event."""
    callbacks: list[Callback] = [Checkpointing(run, cfg.keep_checkpoints, resume), MetricsLog(run, resume)]
    if cfg.max_minutes:
        callbacks.append(TimeBudget(cfg.max_minutes))
    if cfg.early_stopping_patience:
        callbacks.append(EarlyStopping(cfg.early_stopping_patience))
    callbacks += [BestCheckpoint(run), PauseOnSignal(), ConsoleProgress(metric)]
    return callbacks


def save_best(run: RunDir, model, method=None) -> None:
    tmp = run.path / ".best.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    state = method.trainable_state(model) if method is not None else _plain_state(model)
    save_file(state, tmp / "model.safetensors")
    old = run.path / ".best.old"
    shutil.rmtree(old, ignore_errors=True)
    if run.best_dir.exists():
        os.replace(run.best_dir, old)
    os.replace(tmp, run.best_dir)
    shutil.rmtree(old, ignore_errors=True)


def load_best(run: RunDir, model, method=None) -> None:
    tensors = load_file(run.best_dir / "model.safetensors")
    if method is not None:
        method.load_trainable_state(model, tensors)
    else:
        from tunelab.models.state import load_trainable_state

        load_trainable_state(model, tensors)


def _plain_state(model):
    from tunelab.models.state import trainable_state

    return trainable_state(model)
