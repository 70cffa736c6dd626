"""Live run: progress and ETA, the loss and validation curves and the log tail, refreshed every second
from the run folder while the run trains in its own process; Stop (a checkpoint is kept) and Resume;
the before/after table once it is done."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from tunelab.errors import TunelabError
from tunelab.runs.rundir import RunDir
from tunelab.ui import views


def build(ctx, run_dropdown: gr.Dropdown) -> None:
    with gr.Row():
        refresh = gr.Button("Refresh list", size="sm", elem_id="live-refresh")
    status = gr.Markdown(elem_id="progress")
    with gr.Row():
        loss = gr.LinePlot(x="step", y="loss", title="train loss", height=260, elem_id="loss-plot")
        val = gr.LinePlot(x="step", y="value", color="metric", title="validation", height=260, elem_id="val-plot")
    with gr.Row():
        stop = gr.Button("Stop (keeps a checkpoint)", variant="stop", elem_id="stop")
        resume = gr.Button("Resume", elem_id="resume")
    message = gr.Markdown(elem_id="live-msg")
    table = gr.Dataframe(label="test split: before vs after", interactive=False, elem_id="before-after")
    log = gr.Textbox(label="log", lines=12, max_lines=12, autoscroll=True, elem_id="log")
    timer = gr.Timer(1.0)

    def show(path):
        if not path or not (Path(path) / "config.yaml").is_file():
            return "pick a run, or start one on the New run page", None, None, None, ""
        run = RunDir(Path(path))
        train, validation = views.curves(run)
        return (views.progress(run), train, validation, views.before_after(run.read_json("summary.json")),
                views.log_tail(ctx.jobs.log_path(path)))

    outputs = [status, loss, val, table, log]
    timer.tick(show, run_dropdown, outputs, show_progress="hidden")
    run_dropdown.change(show, run_dropdown, outputs)
    refresh.click(lambda p: gr.update(choices=ctx.run_choices(), value=p), run_dropdown, run_dropdown)

    def act(fn, path):
        if not path:
            return "pick a run first"
        try:
            return fn(path)
        except TunelabError as e:
            return f"**error:** {e}"

    stop.click(lambda p: act(ctx.jobs.stop, p), run_dropdown, message)
    resume.click(lambda p: act(ctx.jobs.resume, p), run_dropdown, message)
