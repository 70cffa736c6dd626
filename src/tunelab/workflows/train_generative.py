"""Generative recipe (summarization, QA, translation, chat): the base model is evaluated zero-shot and
k-shot on the test split, trained with the loss on replies only, then evaluated again; the report
shows the metrics and sample outputs side by side."""

from __future__ import annotations

import time

import numpy as np

from tunelab import __version__
from tunelab.config.schema import RunConfig
from tunelab.console import console
from tunelab.data.generative import load_generative_splits
from tunelab.methods.base import count_parameters
from tunelab.runs.io import atomic_write_json
from tunelab.runs.report import results_table, write_report
from tunelab.runs.rundir import RunDir
from tunelab.train.loop import LoopHooks, load_best
from tunelab.train.precision import resolve_device, resolve_precision
from tunelab.workflows.common import build_model, length_stats, peak_rss_mb, print_notes
from tunelab.workflows.train import fit_or_explain, save_adapter


def pick_shots(convs: list[list[dict]], k: int, seed: int) -> list[list[dict]]:
    """k training examples for k-shot prompts: drawn (seeded) from the shorter half of the training
    set so the prompt still fits the context window."""
    if k == 0 or not convs:
        return []
    sizes = np.array([sum(len(m["content"]) for m in c) for c in convs])
    short = np.flatnonzero(sizes <= np.median(sizes))
    pick = np.random.default_rng(seed).choice(short, size=min(k, len(short)), replace=False)
    return [convs[i] for i in pick]


def train_generative(cfg: RunConfig, run: RunDir, *, resume: bool) -> None:
    t_start = time.perf_counter()

    # -- data ---------------------------------------------------------------------------------
    splits = load_generative_splits(cfg.data, cfg.task.type)
    console.print(f"Data: {splits.sizes()}")
    print_notes(splits.notes)

    # -- model + method -----------------------------------------------------------------------
    task, tok, model, method = build_model(cfg, [])
    trainable, total = count_parameters(model)
    arch = "encoder-decoder" if task.seq2seq else "decoder-only"
    console.print(f"Model: {cfg.model.name} ({arch}) + {cfg.method.name}: {trainable:,} trainable of {total:,} "
                  f"parameters ({100 * trainable / total:.3f}%)")
    convs = {split: task.conversations(getattr(splits, split), cfg) for split in ("train", "validation", "test")}
    enc = {split: task.encode(tok, convs[split], cfg, f"Tokenizing {split}") for split in ("train", "validation")}
    stats = length_stats(enc["train"].lengths, cfg.model.max_length)
    console.print(f"Train lengths (tokens): mean {stats['mean']}, p50 {stats['p50']}, p95 {stats['p95']}, "
                  f"max {stats['max']}; {enc['train'].truncated} examples cut to model.max_length")
    device = resolve_device(cfg.train.device)
    precision = resolve_precision(cfg.train.precision, device)
    model.to(device)

    # Generation is the slow part of evaluation: a fixed, seeded subset of the test split.
    n_test = min(len(convs["test"]), cfg.eval.max_samples or len(convs["test"]))
    test_idx = np.sort(np.random.default_rng(cfg.data.split.seed).permutation(len(convs["test"]))[:n_test])
    test_convs = [convs["test"][i] for i in test_idx]
    test_refs = [splits.test["references"].iloc[i] for i in test_idx]

    def evaluate(shots=None, desc="Evaluating") -> dict:
        return task.evaluate(model, tok, test_convs, test_refs, cfg, precision, shots=shots, desc=desc)

    # -- before: zero-shot and k-shot -----------------------------------------------------------
    before = run.read_json("before.json") if resume else None
    if before is None and cfg.eval.before:
        before = {"zero-shot": evaluate(desc="Zero-shot")}
        if cfg.eval.k_shot:
            shots = pick_shots(convs["train"], cfg.eval.k_shot, cfg.seed)
            before[f"{cfg.eval.k_shot}-shot"] = evaluate(shots, desc=f"{cfg.eval.k_shot}-shot")
        run.write_json("before.json", before)

    # -- train --------------------------------------------------------------------------------
    metric = cfg.train.metric_for_best or task.default_metric
    hooks = LoopHooks(
        batches=lambda epoch: task.batches(enc["train"], cfg.train.batch_size,
                                           np.random.default_rng([cfg.seed, epoch]),
                                           cfg.train.group_by_length and not cfg.train.packing),
        collate=lambda idx: task.collate(tok, enc["train"], idx, packing=cfg.train.packing, max_length=cfg.model.max_length),
        loss=task.loss,
        weight=task.loss_weight,
        validate=lambda m: task.teacher_forced_loss(m, tok, enc["validation"], cfg.eval.batch_size, precision),
        metric=metric,
        higher_is_better=task.higher_is_better.get(metric, False),
    )
    state = fit_or_explain(model, cfg, hooks, run, resume, method)

    # -- after ----------------------------------------------------------------------------------
    load_best(run, model, method)
    after = evaluate(desc="After")
    save_adapter(run, method, model, tok)

    columns = {**(before or {}), "after": after}
    primary = task.PRIMARY[cfg.task.type]
    samples = []
    for i in range(min(cfg.eval.show_samples, len(test_convs))):
        sample = {"input": test_convs[i][-2]["content"] if len(test_convs[i]) > 1 else "", "reference": test_refs[i][0]}
        for name, m in columns.items():
            sample[name] = m["predictions"][i]
        samples.append(sample)
    numbers = {name: {k: v for k, v in m.items() if k != "predictions"} for name, m in columns.items()}
    summary = {
        "run": str(run.path), "tunelab": __version__, "description": cfg.description,
        "model": cfg.model.name, "architecture": arch, "method": cfg.method.name,
        "dataset": cfg.data.name or cfg.data.path or cfg.data.train_path, "task": cfg.task.type, "seed": cfg.seed,
        "precision": precision, "splits": splits.sizes(), "train_examples": len(enc["train"]), "data_notes": splits.notes,
        "train_lengths": stats, "trainable_params": trainable, "total_params": total,
        "trainable_percent": round(100 * trainable / total, 4), "steps": state["step"], "best_step": state["best_step"],
        "best_validation": {metric: state["best_metric"]}, "stopped_early": state["stopped_early"],
        "train_seconds": round(state["train_seconds"], 1), "wall_seconds": round(time.perf_counter() - t_start, 1),
        "peak_rss_mb": round(peak_rss_mb(), 1), "primary_metric": primary, "test_examples": n_test,
        "test": numbers, "adapter": str(run.adapter_dir),
    }
    write_report(run, summary, numbers, samples=samples)
    atomic_write_json(run.path / "samples.json", samples)
    console.print(results_table(numbers))
    atomic_write_json(run.summary_path, summary)
    console.print(f"Train time {summary['train_seconds']} s, peak RSS {summary['peak_rss_mb']} MB. "
                  f"Report: {run.path / 'report.md'}  Adapter: {run.adapter_dir}")
