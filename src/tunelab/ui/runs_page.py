"""Runs: the table of `tunelab runs`; one run's before/after table, plots, sample outputs and report;
the compare and tune folders with their reports and plots."""

from __future__ import annotations

from pathlib import Path

import gradio as gr

from tunelab.runs.rundir import RunDir
from tunelab.ui import views


def build(ctx) -> None:
    refresh = gr.Button("Refresh", size="sm", elem_id="runs-refresh")
    table = gr.Dataframe(views.runs_frame(ctx.root), label="runs", interactive=False, elem_id="runs-table")
    run = gr.Dropdown(ctx.run_choices(), value=None, label="run", elem_id="runs-run")
    before_after = gr.Dataframe(label="test split: before vs after", interactive=False, elem_id="runs-before-after")
    gallery = gr.Gallery(label="plots", columns=3, height=320, elem_id="runs-plots")
    samples = gr.Dataframe(label="sample outputs", interactive=False, elem_id="runs-samples")
    report = gr.Markdown(elem_id="runs-report")
    gr.Markdown("### Compare and tune")
    folder = gr.Dropdown(views.report_choices(ctx.root), value=None, label="compare / tune folder", elem_id="reports")
    folder_plots = gr.Gallery(label="plots", columns=3, height=320, elem_id="report-plots")
    folder_report = gr.Markdown(elem_id="report-md")

    def show_run(path):
        if not path:
            return None, [], None, ""
        r = RunDir(Path(path))
        text = (r.path / "report.md").read_text(encoding="utf-8") if (r.path / "report.md").is_file() else ""
        # the report's images are files beside it: shown in the gallery instead of broken links
        text = "\n".join(line for line in text.splitlines() if not line.startswith("!["))
        return views.before_after(r.read_json("summary.json")), views.plots(r.path), views.samples(r), text

    def show_folder(path):
        if not path:
            return [], ""
        text = (Path(path) / "report.md").read_text(encoding="utf-8")
        return views.plots(Path(path)), "\n".join(line for line in text.splitlines() if not line.startswith("!["))

    run.change(show_run, run, [before_after, gallery, samples, report])
    folder.change(show_folder, folder, [folder_plots, folder_report])
    refresh.click(lambda: (views.runs_frame(ctx.root), gr.update(choices=ctx.run_choices()),
                           gr.update(choices=views.report_choices(ctx.root))), None, [table, run, folder])
