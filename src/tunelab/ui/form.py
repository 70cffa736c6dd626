"""Form fields made from the config schema (config/schema.py): one component per field of a section,
labelled with its dotted key and its description, its choices from a Literal, and read back as the
same `key=value` overrides the CLI takes, so a bad value fails in `load_config` with the CLI's own
one-line error."""

from __future__ import annotations

import types
import typing
from typing import Literal, get_args, get_origin

import gradio as gr
import yaml
from pydantic import BaseModel


def _inner(annotation):
    """X | None -> (X, True)."""
    if get_origin(annotation) in (typing.Union, types.UnionType):
        args = [a for a in get_args(annotation) if a is not type(None)]
        return (args[0] if len(args) == 1 else annotation), len(args) < len(get_args(annotation))
    return annotation, False


def scalar_fields(model: type[BaseModel]) -> dict[str, object]:
    """The fields of a section a form can show as one input (not nested sections)."""
    out = {}
    for name, field in model.model_fields.items():
        kind, _ = _inner(field.annotation)
        if isinstance(kind, type) and issubclass(kind, BaseModel):
            continue
        out[name] = field
    return out


def component(prefix: str, name: str, field, value):
    """A Gradio input for one schema field, showing `value`."""
    kind, optional = _inner(field.annotation)
    label, info = f"{prefix}.{name}", field.description or None
    elem_id = f"f-{prefix}-{name}".replace(".", "-")
    if get_origin(kind) is Literal:
        return gr.Dropdown(choices=[str(c) for c in get_args(kind)], value=None if value is None else str(value),
                           label=label, info=info, elem_id=elem_id)
    if kind is bool:
        return gr.Checkbox(value=bool(value), label=label, info=info, elem_id=elem_id)
    if kind in (int, float) and not optional:
        return gr.Number(value=value, label=label, info=info, precision=0 if kind is int else None, elem_id=elem_id)
    # optional numbers, strings, lists and dicts: typed as YAML (empty = null), as on the command line
    text = "" if value is None else value if isinstance(value, str) else yaml.safe_dump(value, default_flow_style=True).strip()
    return gr.Textbox(value=text, label=label, info=info, elem_id=elem_id, max_lines=1)


def as_override(key: str, value) -> str:
    """A form value as the CLI's `key=value` (YAML; empty -> null)."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return f"{key}=null"
    if isinstance(value, float) and value.is_integer() and key.endswith(("_steps", "batch_size", "grad_accum", "threads",
                                                                          "keep_checkpoints", "patience")):
        value = int(value)
    if isinstance(value, str):
        return f"{key}={value.strip()}"
    return f"{key}={yaml.safe_dump(value, default_flow_style=True).strip().removesuffix('...').strip()}"


def field_table(model: type[BaseModel], prefix: str) -> str:
    """The fields of a section with their defaults and descriptions, as markdown."""
    rows = ["| key | default | what |", "|---|---|---|"]
    for name, field in model.model_fields.items():
        if name in ("name", "type"):
            continue
        default = field.get_default(call_default_factory=True)
        if isinstance(default, BaseModel):
            continue
        rows.append(f"| `{prefix}.{name}` | `{default}` | {(field.description or '').replace('|', '/')} |")
    return "\n".join(rows)
