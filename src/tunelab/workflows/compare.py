"""`tunelab compare RECIPE --methods full,head,lora,...`: the same recipe (data, split, seed, budget)
trained once per method, each in its own run folder under one compare folder, then one report.

The recipe may hold a `compare:` section (ignored by `tunelab train`):

    compare:
      methods: [full, head, lora]          # default for --methods
      method:  {lora: {r: 8, alpha: 16}}   # each method's config section (default: its defaults)
      train:   {full: {lr: 5.0e-5}}        # per-method train overrides (learning rates differ by method)
      time_budget_minutes: null            # optional: stop each method's training after this long
      latency_batch: 32                    # inference latency: median ms per batch of this many test texts

Compare is a grid over methods on the same sweep runner as `tunelab tune` (tunelab/search/): one
Optuna study in the compare folder (study.db), one enqueued trial per method with its whole config.
Each trial runs in a child process: its peak memory is its own, and a crash (even a segfault) is
reported as that method's failure while the others still run. The child runs the whole pipeline of
`tunelab train`, then reloads the saved adapter from disk (as `tunelab eval` does) and times
inference with it.
"""

from __future__ import annotations

import copy
import functools
import hashlib
import json
import statistics
import time
from pathlib import Path

import optuna
from pydantic import ValidationError

from tunelab.config.load import merge_dicts, parse_overrides, read_recipe, validate_config
from tunelab.config.tune import CompareConfig
from tunelab.console import console
from tunelab.errors import TunelabError
from tunelab.runs.io import atomic_write_json
from tunelab.runs.rundir import RunDir
from tunelab.runs.tables import write_table_report
from tunelab.search.runner import run_variant
from tunelab.search.study import open_storage, open_study, storage_url
from tunelab.search.trial import Objective
from tunelab.tracking import ParentRun
from tunelab.tracking.base import numbers

ADAPTER_FILES = ("adapter_model.safetensors", "adapter_config.json", "method_weights.safetensors", "tunelab_method.json")


def method_raw(raw: dict, spec: CompareConfig, name: str, out_dir: Path) -> dict:
    """The recipe for one method: its own method section and train overrides, its own run folder."""
    r = copy.deepcopy(raw)
    r.pop("compare", None)
    r["method"] = {**spec.method.get(name, {}), "name": name}
    r["train"] = merge_dicts(r.get("train") or {}, spec.train.get(name, {}))
    if spec.time_budget_minutes:
        r["train"]["max_minutes"] = spec.time_budget_minutes
    r["output"] = {**(r.get("output") or {}), "dir": str(out_dir / name)}
    return r


