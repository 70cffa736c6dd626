"""New run: a recipe, model, dataset or an uploaded file (column mapping, first rows), task and
method, and the schema's own fields; Check shows the resolved YAML (and a download) or the CLI's
one-line error; Start launches `tunelab train` in its own process and opens the Live page on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import gradio as gr
import yaml

from tunelab.config import load_config
from tunelab.config.schema import DataConfig, EvalConfig, ModelConfig, TrainConfig
from tunelab.config.sections import section_classes
from tunelab.data.catalog import DATASETS
from tunelab.data.files import read_table
from tunelab.errors import TunelabError
from tunelab.models.catalog import CATALOG
from tunelab.recipes import recipe_names
from tunelab.ui.form import as_override, component, field_table, scalar_fields

# The sections shown as fields (every field of train; the few of the others a first run touches).
SECTIONS = [("train", TrainConfig, None), ("model", ModelConfig, ("max_length",)),
            ("data", DataConfig, ("max_train_samples", "max_eval_samples", "dedupe")),
            ("eval", EvalConfig, ("before", "k_shot", "max_samples"))]
OWN_FILE = "(uploaded file)"


def section_fields() -> list[tuple[str, str, object]]:
    out = []
    for prefix, model, only in SECTIONS:
        for name, field in scalar_fields(model).items():
            if only is None or name in only:
                out.append((prefix, name, field))
    return out


def method_yaml(method: str, cfg=None) -> str:
    """The method's section (its own keys, without `name`): the recipe's values when it uses this method."""
    cls = section_classes("method")[method]
    values = cfg.method.model_dump(mode="json") if cfg is not None and cfg.method.name == method else cls().model_dump(mode="json")
    values.pop("name", None)
    return yaml.safe_dump(values, sort_keys=False)


def build(ctx) -> None:
    fields = section_fields()
    default = load_config("sentiment-lora")
    with gr.Row():
        recipe = gr.Dropdown(recipe_names(), value="sentiment-lora", label="recipe", elem_id="recipe")
        task = gr.Dropdown(sorted(section_classes("task")), value=default.task.type, label="task.type", elem_id="task")
        method = gr.Dropdown(sorted(section_classes("method")), value=default.method.name, label="method.name", elem_id="method")
    with gr.Row():
        model = gr.Dropdown(list(CATALOG), value=default.model.name, allow_custom_value=True, elem_id="model",
                            label="model.name", info="a packaged model, a local folder or a hub id")
        dataset = gr.Dropdown([*DATASETS, OWN_FILE], value=default.data.name, label="data.name", elem_id="dataset",
                              info="a packaged dataset, or your file below")
        run_name = gr.Textbox(label="output.name", info="run name (default: the recipe's)", elem_id="run-name")
    with gr.Accordion("Your own data file (CSV, JSONL, JSON, Parquet)", open=False):
        upload = gr.File(label="data.path", file_types=[".csv", ".tsv", ".jsonl", ".json", ".parquet"], elem_id="upload")
        with gr.Row():
            text_col = gr.Dropdown([], label="data.text_column", allow_custom_value=True, elem_id="text-column")
            label_col = gr.Dropdown([], label="data.label_column", allow_custom_value=True, elem_id="label-column")
            columns = gr.Textbox(label="data.columns", elem_id="columns", info=DataConfig.model_fields["columns"].description)
        preview = gr.Dataframe(label="first rows", interactive=False, elem_id="preview")
    with gr.Accordion("Method settings", open=True):
        with gr.Row():
            method_cfg = gr.Code(method_yaml(default.method.name, default), language="yaml", label="method section (YAML)",
                                 elem_id="method-yaml", interactive=True)
            method_doc = gr.Markdown(field_table(section_classes("method")[default.method.name], "method"))
    inputs = []
    with gr.Accordion("Training, data, evaluation", open=False):
        for prefix in dict.fromkeys(p for p, _, _ in fields):
            with gr.Row(equal_height=False):
                for p, name, field in fields:
                    if p == prefix:
                        inputs.append(component(p, name, field, getattr(getattr(default, p), name)))
    extra = gr.Textbox(label="more overrides", lines=3, elem_id="overrides",
                       info="one key=value per line, as on the command line, e.g. train.eval_every_steps=20")
    with gr.Row():
        check = gr.Button("Check config", elem_id="check")
        start = gr.Button("Start training", variant="primary", elem_id="start")
    error = gr.Markdown(elem_id="error")
    resolved = gr.Code(language="yaml", label="resolved config", elem_id="resolved", interactive=False)
    download = gr.File(label="download the resolved YAML", elem_id="yaml-file", interactive=False)

    def on_recipe(name):
        cfg = load_config(name)
        return [cfg.task.type, cfg.method.name, cfg.model.name, cfg.data.name or OWN_FILE, method_yaml(cfg.method.name, cfg),
                field_table(section_classes("method")[cfg.method.name], "method"),
                *[_shown(getattr(getattr(cfg, p), n)) for p, n, _ in fields]]

    recipe.input(on_recipe, recipe, [task, method, model, dataset, method_cfg, method_doc, *inputs])
    method.input(lambda m: (method_yaml(m), field_table(section_classes("method")[m], "method")), method, [method_cfg, method_doc])

    def on_upload(file):
        if not file:
            return gr.update(), gr.update(), None, gr.update()
        df = read_table(file)
        cols = list(df.columns)
        return (gr.update(choices=cols, value=cols[0]), gr.update(choices=cols, value=cols[-1]), df.head(8),
                gr.update(value=OWN_FILE))

    upload.upload(on_upload, upload, [text_col, label_col, preview, dataset])

    def overrides(rcp, task_v, method_v, model_v, dataset_v, file, text_v, label_v, columns_v, method_text, name_v,
                  extra_v, *values) -> list[str]:
        out = [f"task.type={task_v}", f"method.name={method_v}", f"model.name={model_v}"]
        if dataset_v == OWN_FILE:
            if not file:
                raise TunelabError("data.name is '(uploaded file)' but no file is uploaded; upload one or pick a dataset")
            kept = ctx.root / ".ui" / "data" / Path(file).name
            kept.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(file, kept)
            out += [f"data.path={kept}", f"data.text_column={text_v}", f"data.label_column={label_v}"]
            if columns_v.strip():
                out.append(f"data.columns={columns_v.strip()}")
        else:
            out.append(f"data.name={dataset_v}")
        try:
            section = yaml.safe_load(method_text or "") or {}
        except yaml.YAMLError as e:
            raise TunelabError(f"the method section is not valid YAML ({str(e).splitlines()[0]}); fix it or pick the method again") from None
        if not isinstance(section, dict):
            raise TunelabError("the method section must be YAML keys, e.g. `r: 8`")
        out += [as_override(f"method.{k}", v) for k, v in section.items() if k != "name"]
        out += [as_override(f"{p}.{n}", v) for (p, n, _), v in zip(fields, values)]
        if name_v.strip():
            out.append(f"output.name={name_v.strip()}")
        out += [line.strip() for line in (extra_v or "").splitlines() if line.strip()]
        return out

    form = [recipe, task, method, model, dataset, upload, text_col, label_col, columns, method_cfg, run_name, extra, *inputs]

    def resolve(*args):
        try:
            cfg = load_config(args[0], overrides(*args))
        except TunelabError as e:
            return None, f"**error:** {e}"
        return cfg, ""

    def on_check(*args):
        cfg, err = resolve(*args)
        if cfg is None:
            return err, "", None
        text = yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
        path = ctx.root / ".ui" / "resolved" / f"{cfg.output.name or cfg.name}.yaml"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        return "config is valid", text, str(path)

    check.click(on_check, form, [error, resolved, download])

    def on_start(*args):
        cfg, err = resolve(*args)
        if cfg is None:
            return err, gr.update(), gr.update(), gr.update()
        path = ctx.jobs.start_training(cfg)
        ctx.jobs.wait_started(path)
        return (f"started [{path.name}]", gr.update(choices=ctx.run_choices(), value=str(path)), gr.update(selected="live"),
                yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))

    start.click(on_start, form, [error, ctx.live_run, ctx.tabs, resolved])


def _shown(value):
    if isinstance(value, (bool, int, float, str)) or value is None:
        return "" if value is None else value
    return yaml.safe_dump(value, default_flow_style=True).strip()
