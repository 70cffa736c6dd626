"""`tunelab compress RUN`: every way of making a finished run smaller, made and measured in one table.

Rows (each a model folder plain transformers loads, under RUN/compress/models/, made once and reused
by a rerun): the merged fp32 teacher, bf16, torch dynamic int8, NF4; unstructured pruning (magnitude
at three levels, Wanda, magnitude with LoRA recovery); structured pruning (feed-forward neurons,
whole layers, each with and without recovery); students distilled from the teacher against the same
students trained on labels alone (same data, steps and learning rate); and combinations with int8.
Each row is measured in its own process (tunelab/compress/measure.py), one after the other."""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from tunelab.compress.report import write_compress_report
from tunelab.compress.run import distill_run, finished, prune_run
from tunelab.console import console
from tunelab.errors import TunelabError
from tunelab.export.folder import MARKER
from tunelab.runtime import cpu_description, cpu_has_bf16
from tunelab.tasks import make_task
from tunelab.workflows.export import export_run

__all__ = ["compress_run", "distill_run", "prune_run"]  # the CLI's three commands


@dataclass
class Row:
    name: str
    what: str
    folder: str  # under models/
    make: Callable[[Path], object] | None  # writes the folder (None: another row's folder)
    int8: bool = False


def plan(run: Path, recover: int, layers: int, student_layers: int, students: list[str],
         alpha: float, temperature: float, runs: Path) -> list[Row]:
    def export(**kw):
        return lambda out: export_run(str(run), out=str(out), overwrite=True, **kw)

    def pruned(**kw):
        return lambda out: prune_run(str(run), out=str(out), overwrite=True, **kw)

    def student(name: str, a: float, **kw):
        def make(out: Path):
            srun = distill_run(str(run), alpha=a, temperature=temperature, out=str(runs / name), overwrite=True, **kw)
            export_run(str(srun.path), out=str(out), overwrite=True)
        return make

    half = max(1, round(layers / 2)) / layers
    third = max(1, round(layers / 3)) / layers
    rows = [
        Row("fp32", "merged adapter, fp32 (the reference)", "fp32", export()),
        Row("bf16", "bf16 weights", "bf16", export(dtype="bf16")),
        Row("int8", "torch dynamic int8 Linear (at load)", "fp32", None, int8=True),
        Row("nf4", "bitsandbytes NF4 4-bit", "nf4", export(quantize="nf4")),
    ]
    for s in (0.3, 0.5, 0.7):
        rows.append(Row(f"magnitude-{round(100 * s)}", f"unstructured, global magnitude, {round(100 * s)}% of block weights zero",
                        f"magnitude-{round(100 * s)}", pruned(method="magnitude", sparsity=s)))
    rows += [
        Row("wanda-50", "unstructured, Wanda (abs(W) x activation norm), 50%", "wanda-50", pruned(method="wanda", sparsity=0.5)),
        Row("magnitude-50+rec", f"magnitude 50% + {recover}-step LoRA recovery (re-masked)", "magnitude-50-rec",
            pruned(method="magnitude", sparsity=0.5, recover_steps=recover)),
        Row("ffn-50", "structured: half the feed-forward neurons of every block", "ffn-50", pruned(method="structured", ffn=0.5)),
        Row(f"layers-{round(100 * third)}", f"structured: {round(third * layers)} of {layers} blocks removed (least influence)",
            f"layers-{round(100 * third)}", pruned(method="structured", layers=third)),
        Row(f"layers-{round(100 * half)}", f"structured: {round(half * layers)} of {layers} blocks removed (least influence)",
            f"layers-{round(100 * half)}", pruned(method="structured", layers=half)),
        Row("ffn-50+rec", f"ffn-50 + {recover}-step LoRA recovery", "ffn-50-rec",
            pruned(method="structured", ffn=0.5, recover_steps=recover)),
        Row(f"layers-{round(100 * half)}+rec", f"layers-{round(100 * half)} + {recover}-step LoRA recovery",
            f"layers-{round(100 * half)}-rec", pruned(method="structured", layers=half, recover_steps=recover)),
        Row(f"layers-{round(100 * half)}-spaced+rec", f"evenly spaced blocks kept ({layers - round(half * layers)} of {layers}, "
            f"from the first) + {recover}-step LoRA recovery", f"layers-{round(100 * half)}-spaced-rec",
            pruned(method="structured", layers=half, layer_choice="spaced", recover_steps=recover)),
        Row(f"L{student_layers}-distilled", f"student: teacher's {student_layers} layers, KD (alpha {alpha}, T {temperature})",
            f"L{student_layers}-distilled", student(f"L{student_layers}-distilled", alpha, student_layers=student_layers)),
        Row(f"L{student_layers}-labels", "same student, labels only (same budget)", f"L{student_layers}-labels",
            student(f"L{student_layers}-labels", 0.0, student_layers=student_layers)),
    ]
    for s in students:
        slug = s.replace("/", "_")
        rows += [Row(f"{slug}-distilled", f"student {s}, KD (alpha {alpha}, T {temperature})", f"{slug}-distilled",
                     student(f"{slug}-distilled", alpha, student=s)),
                 Row(f"{slug}-labels", f"student {s}, labels only (same budget)", f"{slug}-labels",
                     student(f"{slug}-labels", 0.0, student=s))]
    rows += [
        Row(f"L{student_layers}-distilled+int8", "distilled student + dynamic int8", f"L{student_layers}-distilled", None, int8=True),
        Row(f"layers-{round(100 * half)}+rec+int8", f"layers-{round(100 * half)}+rec + dynamic int8",
            f"layers-{round(100 * half)}-rec", None, int8=True),
    ]
    return rows


