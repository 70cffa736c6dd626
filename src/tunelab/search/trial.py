"""One trial: the recipe with the trial's values, trained in-process by a Session with one extra loop
callback that reports each validation to Optuna and stops the run when the pruner says so. The
objective is the best validation value of the run (the test split is never looked at)."""

from __future__ import annotations

import gc
import os
import shutil
import socket
import time
from dataclasses import dataclass
from pathlib import Path

import optuna

from tunelab.config import load_config
from tunelab.console import console
from tunelab.models.state import count_parameters
from tunelab.search.space import suggest, trial_overrides
from tunelab.session import Session
from tunelab.train.loop import Callback


class ReportToOptuna(Callback):
    """Each validation value goes to the trial (the pruner's input); a prune request ends the run."""

    def __init__(self, trial: optuna.Trial, metric: str, prune: bool):
        self.trial, self.metric, self.prune = trial, metric, prune
        self.pruned_at: int | None = None

    def on_evaluate(self, loop, metrics, improved):
        if not self.prune or self.metric not in metrics:
            return
        step = loop.state["step"]
        self.trial.report(float(metrics[self.metric]), step)
        if self.trial.should_prune():
            self.pruned_at = step
            loop.stop("pruned")


class StepProgress(Callback):
    def __init__(self, advance, reset):
        self.advance, self.reset = advance, reset

    def on_train_begin(self, loop):
        self.reset(loop.state["total_steps"])

    def on_step_end(self, loop, record):
        self.advance(record["loss"])


@dataclass
class Objective:
    """Optuna's objective: a callable of a trial returning the objective value(s)."""

    recipe: str | None
    user: list[str]
    space: dict
    metric: str
    objectives: list[str]
    base_method: str
    trials_dir: Path
    keep_runs: bool = False
    progress: object = None  # search.progress.TuneProgress
    inspect: object = None  # called with (trial, session) after training (layer_rank reads the model)

    def __call__(self, trial: optuna.Trial):
        params = suggest(trial, self.space, self.base_method)
        run_dir = self.trials_dir / f"trial-{trial.number:04d}"
        trial.set_user_attr("run", str(run_dir))
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        # values that are not Optuna parameters (a rank pattern, another method) come with an enqueued trial
        fixed = trial.user_attrs.get("overrides") or {}
        cfg = load_config(self.recipe, trial_overrides(self.user, {**params, **fixed}, {
            "output.dir": str(run_dir), "eval.before": False, "train.metric_for_best": self.metric}))
        callbacks = [ReportToOptuna(trial, self.metric, prune=len(self.objectives) == 1)]
        if self.progress:
            callbacks.append(StepProgress(self.progress.step, self.progress.start_trial))
        t0 = time.perf_counter()
        quiet, console.quiet = console.quiet, True  # the study's own progress speaks for the trial
        try:
            session = Session.from_config(cfg)
            session.prepare()
            state = session.fit(callbacks)
            trainable, _ = count_parameters(session.model)
            if self.inspect:
                self.inspect(trial, session)
        except Exception as e:
            trial.set_user_attr("error", f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500])
            raise
        finally:
            console.quiet = quiet
            session = None
            gc.collect()
            if not self.keep_runs:
                for sub in ("checkpoints", "best"):
                    shutil.rmtree(run_dir / sub, ignore_errors=True)
        seconds = time.perf_counter() - t0
        trial.set_user_attr("train_seconds", round(state["train_seconds"], 1))
        trial.set_user_attr("trial_seconds", round(seconds, 1))
        trial.set_user_attr("trainable_params", trainable)
        trial.set_user_attr("steps", state["step"])
        trial.set_user_attr("best_step", state["best_step"])
        if callbacks[0].pruned_at is not None:
            trial.set_user_attr("pruned_at_step", callbacks[0].pruned_at)
            raise optuna.TrialPruned(f"pruned at step {callbacks[0].pruned_at}")
        if state["best_metric"] is None:
            raise RuntimeError("the run made no validation (set train.eval_every_steps)")
        values = {"metric": float(state["best_metric"]), "trainable_params": float(trainable),
                  "train_seconds": float(state["train_seconds"])}
        out = [values[o] for o in self.objectives]
        return out[0] if len(out) == 1 else out