def compare(recipe: str | None, methods: list[str] | None = None, overrides: list[str] | None = None,
            out: str | None = None) -> Path:
    raw, _ = read_recipe(recipe)
    if overrides:
        raw = merge_dicts(raw, parse_overrides(overrides))
    try:
        spec = CompareConfig.model_validate(raw.get("compare") or {})
    except ValidationError as e:
        first = e.errors()[0]
        raise TunelabError(f"compare.{'.'.join(map(str, first['loc']))}: {first['msg'].lower()}") from None
    names = methods or spec.methods
    from tunelab.methods import method_names

    unknown = [m for m in names if m not in method_names()]
    if unknown:
        raise TunelabError(f"unknown method(s) {', '.join(unknown)}; choose from: {', '.join(method_names())}")
    root = Path(out) if out else Path((raw.get("output") or {}).get("root", "runs")) / f"compare-{raw['name']}-{time.strftime('%Y%m%d-%H%M%S')}"
    raws = {m: method_raw(raw, spec, m, root) for m in names}
    # Validate every config before spending time on the first training.
    configs = {m: validate_config(r) for m, r in raws.items()}
    from tunelab.tasks import make_task

    task = make_task(configs[names[0]])
    metric = task.metric_for_best()
    root.mkdir(parents=True, exist_ok=True)
    # One tracked parent run; each method's training is its child (the children get its id in their config).
    parent = ParentRun(configs[names[0]], root.name, "compare", root)
    raws = {m: merge_dicts(r, {"tracking": parent.child_settings()}) for m, r in raws.items()}
    optuna.logging.set_verbosity(optuna.logging.ERROR)
    url = storage_url(None, root)
    study = open_study(open_storage(url, heartbeat_seconds=20), f"compare-{raw['name']}",
                       ["maximize" if task.higher_is_better.get(metric, True) else "minimize"],
                       optuna.samplers.RandomSampler(seed=configs[names[0]].seed), optuna.pruners.NopPruner(),
                       hashlib.sha256(json.dumps(raws, sort_keys=True, default=str).encode()).hexdigest()[:16])
    objective = Objective(None, [], {}, metric, ["metric"], names[0], root, isolate=True, storage_url=url, full_run=True,
                          after_run=functools.partial(method_result, latency_batch=spec.latency_batch,
                                                      repeats=spec.latency_repeats))
    console.print(f"[bold]Compare[/] {len(names)} methods -> {root}")
    results = []
    for i, m in enumerate(names, 1):
        console.print(f"\n[bold]== {i}/{len(names)}: {m}[/]")
        t0 = time.perf_counter()
        trial = run_variant(study, objective, m, config=raws[m])
        res = {"method": m, "run": str(root / m), "wall_seconds": round(time.perf_counter() - t0, 1)}
        if trial.state == optuna.trial.TrialState.COMPLETE:
            res.update(trial.user_attrs["result"])
        else:
            res.update(status="failed", error=trial.user_attrs.get("error") or f"trial {trial.state.name.lower()}")
            console.print(f"[red]{m} failed:[/] {res['error']}")
        results.append(res)
        atomic_write_json(root / "compare.json", _document(raw, names, results, metric))  # partial results survive
        parent.log(numbers({k: v for k, v in res.items() if k != "loss_curve"}, m))
    doc = _document(raw, names, results, metric)
    atomic_write_json(root / "compare.json", doc)
    write_compare_report(root, doc)
    parent.finish({n: root / n for n in ("report.md", "report.html", "compare.json", "plots") if (root / n).exists()})
    print_table(doc)
    console.print(f"\nReport: {root / 'report.md'}  {root / 'report.html'}  {root / 'compare.json'}")
    return root


def _document(raw: dict, names: list[str], results: list[dict], metric: str) -> dict:
    machines = [r["machine"] for r in results if r.get("machine")]
    return {"recipe": raw.get("name"), "model": (raw.get("model") or {}).get("name"), "methods": names,
            "metric": metric, "machine": machines[0] if machines else None, "results": results}


def method_result(run_path: str, latency_batch: int, repeats: int) -> dict:
    """After a method's run (in its trial's process): its numbers for the table, with inference timed
    on the adapter reloaded from disk."""
    run = RunDir.open(run_path)
    summary = run.read_json("summary.json")
    metric = summary["metric"]  # the recipe's train.metric_for_best, or the task's own default
    losses = [(r["step"], r["loss"]) for r in run.metrics() if r.get("split") == "train"]
    return {
        "status": "ok", "trainable_params": summary["trainable_params"], "total_params": summary["total_params"],
        "trainable_percent": summary["trainable_percent"], "metric": metric,
        "test_metric": summary["test"]["after"][metric], "test_accuracy": summary["test"]["after"].get("accuracy"),
        "train_seconds": summary["train_seconds"], "steps": summary["steps"], "peak_rss_mb": summary["peak_rss_mb"],
        "adapter_bytes": adapter_bytes(run.adapter_dir), **measure_latency(run_path, latency_batch, repeats),
        "machine": summary.get("machine"),
        "lr": run.config().train.lr, "method_info": summary.get("method_info") or {}, "loss_curve": losses,
    }


def adapter_bytes(adapter_dir: Path) -> int:
    """Size on disk of what the method saved (weights + its config), without tokenizer and labels."""
    return sum((adapter_dir / f).stat().st_size for f in ADAPTER_FILES if (adapter_dir / f).is_file())