def compress_run(run_path: str, *, out: str | None = None, recover_steps: int = 250, student_layers: int | None = None,
                 students: list[str] = (), alpha: float = 0.5, temperature: float = 2.0, only: list[str] | None = None,
                 threads: int = 2) -> dict:
    run = finished(run_path)
    root = Path(out) if out else run.path / "compress"
    models, rows_dir, runs = root / "models", root / "rows", root / "runs"
    for d in (models, rows_dir, runs):
        d.mkdir(parents=True, exist_ok=True)
    fp32 = models / "fp32"
    if not (fp32 / MARKER).is_file():
        export_run(str(run.path), out=str(fp32), overwrite=True)
    layers = json.loads((fp32 / "config.json").read_text(encoding="utf-8")).get("num_hidden_layers", 2)
    k = student_layers or max(1, layers // 2)
    rows = plan(run.path, recover_steps, layers, k, list(students), alpha, temperature, runs)
    if only:
        unknown = [o for o in only if o not in {r.name for r in rows}]
        if unknown:
            raise TunelabError(f"--only: no row named {', '.join(unknown)}; rows: {', '.join(r.name for r in rows)}")
        rows = [r for r in rows if r.name in only or r.name == "fp32"]
    measured, failed = [], {}
    cpu = cpu_description()
    if not cpu_has_bf16() and any(r.name == "bf16" for r in rows):
        # measured on an AVX2-only EPYC: one 2048x2048 bf16 matmul took over 13 minutes (no native bf16)
        rows = [r for r in rows if r.name != "bf16"]
        failed["bf16"] = (f"skipped: this CPU ({cpu['kind']}) has no native bf16 dot products, so bf16 matmuls are "
                          "emulated and far slower than fp32; measure it on an AVX512-BF16 or AMX CPU")
    for i, row in enumerate(rows, 1):
        folder = models / row.folder
        result = rows_dir / f"{row.name.replace('+', '_')}.json"
        console.print(f"[bold]({i}/{len(rows)}) {row.name}[/]: {row.what}")
        try:
            if not (folder / MARKER).is_file():
                if row.make is None:
                    raise TunelabError(f"its model folder {row.folder} was not made")
                row.make(folder)
            if not result.is_file():
                measure(folder, run.path, row.int8, threads, result)
        except TunelabError as e:
            failed[row.name] = str(e)
            console.print(f"[red]{row.name} not measured:[/] {e}")
            continue
        measured.append({"name": row.name, "what": row.what, **json.loads(result.read_text(encoding="utf-8"))})
    task = make_task(run.config())
    record = write_compress_report(root, str(run.path), cpu, measured,
                                   task.higher_is_better.get(task.quality_metric, True), failed)
    console.print(f"Compression table: {root / 'report.md'} ({len(measured)} rows"
                  + (f"; not measured: {', '.join(failed)}" if failed else "") + ")")
    return record


def measure(folder: Path, run: Path, int8: bool, threads: int, out: Path) -> None:
    cmd = [sys.executable, "-m", "tunelab.compress.measure", str(folder), "--run", str(run), "--threads", str(threads),
           "--out", str(out)] + (["--int8"] if int8 else [])
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0 or not out.is_file():
        last = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        raise TunelabError(f"measuring {folder.name} failed: {last}")
