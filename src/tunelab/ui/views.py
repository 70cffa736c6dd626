"""What the pages show, read from run folders only (no model loaded): the before/after table, the
curves, progress and ETA, samples. Plain data (pandas frames, markdown), so each is testable without
a browser."""

from __future__ import annotations

import math
from pathlib import Path

import pandas as pd

from tunelab.runs.listing import fmt, headline, list_runs, report_folders, table_rows
from tunelab.runs.rundir import RunDir


def run_choices(root: Path) -> list[tuple[str, str]]:
    """(label, path) of every run under root, newest first."""
    return [(f"{r['name']}  [{r['state']}]", r["path"]) for r in list_runs(root)]


def runs_frame(root: Path) -> pd.DataFrame:
    head, body = table_rows(list_runs(root))
    return pd.DataFrame(body, columns=head)


def report_choices(root: Path) -> list[tuple[str, str]]:
    return [(f"{r['name']}  [{r['kind']}]", r["path"]) for r in report_folders(root)]


def before_after(summary: dict | None) -> pd.DataFrame:
    """Rows: the numeric test metrics; columns: each baseline (majority class, before, k-shot, ...) and
    after, plus the change after - before."""
    if not summary:
        return pd.DataFrame({"test split": ["before and after appear here when the run completes"]})
    cols = summary.get("test") or {}
    names = [k for k in cols if k != "after"] + (["after"] if "after" in cols else [])
    metrics = []
    for c in names:
        for k, v in (cols[c] or {}).items():
            if isinstance(v, (int, float)) and not isinstance(v, bool) and k != "n" and k not in metrics:
                metrics.append(k)
    rows = []
    metric, before, after = headline(summary)
    for m in metrics:
        row = {"metric": m, **{c: fmt((cols[c] or {}).get(m)) for c in names}}
        b, a = (cols.get("before") or {}).get(m), (cols.get("after") or {}).get(m)
        row["change"] = f"{a - b:+.4f}" if isinstance(a, (int, float)) and isinstance(b, (int, float)) else ""
        rows.append(row)
    rows.sort(key=lambda r: r["metric"] != metric)  # the headline metric first
    return pd.DataFrame(rows)


def curves(run: RunDir) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(train loss per step, validation metrics per step) from metrics.jsonl."""
    records = run.metrics()
    # explicit dtypes: an empty frame would be "object", which the plot takes for categories (and keeps)
    train = pd.DataFrame([{"step": r["step"], "loss": r["loss"]} for r in records if r.get("split") == "train"],
                         columns=["step", "loss"]).astype({"step": "int64", "loss": "float64"})
    val = []
    for r in records:
        if r.get("split") == "validation":
            val += [{"step": r["step"], "metric": k, "value": v} for k, v in r.items()
                    if k not in ("step", "split", "n") and isinstance(v, (int, float)) and math.isfinite(v)
                    and (k == "loss" or "f1" in k or k in ("accuracy", "rougeL", "chrf", "bleu", "perplexity"))]
    return train, pd.DataFrame(val, columns=["step", "metric", "value"]).astype({"step": "int64", "value": "float64"})


def total_steps(run: RunDir, records: list[dict]) -> int | None:
    """The run's step budget: the summary's, else from the epoch fraction the loop logs with each step."""
    summary = run.read_json("summary.json")
    if summary:
        return summary["steps"]
    train = [r for r in records if r.get("split") == "train" and r.get("epoch")]
    if not train:
        return None
    cfg = run.config().train
    per_epoch = round(train[-1]["step"] / train[-1]["epoch"])
    total = math.ceil(cfg.epochs * per_epoch)
    return min(total, cfg.max_steps) if cfg.max_steps else total


def progress(run: RunDir) -> str:
    """One line: state, step of total, percent, ETA, last loss, best validation value."""
    records = run.metrics()
    state = run.state
    train = [r for r in records if r.get("split") == "train"]
    step = train[-1]["step"] if train else 0
    total = total_steps(run, records)
    parts = [f"**{state}**", f"step {step}" + (f" / {total} ({100 * step / total:.0f}%)" if total else "")]
    if train and total and state == "running":
        secs = sum(r.get("seconds", 0.0) for r in train) / len(train)
        left = max(0, total - step) * secs
        parts.append(f"ETA {int(left // 60)}:{int(left % 60):02d}")
    if train:
        parts.append(f"loss {train[-1]['loss']:.4f}")
    summary = run.read_json("summary.json")
    if summary:
        metric, before, after = headline(summary)
        parts.append(f"test {metric}: {fmt(before)} -> {fmt(after)}")
    failed = run.read_json("failed.json")
    if failed and state == "failed":
        parts.append(f"error: {failed.get('error')}")
    return " · ".join(parts)


def log_tail(path: Path, lines: int = 12) -> str:
    if not path.is_file():
        return "(no log here: this run was not started from the UI)"
    text = path.read_text(encoding="utf-8", errors="replace").replace("\r", "\n")
    return "\n".join([x for x in text.splitlines() if x.strip()][-lines:])


def samples(run: RunDir) -> pd.DataFrame:
    data = run.read_json("samples.json")
    if not data:
        return pd.DataFrame({"sample outputs": ["(generative tasks show test inputs, references and outputs here)"]})
    return pd.DataFrame(data if isinstance(data, list) else [data])


def plots(folder: Path) -> list[str]:
    d = Path(folder) / "plots"
    return [str(p) for p in sorted(d.glob("*.png"))] if d.is_dir() else []


def export_table(record: dict) -> pd.DataFrame:
    rows = [("folder", record.get("folder", "")), ("base model", record.get("base_model")), ("method", record.get("method")),
            ("dtype", record.get("dtype")), ("quantization", record.get("quantization")),
            ("weights MB", (record.get("sizes_mb") or {}).get("weights")), ("total MB", (record.get("sizes_mb") or {}).get("total")),
            ("max abs logit diff vs run", (record.get("check") or {}).get("max_abs_diff")),
            ("ONNX max abs diff", (record.get("onnx") or {}).get("max_abs_diff")), ("seconds", record.get("seconds"))]
    return pd.DataFrame([{"": k, "value": fmt(v)} for k, v in rows if v is not None])

