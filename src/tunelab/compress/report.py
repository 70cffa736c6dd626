"""The compression table: every way of making the run smaller, measured the same way (measure.py),
against the fp32 teacher; the Pareto front of quality vs single-input latency is marked in the table
and drawn. report.md + self-contained report.html + compress.json."""

from __future__ import annotations

from pathlib import Path

from tunelab.runs.io import atomic_write_json
from tunelab.runs.tables import save_figure, write_table_report

HEAD = ["variant", "what was done", "parameters", "non-zero", "weights MB", "1 input ms", "speed-up",
        "batch ms", "batch speed-up", "peak RSS MB", "metric", "vs fp32", "Pareto"]


def pareto(rows: list[dict], higher_is_better: bool) -> set[str]:
    """Names of the rows no other row beats on both latency (lower) and quality."""
    def better(a, b):  # a dominates b
        qa, qb = (a["value"], b["value"]) if higher_is_better else (-a["value"], -b["value"])
        return a["latency_single_ms"] <= b["latency_single_ms"] and qa >= qb and (
            a["latency_single_ms"] < b["latency_single_ms"] or qa > qb)
    return {r["name"] for r in rows if not any(better(o, r) for o in rows if o is not r)}


def write_compress_report(root: Path, run: str, cpu: dict, rows: list[dict], higher_is_better: bool,
                          failed: dict[str, str]) -> dict:
    ref = next((r for r in rows if r["name"] == "fp32"), None)
    front = pareto(rows, higher_is_better) if rows else set()
    metric = rows[0]["metric"] if rows else ""
    table = []
    for r in rows:
        speed = ref["latency_single_ms"] / r["latency_single_ms"] if ref else None
        speed_b = ref["latency_batch_ms"] / r["latency_batch_ms"] if ref else None
        change = r["value"] - ref["value"] if ref else None
        if ref and metric == "perplexity":
            change_s = f"{100 * change / ref['value']:+.1f}%"
        else:
            change_s = f"{100 * change:+.2f} pts" if change is not None else ""
        r.update(speedup=speed, batch_speedup=speed_b, change=change, pareto=r["name"] in front)
        table.append([r["name"], r["what"], f"{r['parameters']:,}", f"{r['nonzero_parameters']:,}", f"{r['weights_mb']:.1f}",
                      f"{r['latency_single_ms']:.1f}", f"{speed:.2f}x" if speed else "", f"{r['latency_batch_ms']:.1f}",
                      f"{speed_b:.2f}x" if speed_b else "", f"{r['peak_rss_mb']:.0f}",
                      f"{r['value']:.4f}" if metric != "perplexity" else f"{r['value']:.2f}", change_s,
                      "*" if r["pareto"] else ""])
    unit = rows[0]["latency_unit"] if rows else ""
    intro = [f"Run: {run}", f"CPU: {cpu.get('model')} ({cpu.get('kind')}; flags {', '.join(cpu.get('flags', []))}; "
             f"torch capability {cpu.get('torch_capability')}), {rows[0]['threads'] if rows else '?'} threads.",
             f"Latency: median {unit} time of one test input and of a batch of {rows[0]['batch'] if rows else '?'} "
             "(after warm-up, each row in its own process; peak RSS is that process's). Metric: the test split's "
             f"{metric}; 'vs fp32' is the change against the fp32 merged teacher. Pareto: no other row is both "
             "faster on one input and better.",
             "Unstructured pruning leaves its zeros in dense tensors: dense CPU matmuls do the same work and the "
             "safetensors file is as large as the dense one, so its rows show no speed-up by construction."]
    extra = [f"Not measured: {name}: {why}" for name, why in failed.items()]
    plots = [_plot(root, rows, metric)] if rows else []
    write_table_report(root, "Smaller and faster: every way, one table", intro, HEAD, table, plots, extra)
    record = {"run": run, "cpu": cpu, "metric": metric, "higher_is_better": higher_is_better, "rows": rows,
              "not_measured": failed}
    atomic_write_json(root / "compress.json", record)
    return record


def _plot(root: Path, rows: list[dict], metric: str) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import matplotlib.ticker

    fig, ax = plt.subplots(figsize=(7.5, 5))
    for r in rows:
        ax.scatter(r["latency_single_ms"], r["value"], color="tab:red" if r["pareto"] else "tab:blue", zorder=3)
        ax.annotate(r["name"], (r["latency_single_ms"], r["value"]), fontsize=7, xytext=(3, 3), textcoords="offset points")
    front = sorted((r for r in rows if r["pareto"]), key=lambda r: r["latency_single_ms"])
    ax.plot([r["latency_single_ms"] for r in front], [r["value"] for r in front], color="tab:red", lw=1, label="Pareto front")
    ax.set_xscale("log")
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())  # 8 ms, not 8 x 10^0
    ax.set_xlabel(f"latency of one input, ms ({rows[0]['latency_unit']}, log scale)")
    ax.set_ylabel(f"test {metric}")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, root, "pareto")
