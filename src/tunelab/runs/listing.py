"""The runs under an output root, as `tunelab runs` and the UI's Runs page show them: one row per run
folder (compare and tune trials included, named by their path under the root), newest first, and the
compare / tune folders beside them."""

from __future__ import annotations

import time
from pathlib import Path

import yaml

from tunelab.runs.rundir import RunDir

SKIP = {"adapter", "best", "checkpoints", "plots", "merged", "export", "wandb", "tensorboard", "mlartifacts"}


def run_folders(root: Path, depth: int = 4) -> list[RunDir]:
    """Every folder under `root` holding a config.yaml (a run), newest first."""
    root, found = Path(root), []

    def walk(d: Path, left: int) -> None:
        if (d / "config.yaml").is_file():
            found.append(RunDir(d))
        if left and not (d / "tune.json").is_file():  # a study's trial folders are rows of its own report
            for sub in sorted(d.iterdir()):
                if sub.is_dir() and sub.name not in SKIP and not sub.name.startswith("."):
                    walk(sub, left - 1)

    if root.is_dir():
        walk(root, depth)
    return sorted(found, key=lambda r: r.config_path.stat().st_mtime, reverse=True)


def headline(summary: dict) -> tuple[str | None, float | None, float | None]:
    """(metric, before, after) on the test split: the task's headline metric (macro-F1, ROUGE-L, ...)
    against the base model ('before', or the first baseline column)."""
    metric = summary.get("primary_metric") or summary.get("metric")
    cols = summary.get("test") or {}
    after = (cols.get("after") or {}).get(metric)
    before_col = cols.get("before") or next((v for k, v in cols.items() if k != "after"), None) or {}
    return metric, before_col.get(metric), after


def run_row(run: RunDir, root: Path) -> dict:
    """What one line of the table says about a run, read from its files only (no model is loaded)."""
    cfg = yaml.safe_load(run.config_path.read_text(encoding="utf-8")) or {}
    summary = run.read_json("summary.json") or {}
    metric, before, after = headline(summary) if summary else (None, None, None)
    metrics = run.metrics() if not summary else []
    steps = summary.get("steps") or max((m.get("step", 0) for m in metrics), default=0)
    seconds = summary.get("wall_seconds")
    data = cfg.get("data") or {}
    return {
        "name": str(run.path.relative_to(root)) if run.path.is_relative_to(root) else str(run.path),
        "path": str(run.path), "task": (cfg.get("task") or {}).get("type"), "model": (cfg.get("model") or {}).get("name"),
        "method": (cfg.get("method") or {}).get("name"), "dataset": data.get("name") or data.get("path") or data.get("train_path"),
        "metric": metric, "before": before, "after": after, "steps": steps, "seconds": seconds,
        "machine": machine_kind(summary.get("machine")), "state": run.state,
        "started": time.strftime("%Y-%m-%d %H:%M", time.localtime(run.config_path.stat().st_mtime)),
    }


def machine_kind(m: dict | None) -> str | None:
    """Where a run's time was measured, short: the GPU's name, or the CPU kind and threads ('amx-bf16 x2')."""
    if not m:
        return None  # runs written before summaries kept their machine
    return m.get("gpu") or f"{m['cpu_kind']} x{m['threads']}"


def list_runs(root: str | Path = "runs") -> list[dict]:
    root = Path(root)
    return [run_row(r, root) for r in run_folders(root)]


def report_folders(root: str | Path = "runs") -> list[dict]:
    """compare and tune folders (compare.json / trials.csv beside a report.md), newest first."""
    root, out = Path(root), []
    if not root.is_dir():
        return out
    for d in sorted(root.iterdir()):
        if not (d / "report.md").is_file() or (d / "config.yaml").is_file():
            continue
        kind = "compare" if (d / "compare.json").is_file() else "tune" if (d / "trials.csv").is_file() else "report"
        out.append({"name": d.name, "path": str(d), "kind": kind, "mtime": (d / "report.md").stat().st_mtime})
    return sorted(out, key=lambda r: r["mtime"], reverse=True)


def fmt(x) -> str:
    return "" if x is None else f"{x:.4g}" if isinstance(x, float) else str(x)


def table_rows(rows: list[dict]) -> tuple[list[str], list[list[str]]]:
    """The columns of `tunelab runs` (and the UI's table): before -> after on the headline metric."""
    head = ["name", "task", "model", "method", "metric", "before -> after", "time", "timed on", "state"]
    body = []
    for r in rows:
        change = f"{fmt(r['before']) or '-'} -> {fmt(r['after'])}" if r["after"] is not None else ""
        secs = r["seconds"]
        when = f"{secs / 60:.1f} min" if secs and secs >= 60 else f"{secs:.0f} s" if secs else (f"{r['steps']} steps" if r["steps"] else "")
        body.append([r["name"], fmt(r["task"]), fmt(r["model"]), fmt(r["method"]), fmt(r["metric"]), change, when,
                     fmt(r.get("machine")), r["state"]])
    return head, body
