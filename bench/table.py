"""bench/results/README.md from the workload JSON files: per size and side, median and min-max of each
measure, the tunelab/baseline ratios, and the issue's done-when checks."""

from __future__ import annotations

import json
import statistics
from pathlib import Path

COLUMNS = [  # (record key, header, format, scale)
    ("examples_per_s", "examples/s", "{:.2f}", 1),
    ("tokens_per_s", "real tokens/s", "{:.0f}", 1),
    ("train_seconds", "time (s)", "{:.1f}", 1),
    ("wall_seconds", "wall incl. load (s)", "{:.1f}", 1),
    ("peak_rss_mb", "peak RSS (MB)", "{:.0f}", 1),
    ("peak_gpu_mb", "peak GPU memory (MB)", "{:.0f}", 1),
    ("flops_per_s", "model GFLOP/s", "{:.0f}", 1e-9),
    ("mfu", "MFU (%)", "{:.1f}", 100),
    ("val_macro_f1", "val macro-F1", "{:.2f}", 1),
    ("val_accuracy", "val accuracy", "{:.2f}", 1),
    ("val_loss", "val loss", "{:.4f}", 1),
    ("rougeL", "ROUGE-L", "{:.2f}", 1),
]
# The targets: (measure, tunelab / baseline at least) per baseline side.
TARGET = {"hf": ("examples_per_s", 2.0), "hf-expert": ("examples_per_s", 1.5), "trl": ("tokens_per_s", 2.0),
          "trl-expert": ("tokens_per_s", 1.5), "loop": ("tokens_per_s", 3.0)}
QUALITY = {"sentiment": ("val_macro_f1", "val macro-F1 points", "{:+.2f}"), "chat": ("val_loss", "val loss", "{:+.4f}"),
           "generation": ("rougeL", "ROUGE-L", "{:+.2f}")}


def machine_line(m: dict) -> str:
    cap = (f"; torch's kernels capped by {' '.join(f'{k}={v}' for k, v in m['isa_cap'].items())}"
           if m.get("isa_cap") else "")
    return (f"Machine: {m['cpu']} (kind {m.get('cpu_kind', '?')}, torch CPU capability "
            f"{m.get('torch_capability', '?')}{cap}), flags {' '.join(m['cpu_flags'])}, {m['cores']} cores.")


def med(records, key):
    vals = [r[key] for r in records if r.get(key) is not None]
    return statistics.median(vals) if vals else None


def cell(records, key, fmt, scale) -> str:
    vals = [r[key] * scale for r in records if r.get(key) is not None]
    if not vals:
        return ""
    m = fmt.format(statistics.median(vals))
    return m if len(vals) == 1 else f"{m} ({fmt.format(min(vals))}-{fmt.format(max(vals))})"


def workload_section(res: dict) -> list[str]:
    name, recs = res["workload"], res["records"]
    bases = res.get("baselines", [res["baseline"]])
    sizes = sorted({r["size"] for r in recs})
    cols = [c for c in COLUMNS if any(r.get(c[0]) is not None for r in recs)]
    lines = [f"## {name} (baselines: {', '.join(bases)}; {res['repeats']} repeats, interleaved; {res['date']})", "",
             *([machine_line(res["machine"]), ""] if res.get("machine") else []),
             "| size | side | precision | steps | " + " | ".join(c[1] for c in cols) + " |",
             "|---|---|---|---|" + "---|" * len(cols)]
    for size in sizes:
        for impl in (*bases, "tunelab"):
            rs = [r for r in recs if r["size"] == size and r["impl"] == impl]
            if rs:
                lines.append(f"| {size} | {impl} | {rs[0]['precision']} | {rs[0].get('steps', '')} | "
                             + " | ".join(cell(rs, *c[:1], c[2], c[3]) for c in cols) + " |")
    mem, mem_name = ("peak_gpu_mb", "peak GPU memory") if res.get("device") == "cuda" else ("peak_rss_mb", "peak RSS")
    qkey, qname, qfmt = QUALITY[name]
    for base in bases:
        key, target = TARGET[base]
        lines += ["", f"Ratios of medians, tunelab / {base}:", "",
                  f"| size | {key} | {qname}, tunelab - {base} | {mem_name} | time per epoch, tunelab (s) |",
                  "|---|---|---|---|---|"]
        for size in sizes:
            t = [r for r in recs if r["size"] == size and r["impl"] == "tunelab"]
            b = [r for r in recs if r["size"] == size and r["impl"] == base]
            if t and b:
                q = (qfmt.format(med(t, qkey) - med(b, qkey)) if med(t, qkey) is not None and med(b, qkey) is not None
                     else "")
                lines.append(f"| {size} | {med(t, key) / med(b, key):.2f}x (target >= {target}x) | {q} | "
                             f"{med(t, mem) / med(b, mem):.2f} | {med(t, 'train_seconds'):.1f} |")
    if len(sizes) > 1:
        t = {s: med([r for r in recs if r["size"] == s and r["impl"] == "tunelab"], "train_seconds") for s in sizes}
        # Examples differ in length (chat conversations a lot), so the real-token count grows by its own factor.
        n = {s: med([r for r in recs if r["size"] == s and r["impl"] == "tunelab"], "real_tokens") for s in sizes}
        growth = ", ".join(f"{a}->{b}: x{t[b] / t[a]:.2f} time for x{b / a:.2f} data"
                           + (f" (x{n[b] / n[a]:.2f} real tokens)" if n[a] and n[b] else "")
                           for a, b in zip(sizes, sizes[1:]))
        lines += ["", f"tunelab time growth with data size: {growth}."]
    return lines + [""]


def write_readme(out_dir: Path) -> None:
    # Only the workload results: export.json and serve_load.json in the same folder have their own tables.
    results = [r for r in (json.loads(p.read_text()) for p in sorted(out_dir.glob("*.json"))) if "gemm_peak_gflops" in r]
    lines = ["# tunelab benchmark results", "",
             "Written by `make bench` (`python -m bench.run`); see bench/README.md for the method and the FLOP "
             "formula. Each cell: median (min-max) over the repeats; one fresh process per run.", "",
             *([machine_line(results[0]["machine"]), ""] if results and results[0].get("machine") else []),
             *([f"Time of each workload's last run (driver wall clock, GEMM peaks included): "
                + ", ".join(f"{r['workload']} {r['minutes']:.1f} min" for r in results)
                + f"; all {sum(r['minutes'] for r in results):.1f} min.", ""] if results and all("minutes" in r for r in results)
               else [])]
    for res in results:
        g = res["gemm_peak_gflops"]
        med_peak = "".join(f", median of timed repeats {p} {max(x[p + '_median'] for x in res['gemm']):.0f}"
                           for p in ("fp32", "bf16") if all(x.get(p + "_median") is not None for x in res["gemm"]))
        bf16 = f"{g['bf16']:.0f} GFLOP/s" if "bf16" in g else "not measured (" + next(
            (x["bf16_skipped"] for x in res["gemm"] if x.get("bf16_skipped")), "no fast bf16 kernel") + ")"
        shape = "8192x8192 on the CUDA GPU" if res.get("device") == "cuda" else "2048x2048, 2 threads"
        lines.append(f"GEMM peak measured in the {res['workload']} run (best of 10, {shape}): fp32 "
                     f"{g['fp32']:.0f} GFLOP/s, bf16 {bf16}{med_peak}. MFU uses the best. Versions: "
                     + ", ".join(f"{k} {v}" for k, v in res["records"][0]["versions"].items()) + ".")
    lines.append("")
    for res in results:
        lines += workload_section(res)
    (out_dir / "README.md").write_text("\n".join(lines))
