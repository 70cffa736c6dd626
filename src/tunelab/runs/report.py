"""The run's Markdown report with plots (loss curves, confusion matrices), and the before/after
table printed in the terminal."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402
from rich.table import Table  # noqa: E402

from tunelab.runs.rundir import RunDir  # noqa: E402

HEADLINE = ("accuracy", "macro_f1", "weighted_f1")


def plot_losses(run: RunDir) -> Path | None:
    records = run.metrics()
    train = [(r["step"], r["loss"]) for r in records if r.get("split") == "train"]
    val = [(r["step"], r["loss"]) for r in records if r.get("split") == "validation" and r.get("loss") is not None]
    if not train:
        return None
    run.plots_dir.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(7, 4))
    ax.plot(*zip(*train), label="train loss", alpha=0.6, linewidth=1)
    if val:
        ax.plot(*zip(*val), "o-", label="validation loss")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    out = run.plots_dir / "loss.png"
    fig.tight_layout()
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def plot_confusion(run: RunDir, matrix: list[list[int]], labels: list[str], name: str, title: str) -> Path:
    run.plots_dir.mkdir(exist_ok=True)
    fig, ax = plt.subplots(figsize=(1.2 * len(labels) + 2.5, 1.1 * len(labels) + 2))
    im = ax.imshow(matrix, cmap="Blues")
    ax.set_xticks(range(len(labels)), labels, rotation=30, ha="right")
    ax.set_yticks(range(len(labels)), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    peak = max(max(row) for row in matrix) or 1
    for i, row in enumerate(matrix):
        for j, v in enumerate(row):
            ax.text(j, i, str(v), ha="center", va="center", color="white" if v > peak / 2 else "black")
    fig.colorbar(im, ax=ax, fraction=0.046)
    fig.tight_layout()
    out = run.plots_dir / f"{name}.png"
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def results_table(columns: dict[str, dict], labels: list[str]) -> Table:
    """Rich table: one row per metric (headline, then per class), one column per evaluation."""
    table = Table(title="Test split: before vs after", header_style="bold")
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    if "before" in columns and "after" in columns:
        table.add_column("change", justify="right")
    for row_name, getter in _rows(labels):
        values = [getter(m) for m in columns.values()]
        cells = [f"{v:.4f}" if v is not None else "-" for v in values]
        if "before" in columns and "after" in columns:
            b, a = getter(columns["before"]), getter(columns["after"])
            delta = a - b
            cells.append(f"[{'green' if delta >= 0 else 'red'}]{delta:+.4f}[/]")
        table.add_row(row_name, *cells)
    return table


def _rows(labels):
    rows = [(m, lambda d, m=m: d.get(m)) for m in HEADLINE]
    for lab in labels:
        for k in ("precision", "recall", "f1"):
            rows.append((f"{lab} {k}", lambda d, lab=lab, k=k: d["per_class"][lab][k]))
    return rows


def write_report(run: RunDir, summary: dict, columns: dict[str, dict], labels: list[str]) -> Path:
    loss_png = plot_losses(run)
    confusion = {}
    for name in ("before", "after"):
        if name in columns:
            confusion[name] = plot_confusion(run, columns[name]["confusion_matrix"], labels, f"confusion_{name}",
                                             f"Confusion matrix, {name} training")
    lines = [f"# Run `{run.path.name}`", "", summary.get("description", ""), ""]
    lines += ["## Setup", "", "| | |", "|---|---|"]
    for k in ("model", "method", "dataset", "task", "seed", "precision", "train_examples", "trainable_params",
              "total_params", "trainable_percent", "steps", "train_seconds", "peak_rss_mb"):
        if k in summary:
            lines.append(f"| {k} | {summary[k]} |")
    for note in summary.get("data_notes", []):
        lines.append(f"\n- {note}")
    lines += ["", "## Test metrics", "", "| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row_name, getter in _rows(labels):
        cells = [f"{getter(m):.4f}" for m in columns.values()]
        lines.append(f"| {row_name} | " + " | ".join(cells) + " |")
    lines.append("")
    if loss_png:
        lines += ["## Loss", "", f"![loss curves](plots/{loss_png.name})", ""]
    for name, png in confusion.items():
        lines += [f"## Confusion matrix ({name})", "", f"![confusion {name}](plots/{png.name})", ""]
    out = run.path / "report.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
