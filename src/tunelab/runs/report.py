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


def metric_rows(columns: dict[str, dict], labels: list[str] | None = None) -> list:
    """(row name, getter) pairs: classification's headline + per-class rows, or every numeric metric."""
    if labels:
        return _rows(labels)
    names: list[str] = []
    for m in columns.values():
        names += [k for k, v in m.items() if isinstance(v, (int, float)) and not isinstance(v, bool) and k not in names]
    return [(k, lambda d, k=k: d.get(k)) for k in names]


def results_table(columns: dict[str, dict], labels: list[str] | None = None, title: str = "Test split: before vs after") -> Table:
    """Rich table: one row per metric, one column per evaluation, and the change before -> after."""
    table = Table(title=title, header_style="bold")
    table.add_column("metric")
    for name in columns:
        table.add_column(name, justify="right")
    base = next((c for c in ("before", "zero-shot") if c in columns), None)
    if base and "after" in columns:
        table.add_column("change", justify="right")
    for row_name, getter in metric_rows(columns, labels):
        values = [getter(m) for m in columns.values()]
        cells = [f"{v:.4f}" if v is not None else "-" for v in values]
        if base and "after" in columns:
            b, a = getter(columns[base]), getter(columns["after"])
            cells.append(f"{a - b:+.4f}" if a is not None and b is not None else "-")
        table.add_row(row_name, *cells)
    return table


def _rows(labels):
    rows = [(m, lambda d, m=m: d.get(m)) for m in HEADLINE]
    for lab in labels:
        for k in ("precision", "recall", "f1"):
            rows.append((f"{lab} {k}", lambda d, lab=lab, k=k: d["per_class"][lab][k]))
    return rows


def write_report(run: RunDir, summary: dict, columns: dict[str, dict], labels: list[str] | None = None,
                 samples: list[dict] | None = None) -> Path:
    loss_png = plot_losses(run)
    confusion = {}
    for name in ("before", "after"):
        if name in columns and "confusion_matrix" in columns[name]:
            confusion[name] = plot_confusion(run, columns[name]["confusion_matrix"], labels, f"confusion_{name}",
                                             f"Confusion matrix, {name} training")
    lines = [f"# Run `{run.path.name}`", "", summary.get("description", ""), ""]
    lines += ["## Setup", "", "| | |", "|---|---|"]
    for k in ("model", "architecture", "method", "dataset", "task", "seed", "precision", "train_examples", "trainable_params",
              "total_params", "trainable_percent", "steps", "train_seconds", "peak_rss_mb"):
        if k in summary:
            lines.append(f"| {k} | {summary[k]} |")
    if "machine" in summary:
        from tunelab.runtime import machine_line  # torch: loaded already wherever a run is written

        lines.append(f"| machine | {machine_line(summary['machine'])} |")
    for note in summary.get("data_notes", []):
        lines.append(f"\n- {note}")
    lines += ["", "## Test metrics", "", "| metric | " + " | ".join(columns) + " |", "|---" * (len(columns) + 1) + "|"]
    for row_name, getter in metric_rows(columns, labels):
        cells = [f"{getter(m):.4f}" if getter(m) is not None else "-" for m in columns.values()]
        lines.append(f"| {row_name} | " + " | ".join(cells) + " |")
    lines.append("")
    if samples:
        lines += ["## Sample outputs", ""]
        for i, sample in enumerate(samples, 1):
            lines.append(f"### Example {i}")
            lines.append("")
            for key, value in sample.items():
                text = str(value).replace("\n", " ")
                lines.append(f"- **{key}**: {text[:600]}{'...' if len(text) > 600 else ''}")
            lines.append("")
    if loss_png:
        lines += ["## Loss", "", f"![loss curves](plots/{loss_png.name})", ""]
    for name, png in confusion.items():
        lines += [f"## Confusion matrix ({name})", "", f"![confusion {name}](plots/{png.name})", ""]
    out = run.path / "report.md"
    out.write_text("\n".join(lines), encoding="utf-8")
    return out
