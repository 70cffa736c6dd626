"""`tunelab ui`: one Gradio app over the whole journey (New run, Live run, Runs, Playground, Export),
mounted in FastAPI (the same server stack as `tunelab serve`; Gradio brings the widgets, the
streaming chat and live updates LlamaBoard users know). Every page reads and writes ordinary run
folders under one root; training and export run as `tunelab` processes (ui/jobs.py)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import gradio as gr

from tunelab.ui import export_page, live, new_run, playground, runs_page, views
from tunelab.ui.jobs import Jobs


@dataclass
class Context:
    """What the pages share: the runs root, the job launcher, and the widgets one page updates on
    another (Start opens the Live page on the new run)."""

    root: Path
    jobs: Jobs
    tabs: gr.Tabs | None = None
    live_run: gr.Dropdown | None = None

    def run_choices(self) -> list[tuple[str, str]]:
        return views.run_choices(self.root)

    def finished_choices(self) -> list[tuple[str, str]]:
        return [(label, path) for label, path in self.run_choices() if (Path(path) / "summary.json").is_file()]


def build_blocks(root: str | Path) -> tuple[gr.Blocks, Context]:
    root = Path(root).resolve()
    root.mkdir(parents=True, exist_ok=True)
    ctx = Context(root, Jobs(root))
    with gr.Blocks(title="tunelab", analytics_enabled=False) as blocks:
        gr.Markdown(f"## tunelab  \nruns in `{root}`")
        with gr.Tabs() as tabs:
            ctx.tabs = tabs
            with gr.Tab("New run", id="new"):
                new_slot = gr.Column()
            with gr.Tab("Live run", id="live"):
                ctx.live_run = gr.Dropdown(ctx.run_choices(), value=None, label="run", elem_id="live-run")
                live.build(ctx, ctx.live_run)
            with gr.Tab("Runs", id="runs"):
                runs_page.build(ctx)
            with gr.Tab("Playground", id="playground"):
                playground.build(ctx)
            with gr.Tab("Export", id="export"):
                export_page.build(ctx)
        with new_slot:  # built last: its Start button updates the Live page's widgets
            new_run.build(ctx)
    return blocks, ctx