def measure_latency(run_path: str, batch: int, repeats: int) -> dict:
    """Median wall time of one forward pass over `batch` test texts, with the adapter reloaded from disk."""
    import torch

    from tunelab.runtime import autocast
    from tunelab.session import Predictor

    predictor = Predictor.from_run(run_path)
    texts = predictor.task.probe_inputs(batch)  # the run's own test inputs, as the model reads them
    tok = predictor.tokenizer
    enc = tok(texts, truncation=True, max_length=predictor.cfg.model.max_length, padding=True, return_tensors="pt")
    device = next(predictor.model.parameters()).device
    enc = {k: v.to(device) for k, v in enc.items() if k in ("input_ids", "attention_mask")}
    if predictor.seq2seq:
        enc["decoder_input_ids"] = enc["input_ids"][:, :1]
    times = []
    with torch.no_grad():
        for i in range(repeats + 1):
            t0 = time.perf_counter()
            with autocast(predictor.precision, device.type):
                predictor.model(**enc)
            if i:  # the first call warms up
                times.append((time.perf_counter() - t0) * 1000)
    return {"latency_ms": round(statistics.median(times), 2), "latency_batch": len(texts),
            "latency_precision": predictor.precision, "reload_ok": True}


# -- report ------------------------------------------------------------------------------------

def _fmt_bytes(n) -> str:
    if n is None:
        return "-"
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1024 or unit == "GB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return str(n)


def table_rows(doc: dict) -> list[list[str]]:
    rows = []
    for r in doc["results"]:
        if r.get("status") != "ok":
            rows.append([r["method"], "failed", "-", "-", "-", "-", "-", "-", r.get("error", "")])
            continue
        rows.append([r["method"], f"{r['trainable_params']:,}", f"{r['trainable_percent']:.3f}%", f"{r['test_metric']:.4f}",
                     f"{r['train_seconds']:.0f} s", f"{r['peak_rss_mb']:.0f} MB", _fmt_bytes(r["adapter_bytes"]),
                     f"{r['latency_ms']:.1f} ms", _notes(r)])
    return rows


def _notes(r: dict) -> str:
    info = r.get("method_info") or {}
    notes = [f"lr {r['lr']:g}"]
    if "base_mb_quantized" in info:
        notes.append(f"base {info['base_mb_full_precision']:.0f} MB fp32 -> {info['base_mb_quantized']:.0f} MB quantized")
    return "; ".join(notes)


def headers(doc: dict) -> list[str]:
    return ["method", "trainable params", "trainable %", f"test {doc['metric']}", "train time", "peak memory (RSS)",
            "adapter on disk", "latency / batch", "notes"]


def write_compare_report(root: Path, doc: dict) -> None:
    intro = [f"Same data, split, seed and budget for every method; metric: test {doc['metric']}. "
             "Latency: median of repeated forward passes over one batch of test texts, adapter reloaded from disk."]
    if doc.get("machine"):
        from tunelab.runtime import machine_line

        intro.append(f"Times measured on: {machine_line(doc['machine'])}.")
    write_table_report(root, f"Compare: {doc['recipe']} ({doc['model']})", intro, headers(doc), table_rows(doc),
                       plot_compare(root, doc))


def plot_compare(root: Path, doc: dict) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    ok = [r for r in doc["results"] if r.get("status") == "ok"]
    if not ok:
        return []
    (root / "plots").mkdir(exist_ok=True)
    out = []
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in ok:
        ax.scatter(max(r["trainable_percent"], 1e-4), r["test_metric"])
        ax.annotate(r["method"], (max(r["trainable_percent"], 1e-4), r["test_metric"]), textcoords="offset points", xytext=(4, 4), fontsize=8)
    ax.set_xscale("log")
    ax.set_xlabel("trainable parameters (% of total, log scale)")
    ax.set_ylabel(f"test {doc['metric']}")
    ax.grid(alpha=0.3, which="both")
    fig.tight_layout()
    out.append(root / "plots" / "metric_vs_trainable.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(8, 4.5))
    for r in ok:
        curve = r.get("loss_curve") or []
        if not curve:
            continue
        steps, losses = zip(*curve)
        k = max(1, len(losses) // 30)  # moving average over ~1/30 of the run
        smooth = [sum(losses[max(0, i - k + 1): i + 1]) / len(losses[max(0, i - k + 1): i + 1]) for i in range(len(losses))]
        ax.plot(steps, smooth, label=r["method"], linewidth=1.2)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("train loss (moving average)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    out.append(root / "plots" / "loss_curves.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out


def print_table(doc: dict) -> None:
    from rich.table import Table

    t = Table(header_style="bold")
    for h in headers(doc):
        t.add_column(h)
    for row in table_rows(doc):
        t.add_row(*row)
    console.print(t)


