"""`tunelab train`: config -> data -> model + method -> train -> evaluate before/after -> artifacts."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np

from tunelab import __version__
from tunelab.config.schema import RunConfig
from tunelab.console import console
from tunelab.data import load_splits
from tunelab.errors import NonFiniteLossError, TunelabError
from tunelab.methods.base import count_parameters
from tunelab.metrics.classification import majority_baseline
from tunelab.runs.io import atomic_write_json
from tunelab.runs.report import results_table, write_report
from tunelab.runs.rundir import RunDir
from tunelab.train.checkpoint import latest_checkpoint
from tunelab.train.loop import LoopHooks, fit, load_best, set_seed
from tunelab.train.precision import resolve_device, resolve_precision
from tunelab.workflows.common import build_model, length_stats, peak_rss_mb, print_notes, setup_threads


def train(cfg: RunConfig | None = None, *, resume: str | None = None, overwrite: bool = False) -> RunDir:
    """Run a recipe end to end and return its run folder. With `resume`, continue that run from its
    latest checkpoint under its saved config."""
    if resume:
        run = RunDir.open(resume)
        if run.complete:
            raise TunelabError(f"run '{resume}' is already complete; evaluate it with `tunelab eval {resume}`")
        cfg = run.config()
    resolve_device(cfg.train.device)  # a missing GPU fails here, before a run folder is made
    if not resume:
        run = RunDir.create(cfg, overwrite=overwrite)
    console.print(f"[bold]Run[/] {run.path}  (recipe '{cfg.name}', task '{cfg.task.type}', method '{cfg.method.name}', "
                  f"seed {cfg.seed})")
    setup_threads(cfg)
    set_seed(cfg.seed)
    if cfg.task.type != "classification":
        from tunelab.workflows.train_generative import train_generative

        train_generative(cfg, run, resume=bool(resume))
        return run
    train_classification(cfg, run, resume=bool(resume))
    return run


def train_classification(cfg: RunConfig, run: RunDir, *, resume: bool) -> None:
    """Sentiment and other text classification: before/after accuracy, F1, per-class scores."""
    t_start = time.perf_counter()

    # -- data ---------------------------------------------------------------------------------
    splits = load_splits(cfg.data, cfg.task)
    labels = splits.labels
    console.print(f"Data: {splits.sizes()}  labels: {', '.join(labels)}")
    print_notes(splits.notes)

    # -- model + method -----------------------------------------------------------------------
    task, tok, model, method = build_model(cfg, labels)
    trainable, total = count_parameters(model)
    console.print(f"Model: {cfg.model.name} + {cfg.method.name}: {trainable:,} trainable of {total:,} parameters "
                  f"({100 * trainable / total:.3f}%); new, trained in full: {', '.join(task.head_modules(model))}")
    enc = {split: task.encode(tok, getattr(splits, split), labels, cfg.model.max_length, f"Tokenizing {split}")
           for split in ("train", "validation", "test")}
    stats = length_stats(enc["train"].lengths, cfg.model.max_length)
    console.print(f"Train lengths (tokens): mean {stats['mean']}, p50 {stats['p50']}, p95 {stats['p95']}, "
                  f"max {stats['max']}, truncated {stats['truncated_percent']}%")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    model.to(device)

    def evaluate(split: str, desc: str) -> dict:
        return task.evaluate(model, tok, enc[split], labels, cfg.eval.batch_size, precision, desc)

    # -- before -------------------------------------------------------------------------------
    before = run.read_json("before.json") if resume else None
    if before is None and cfg.eval.before:
        before = evaluate("test", "Evaluating before")
        run.write_json("before.json", before)

    # -- train --------------------------------------------------------------------------------
    metric = cfg.train.metric_for_best or task.default_metric
    hooks = LoopHooks(
        batches=lambda epoch: task.batches(enc["train"], cfg.train.batch_size,
                                           np.random.default_rng([cfg.seed, epoch]), cfg.train.group_by_length),
        collate=lambda idx: task.collate(tok, enc["train"], idx),
        loss=task.loss,
        validate=lambda m: evaluate("validation", "Validating"),
        metric=metric,
        higher_is_better=task.higher_is_better.get(metric, True),
    )
    state = fit_or_explain(model, cfg, hooks, run, resume, method)

    # -- after ----------------------------------------------------------------------------------
    load_best(run, model, method)
    after = evaluate("test", "Evaluating after")
    save_adapter(run, method, model, tok, labels)

    columns = {"majority class": majority_baseline(enc["train"].labels, enc["test"].labels, labels)}
    if before is not None:
        columns["before"] = before
    columns["after"] = after
    summary = {
        "run": str(run.path), "tunelab": __version__, "description": cfg.description,
        "model": cfg.model.name, "method": cfg.method.name, "dataset": cfg.data.name or cfg.data.path or cfg.data.train_path,
        "task": cfg.task.type, "seed": cfg.seed, "precision": precision, "labels": labels,
        "splits": splits.sizes(), "train_examples": len(enc["train"]), "data_notes": splits.notes, "train_lengths": stats,
        "trainable_params": trainable, "total_params": total, "trainable_percent": round(100 * trainable / total, 4),
        "steps": state["step"], "best_step": state["best_step"], "best_validation": {metric: state["best_metric"]},
        "stopped_early": state["stopped_early"],
        "train_seconds": round(state["train_seconds"], 1), "wall_seconds": round(time.perf_counter() - t_start, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1),
        "test": {name: {k: v for k, v in m.items()} for name, m in columns.items()},
        "adapter": str(run.adapter_dir), "method_info": method.info(),
    }
    write_report(run, summary, columns, labels)
    console.print(results_table(columns, labels))
    atomic_write_json(run.summary_path, summary)  # last: its presence marks the run complete
    console.print(f"Train time {summary['train_seconds']} s, peak RSS {summary['peak_rss_mb']} MB. "
                  f"Report: {run.path / 'report.md'}  Adapter: {run.adapter_dir}")


def fit_or_explain(model, cfg: RunConfig, hooks: LoopHooks, run: RunDir, resume: bool, method=None) -> dict:
    """Run the loop; a NaN/inf loss becomes one line that names the step and the checkpoint kept."""
    try:
        return fit(model, cfg.train, hooks, run, resume=resume, method=method)
    except NonFiniteLossError as e:
        ckpt = latest_checkpoint(run.checkpoints)
        kept = f"kept the last good checkpoint {ckpt.relative_to(run.path)}" if ckpt else "no checkpoint was written yet"
        run.write_json("failed.json", {"error": str(e), "step": e.step, "last_checkpoint": str(ckpt) if ckpt else None})
        raise TunelabError(f"training stopped: {e}; {kept}; lower train.lr or check the data") from None


def save_adapter(run: RunDir, method, model, tok, labels: list[str] | None = None) -> None:
    """Write adapter/ (ecosystem format + tokenizer + label names) into a temp folder, then rename."""
    tmp = run.path / ".adapter.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    method.save(model, tmp)
    tok.save_pretrained(tmp)
    if labels:
        atomic_write_json(tmp / "labels.json", labels)
    shutil.rmtree(run.adapter_dir, ignore_errors=True)
    os.replace(tmp, run.adapter_dir)
