"""Export: merge, cast, quantize and ONNX from a button (`tunelab export` in its own process), then the
export's table and a zip to download."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import gradio as gr

from tunelab.export.folder import MARKER
from tunelab.ui import views
from tunelab.workflows.export import read_record


def build(ctx) -> None:
    with gr.Row():
        run = gr.Dropdown(ctx.finished_choices(), value=None, label="finished run", elem_id="ex-run")
        refresh = gr.Button("Refresh", size="sm", elem_id="ex-refresh")
    with gr.Row():
        dtype = gr.Radio(["fp32", "bf16", "fp16"], value="fp32", label="weights dtype", elem_id="ex-dtype")
        quantize = gr.Radio(["none", "int8-dynamic", "nf4"], value="none", label="quantization", elem_id="ex-quantize")
        onnx = gr.Checkbox(False, label="also ONNX (classification), checked with onnxruntime", elem_id="ex-onnx")
        overwrite = gr.Checkbox(True, label="replace an earlier export of the same kind", elem_id="ex-overwrite")
    go = gr.Button("Merge and export", variant="primary", elem_id="ex-go")
    log = gr.Textbox(label="log", lines=8, max_lines=8, autoscroll=True, elem_id="ex-log")
    table = gr.Dataframe(label="export", interactive=False, elem_id="ex-table")
    download = gr.File(label="download (zip)", interactive=False, elem_id="ex-file")

    refresh.click(lambda: gr.update(choices=ctx.finished_choices()), None, run)

    def export(path, dtype_v, quant_v, onnx_v, overwrite_v):
        if not path:
            yield "pick a finished run first", None, None
            return
        suffix = f"export-{dtype_v}" + ("" if quant_v == "none" else f"-{quant_v}") + ("-onnx" if onnx_v else "")
        out = Path(path) / suffix
        args = ["--merge", "--dtype", dtype_v, "--quantize", quant_v, "--out", str(out)]
        args += (["--onnx"] if onnx_v else []) + (["--overwrite"] if overwrite_v else [])
        proc, log_file = ctx.jobs.start_export(path, args)
        while proc.poll() is None:
            time.sleep(0.5)
            yield views.log_tail(log_file, 12), None, None
        text = views.log_tail(log_file, 12)
        if proc.returncode != 0 or not (out / MARKER).is_file():
            yield text, None, None
            return
        record = {"folder": str(out), **read_record(out)}
        archive = shutil.make_archive(str(ctx.root / ".ui" / "downloads" / f"{Path(path).name}-{suffix}"), "zip", out)
        yield text, views.export_table(record), archive

    go.click(export, [run, dtype, quantize, onnx, overwrite], [log, table, download])
