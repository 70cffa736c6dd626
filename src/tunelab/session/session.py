"""The one training pipeline, the same for every task and method:

    session = Session.from_config(cfg)        # or .from_recipe("sentiment-lora", ["method.r=16"]), .resume(path)
    session.load_data()                       # the task's split
    session.build()                           # tokenizer + model with the task's head + the method
    session.prepare()                         # tokenize; the model on its device
    session.evaluate_before()                 # majority class / untrained; zero- and k-shot
    session.fit(callbacks=[...])              # the loop with the standard callbacks + yours
    session.evaluate()                        # best checkpoint on the test split
    session.save()                            # adapter/ in the method's ecosystem format
    session.summary()                         # report.md, plots, summary.json (last: marks it complete)

or all of it: `Session.from_config(cfg).run()`. The task unit (tunelab/tasks/<type>/) and the method
unit (tunelab/methods/<name>/) supply everything that differs; nothing here asks which task or method
it has. Under torchrun (or `accelerate launch`) every process runs the pipeline, the loop shards the batches, and
only the main process writes the run folder or prints.

Experiment tracking (tunelab/tracking/: MLflow, W&B, TensorBoard, as `tracking.backends` says) is a
list of callbacks made here: the loop gives them every step and validation, and the steps above emit
the run's own events to them (`on_run_begin`, `on_run_test` before and after, `on_run_end` with the
files written, `on_run_failed`).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path

from tunelab import __version__
from tunelab.config import load_config
from tunelab.config.schema import RunConfig
from tunelab.console import console, status
from tunelab.errors import NonFiniteLossError, RunPaused, TunelabError
from tunelab.methods import get_method
from tunelab.models.cpu_kernels import cap_kernel_caches, prepare_dropout, use_cpu_kernels, widen_kernel_caches
from tunelab.models.state import count_parameters
from tunelab.runs.io import atomic_write_json
from tunelab.runs.report import results_table, write_report
from tunelab.runs.rundir import RunDir
from tunelab.runtime import (is_main_process, machine, peak_rss_mb, process_rank, resolve_device, resolve_precision,
                             setup_threads)
from tunelab.tasks import make_task
from tunelab.tracking import trackers_for
from tunelab.train.callbacks import load_best, run_callbacks
from tunelab.train.checkpoint import latest_checkpoint
from tunelab.train.loop import Callback, LoopHooks, fit, set_seed


class Session:
    def __init__(self, cfg: RunConfig, run: RunDir, *, resume: bool = False):
        self.cfg, self.run_dir, self.resumed = cfg, run, resume
        self.main = is_main_process()
        if not self.main:
            console.quiet = True  # one process speaks for all
        cap_kernel_caches()  # before the first GEMM of the process (models/cpu_kernels.py)
        setup_threads(cfg.train.threads)
        set_seed(cfg.seed)
        self.device = resolve_device(cfg.train.device)
        self.precision = resolve_precision(cfg.train.precision, self.device)
        self.task = make_task(cfg)
        self.method = get_method(cfg.method.name)(cfg.method)
        self.metric = self.task.metric_for_best()
        self.splits = self.tok = self.model = None
        self.train_stats: dict = {}
        self.before: dict | None = None
        self.after: dict | None = None
        self.state: dict | None = None
        self.t_start = time.perf_counter()
        # Session-level callbacks (the trackers): they see the loop and the run's phases.
        self.callbacks: list[Callback] = trackers_for(cfg, run.path) if self.main else []
        self._begun = False
        console.print(f"[bold]Run[/] {run.path}  (recipe '{cfg.name}', task '{cfg.task.type}', method '{cfg.method.name}', "
                      f"seed {cfg.seed})")

    # -- starting ----------------------------------------------------------------------------------
    @classmethod
    def from_config(cls, cfg: RunConfig, *, overwrite: bool = False) -> Session:
        """A new run folder for `cfg` (refused when output.dir already holds a run, unless `overwrite`)."""
        resolve_device(cfg.train.device)  # a missing GPU fails here, before a run folder is made
        return cls(cfg, _shared_run_dir(cfg, overwrite))

    @classmethod
    def from_recipe(cls, recipe: str | Path | None = None, overrides: list[str] | dict | None = None, *,
                    overwrite: bool = False) -> Session:
        return cls.from_config(load_config(recipe, overrides), overwrite=overwrite)

    @classmethod
    def resume(cls, path: str | Path) -> Session:
        """Continue a run from its latest checkpoint under its saved config."""
        run = RunDir.open(path)
        if run.complete:
            raise TunelabError(f"run '{path}' is already complete; evaluate it with `tunelab eval {path}`")
        return cls(run.config(), run, resume=True)

    # -- the steps ---------------------------------------------------------------------------------
    def load_data(self, splits=None):
        """The task's split, or `splits` given (a federated client's own share of the data)."""
        if splits is not None:
            self.task.use_splits(splits)
            self.splits = splits
        else:
            self.splits = self.task.load_splits()
        labels = f"  labels: {', '.join(self.task.labels)}" if self.task.labels else ""
        console.print(f"Data: {self.splits.sizes()}{labels}")
        for note in self.splits.notes:
            console.print(f"[dim]note:[/] {note}")
        return self.splits

    def build(self):
        """Tokenizer and model: the task's head on the base, then the method applied."""
        if self.splits is None:
            self.load_data()
        cfg, task, method = self.cfg, self.task, self.method
        with status(f"Loading {cfg.model.name}"):
            tok, model = task.load_model(**method.model_load_kwargs(self.device))
        if task.repeats_shapes():
            widen_kernel_caches()  # before any GEMM runs: packed rows repeat their shapes
        model = method.apply(model, head_modules=task.head_modules(model), peft_task_type=task.peft_task_type)
        if cfg.model.cpu_kernels:
            use_cpu_kernels(model)  # again: the method may have added dropout modules (LoRA's)
            if self.device == "cpu":
                prepare_dropout(model)
        if cfg.train.gradient_checkpointing:
            if not getattr(model, "supports_gradient_checkpointing", False):
                raise TunelabError(f"model '{cfg.model.name}' does not support gradient checkpointing; "
                                   "set train.gradient_checkpointing=false")
            # Non-reentrant checkpointing needs no input that requires grad, so it works with frozen embeddings.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        self.tok, self.model = tok, model
        trainable, total = count_parameters(model)
        arch = task.summary_fields().get("architecture")
        heads = task.head_modules(model)
        console.print(f"Model: {cfg.model.name}{f' ({arch})' if arch else ''} + {cfg.method.name}: {trainable:,} trainable "
                      f"of {total:,} parameters ({100 * trainable / total:.3f}%)"
                      + (f"; new, trained in full: {', '.join(heads)}" if heads else ""))
        return model

    def prepare(self) -> dict:
        """Tokenize the splits; put the model on its device."""
        if self.model is None:
            self.build()
        self.train_stats = stats = self.task.prepare(self.tok, self.splits, self.precision)
        console.print(f"Train lengths (tokens): mean {stats['mean']}, p50 {stats['p50']}, p95 {stats['p95']}, "
                      f"max {stats['max']}, truncated {stats['truncated_percent']}%")
        self.model.to(self.device)
        return stats

    def evaluate_before(self) -> dict:
        """The columns the report compares `after` with; kept in before.json so a resumed run has them."""
        if not self.train_stats:
            self.prepare()
        before = self.run_dir.read_json("before.json") if self.resumed else None
        if before is None:
            before = {}
            if self.cfg.eval.before and self.main:
                before = self.task.evaluate_before(self.model)
                self.run_dir.write_json("before.json", before)
        self.before = {**self.task.baselines(), **before}
        self.emit("on_run_test", "before", self.before)
        return self.before

    def emit(self, event: str, *args) -> None:
        """A run event (train/loop.py's `Callback.on_run_*`) to the session's callbacks."""
        if event != "on_run_begin" and not self._begun:
            self.emit("on_run_begin")
        if event == "on_run_begin":
            if self._begun:
                return
            self._begun = True
            args = ({"name": self.run_dir.path.name, "path": str(self.run_dir.path), "resumed": self.resumed,
                     "config": self.cfg.model_dump(mode="json")},)
        for cb in self.callbacks:
            getattr(cb, event)(*args)

    def hooks(self) -> LoopHooks:
        task = self.task
        return LoopHooks(batches=task.batches, collate=task.collate, loss=task.loss, weight=task.loss_weight,
                         validate=task.validate, metric=self.metric,
                         higher_is_better=task.higher_is_better.get(self.metric, True))

    def fit(self, callbacks: list[Callback] = ()) -> dict:
        """Train with the run's standard callbacks (checkpoints, metrics log, best checkpoint, early
        stopping, time budget, console) followed by `callbacks`. A NaN/inf loss becomes one line that
        names the step and the checkpoint kept."""
        if self.before is None:
            self.evaluate_before()
        if process_rank()[1] > 1:
            from accelerate import PartialState

            PartialState().wait_for_everyone()  # the main process may still be evaluating before training
        standard = run_callbacks(self.run_dir, self.cfg.train, self.metric, resume=self.resumed)
        self.emit("on_run_begin")
        try:
            self.state = fit(self.model, self.cfg.train, self.hooks(), [*standard, *self.callbacks, *callbacks],
                             method=self.method)
        except NonFiniteLossError as e:
            ckpt = latest_checkpoint(self.run_dir.checkpoints)
            kept = f"kept the last good checkpoint {ckpt.relative_to(self.run_dir.path)}" if ckpt else "no checkpoint was written yet"
            if self.main:
                self.run_dir.write_json("failed.json", {"error": str(e), "step": e.step,
                                                        "last_checkpoint": str(ckpt) if ckpt else None})
            raise TunelabError(f"training stopped: {e}; {kept}; lower train.lr or check the data") from None
        if self.state.get("paused"):
            raise RunPaused(f"stopped at step {self.state['step']} of {self.state['total_steps']} with a checkpoint; "
                            f"continue with `tunelab train --resume {self.run_dir.path}`")
        return self.state

    def evaluate(self) -> dict:
        """The best validation checkpoint on the test split."""
        load_best(self.run_dir, self.model, self.method)
        self.after = self.task.evaluate(self.model, "Evaluating after")
        self.emit("on_run_test", "after", {"after": self.after})
        return self.after

    def save(self) -> Path:
        """adapter/: the method's own format + tokenizer + label names, written to a temp folder, then renamed."""
        run = self.run_dir
        tmp = run.path / ".adapter.tmp"
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir()
        self.method.save(self.model, tmp)
        self.tok.save_pretrained(tmp)
        if self.task.labels:
            atomic_write_json(tmp / "labels.json", self.task.labels)
        shutil.rmtree(run.adapter_dir, ignore_errors=True)
        os.replace(tmp, run.adapter_dir)
        return run.adapter_dir

    def summary(self) -> dict:
        """report.md with plots, samples.json where the task shows samples, and summary.json (last)."""
        cfg, run, task, state = self.cfg, self.run_dir, self.task, self.state
        columns = {**(self.before or {}), "after": self.after}
        parts = task.report_parts(columns)
        trainable, total = count_parameters(self.model)
        summary = {
            "run": str(run.path), "tunelab": __version__, "description": cfg.description,
            "model": cfg.model.name, "method": cfg.method.name, "dataset": cfg.data.name or cfg.data.path or cfg.data.train_path,
            "task": cfg.task.type, "seed": cfg.seed, "precision": self.precision, **task.summary_fields(),
            "splits": self.splits.sizes(), "train_examples": len(self.splits.train), "data_notes": self.splits.notes,
            "train_lengths": self.train_stats, "trainable_params": trainable, "total_params": total,
            "trainable_percent": round(100 * trainable / total, 4), "steps": state["step"], "best_step": state["best_step"],
            "metric": self.metric, "best_validation": {self.metric: state["best_metric"]},
            "stopped_early": state["stopped_early"], "stop_reason": state.get("stop_reason"),
            "train_seconds": round(state["train_seconds"], 1), "wall_seconds": round(time.perf_counter() - self.t_start, 1),
            "peak_rss_mb": round(peak_rss_mb(), 1), "processes": process_rank()[1], "machine": machine(self.device),
            "test": parts["columns"], "adapter": str(run.adapter_dir), "method_info": self.method.info(),
        }
        write_report(run, summary, **parts)
        if parts.get("samples"):
            atomic_write_json(run.path / "samples.json", parts["samples"])
        console.print(results_table(parts["columns"], parts.get("labels")))
        atomic_write_json(run.summary_path, summary)  # last: its presence marks the run complete
        m = summary["machine"]
        console.print(f"Train time {summary['train_seconds']} s ({self.precision} on {m.get('gpu') or m['cpu_kind']}, "
                      f"{m['threads']} threads), peak RSS {summary['peak_rss_mb']} MB. "
                      f"Report: {run.path / 'report.md'}  Adapter: {run.adapter_dir}")
        files = {"adapter": run.adapter_dir, "plots": run.plots_dir, **{n: run.path / n for n in (
            "report.md", "summary.json", "config.yaml", "metrics.jsonl", "samples.json")}}
        self.emit("on_run_end", summary, {k: v for k, v in files.items() if v.exists()})
        return summary

    def run(self, callbacks: list[Callback] = ()) -> RunDir:
        """Every step, end to end; returns the run folder. While it runs, the folder is held (`tunelab
        runs` shows it as running); a failure or Ctrl-C reaches the trackers before it propagates."""
        with self.run_dir.hold() if self.main else contextlib.nullcontext():
            try:
                self.prepare()
                self.evaluate_before()
                self.fit(callbacks)
                if self.main:
                    self.evaluate()
                    self.save()
                    self.summary()
            except BaseException as e:
                self.emit("on_run_failed", str(e) or type(e).__name__, isinstance(e, (KeyboardInterrupt, RunPaused)))
                raise
        return self.run_dir


def _shared_run_dir(cfg: RunConfig, overwrite: bool) -> RunDir:
    """The run folder: made by the main process; under torchrun the others get its path."""
    rank, world = process_rank()
    if world == 1:
        return RunDir.create(cfg, overwrite=overwrite)
    from accelerate import PartialState
    from accelerate.utils import broadcast_object_list

    state = PartialState(cpu=resolve_device(cfg.train.device) == "cpu")
    holder = [None]
    if state.is_main_process:
        try:
            holder = [str(RunDir.create(cfg, overwrite=overwrite).path)]
        except TunelabError as e:
            holder = [e]
    broadcast_object_list(holder)
    if isinstance(holder[0], Exception):
        raise holder[0]
    return RunDir(Path(holder[0]))
