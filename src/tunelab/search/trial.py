"""One trial: the recipe with the trial's values, trained by a Session with one extra loop callback
that reports each validation to Optuna and stops the run when the pruner says so. The objective is
the best validation value of the run (the test split is never looked at by a search).

Two ways to run a trial, the same code in both:
- in this process (the default for `tunelab tune`: no start-up cost per trial);
- in a child process (`isolate`: `tunelab compare`, or `tune.isolate_trials`): its peak memory is its
  own and a crash, even a segfault or an out-of-memory kill, fails that trial only. The child opens
  the same storage and reports to the same Optuna trial, so pruning works there too.

A trial enqueued with a whole config (`user_attrs["config"]`, what compare does: one per method)
trains that config; otherwise the config is the recipe + the user's overrides + the trial's values.
With `full_run` the trial is the whole pipeline of `tunelab train` (before/after on the test split,
saved adapter, report), for a benchmark rather than a search."""

from __future__ import annotations

import gc
import json
import multiprocessing as mp
import os
import shutil
import socket
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import optuna

from tunelab.config.load import merge_dicts, resolve_raw, validate_config
from tunelab.console import console
from tunelab.models.state import count_parameters
from tunelab.runs.io import atomic_write_json
from tunelab.search.space import nest, suggest, trial_overrides
from tunelab.session import Session
from tunelab.train.loop import Callback

RESULT_FILE = "trial_result.json"


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
class TrialJob:
    """What one trial trains and how: everything a child process needs, so it pickles."""

    raw: dict  # the validated config as a plain dict
    metric: str
    prune: bool
    full_run: bool = False
    after_run: Callable | None = None  # fn(run_path) -> dict, a module-level function (it is pickled)
    keep_runs: bool = False
    quiet: bool = True  # a search's own progress speaks for its trials; a full run prints as `tunelab train`

    def run(self, trial, progress=None, inspect=None) -> dict:
        """Train; return the numbers the objective and the trial's attributes need."""
        cfg = validate_config(self.raw)
        run_dir = Path(cfg.output.dir)
        callbacks = [ReportToOptuna(trial, self.metric, self.prune)]
        if progress:
            callbacks.append(StepProgress(progress.step, progress.start_trial))
        t0 = time.perf_counter()
        session = None
        quiet, console.quiet = console.quiet, console.quiet or self.quiet
        try:
            session = Session.from_config(cfg, overwrite=True)
            if self.full_run:
                session.run(callbacks)
            else:
                session.prepare()
                session.fit(callbacks)
            state = session.state
            trainable, _ = count_parameters(session.model)
            if inspect:
                inspect(trial, session)
        finally:
            console.quiet = quiet
            session = None
            gc.collect()
            if not self.keep_runs and not self.full_run:
                for sub in ("checkpoints", "best"):
                    shutil.rmtree(run_dir / sub, ignore_errors=True)
        result = {"train_seconds": round(state["train_seconds"], 1), "trainable_params": trainable,
                  "steps": state["step"], "best_step": state["best_step"], "best_metric": state["best_metric"],
                  "pruned_at_step": callbacks[0].pruned_at}
        if self.after_run and callbacks[0].pruned_at is None:
            result["result"] = self.after_run(str(run_dir))
        result["trial_seconds"] = round(time.perf_counter() - t0, 1)
        return result


def _child(job: TrialJob, storage_url: str, study_name: str, trial_id: int, out: str) -> None:
    """A trial in its own process: the same Optuna trial, opened from the shared storage."""
    from tunelab.console import quiet_libraries
    from tunelab.search.study import open_storage

    quiet_libraries()
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    try:
        study = optuna.load_study(storage=open_storage(storage_url, heartbeat_seconds=None), study_name=study_name)
        result = {"status": "ok", **job.run(optuna.trial.Trial(study, trial_id))}
    except BaseException as e:  # noqa: BLE001 - any failure is this trial's result
        result = {"status": "failed", "error": _one_line(e)}
    atomic_write_json(Path(out), result)


class TrialFailed(Exception):
    """A trial's child process reported a failure (its message is the child's one-line error)."""


def run_isolated(job: TrialJob, trial: optuna.Trial, storage_url: str) -> dict:
    out = Path(job.raw["output"]["dir"]) / RESULT_FILE
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    proc = mp.get_context("spawn").Process(target=_child, args=(job, storage_url, trial.study.study_name,
                                                                trial._trial_id, str(out)))
    proc.start()
    proc.join()
    try:
        result = json.loads(out.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        result = {"status": "failed", "error": f"the trial's process exited with code {proc.exitcode} and no result"}
    if result.get("status") != "ok":
        raise TrialFailed(result["error"])
    return result


def _one_line(e: BaseException) -> str:
    return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"[:500]


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
    isolate: bool = False  # each trial in a child process (needs storage_url)
    storage_url: str | None = None
    full_run: bool = False
    after_run: Callable | None = None
    progress: object = None  # search.progress.TuneProgress
    inspect: object = None  # called with (trial, session) after training, in-process only (layer_rank)
    tracking: dict = field(default_factory=dict)  # tracking settings of every trial's run (its parent run)

    def job(self, trial: optuna.Trial) -> TrialJob:
        params = suggest(trial, self.space, self.base_method)
        whole = trial.user_attrs.get("config")
        if whole is not None:  # enqueued with its whole config (compare: one per method)
            raw = merge_dicts(whole, nest(params))
        else:
            # values that are not Optuna parameters (a rank pattern, another method) come with an enqueued trial
            fixed = trial.user_attrs.get("overrides") or {}
            own = {"output.dir": str(self.trials_dir / f"trial-{trial.number:04d}")}
            if not self.full_run:
                own.update({"eval.before": False, "train.metric_for_best": self.metric})
            raw = resolve_raw(self.recipe, trial_overrides(self.user, {**params, **fixed}, own))
        if self.tracking:
            raw = merge_dicts(raw, {"tracking": self.tracking})
        validate_config(raw)  # a bad value fails here, in this process, before a child starts
        return TrialJob(raw, self.metric, prune=len(self.objectives) == 1, full_run=self.full_run,
                        after_run=self.after_run, keep_runs=self.keep_runs, quiet=not self.full_run)

    def __call__(self, trial: optuna.Trial):
        job = self.job(trial)
        trial.set_user_attr("run", job.raw["output"]["dir"])
        trial.set_user_attr("worker", f"{socket.gethostname()}:{os.getpid()}")
        try:
            if self.isolate:
                result = run_isolated(job, trial, self.storage_url)
            else:
                result = job.run(trial, self.progress, self.inspect)
        except Exception as e:
            trial.set_user_attr("error", str(e) if isinstance(e, TrialFailed) else _one_line(e))
            raise
        for key in ("train_seconds", "trial_seconds", "trainable_params", "steps", "best_step", "result"):
            if result.get(key) is not None:
                trial.set_user_attr(key, result[key])
        if result["pruned_at_step"] is not None:
            trial.set_user_attr("pruned_at_step", result["pruned_at_step"])
            raise optuna.TrialPruned(f"pruned at step {result['pruned_at_step']}")
        value = result["best_metric"]
        if value is None and self.full_run and result.get("result"):
            # a benchmark run with no validation (a baseline that trains nothing): its test value
            value = result["result"].get("test_metric")
        if value is None:
            raise RuntimeError("the run made no validation (set train.eval_every_steps)")
        values = {"metric": float(value), "trainable_params": float(result["trainable_params"]),
                  "train_seconds": float(result["train_seconds"])}
        out = [values[o] for o in self.objectives]
        return out[0] if len(out) == 1 else out
