"""Load a recipe: YAML file (or packaged recipe name) + dotted overrides -> validated RunConfig."""

from __future__ import annotations

import copy
import difflib
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from tunelab.config.schema import MethodConfig, RunConfig, TaskConfig
from tunelab.config.sections import KINDS, section_classes
from tunelab.console import console
from tunelab.errors import TunelabError

DEFAULT_RECIPE = "sentiment-lora"

# Names other tools (HF Trainer, peft, Axolotl) use for our keys: a user coming from them gets the
# right suggestion even where spelling similarity would point elsewhere.
SYNONYMS = {
    "learning_rate": "lr", "num_train_epochs": "epochs", "num_epochs": "epochs", "rank": "r", "lora_r": "r",
    "lora_alpha": "alpha", "lora_dropout": "dropout", "per_device_train_batch_size": "batch_size",
    "micro_batch_size": "batch_size", "gradient_accumulation_steps": "grad_accum", "lr_scheduler_type": "scheduler",
    "lr_scheduler": "scheduler", "warmup": "warmup_ratio", "max_seq_length": "max_length", "sequence_len": "max_length",
    "model_name_or_path": "name", "base_model": "name", "output_dir": "dir", "bf16": "precision", "fp16": "precision",
    "per_device_eval_batch_size": "batch_size", "text_field": "text_column", "label_field": "label_column",
}


def parse_overrides(items: list[str]) -> dict[str, Any]:
    """`["method.r=16", "train.lr=3e-4"]` -> nested dict. Values are parsed as YAML scalars/lists."""
    out: dict[str, Any] = {}
    for item in items:
        if "=" not in item:
            raise TunelabError(f"override '{item}' is not key=value; write e.g. train.lr=3e-4")
        key, _, raw = item.partition("=")
        if not key or any(not part for part in key.split(".")):
            raise TunelabError(f"override '{item}' has an empty key; write e.g. method.r=16")
        try:
            value = yaml.safe_load(raw) if raw.strip() else None
        except yaml.YAMLError:
            value = raw
        # YAML reads "3e-4" as a string (no dot); numbers are what the user meant.
        if isinstance(value, str):
            try:
                value = float(value) if any(c in value for c in "eE.") else value
            except ValueError:
                pass
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
            if not isinstance(node, dict):
                raise TunelabError(f"override '{item}' conflicts with another override of '{part}'")
        node[leaf] = value
    return out


def merge_dicts(base: dict, extra: dict) -> dict:
    out = copy.deepcopy(base)
    for k, v in extra.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = merge_dicts(out[k], v)
        else:
            out[k] = v
    return out


def read_recipe(recipe: str | Path | None) -> tuple[dict, str]:
    """Return (raw dict, source description). `recipe` is a YAML path or a packaged recipe name."""
    from tunelab.recipes import find_recipe

    path = find_recipe(recipe or DEFAULT_RECIPE)
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise TunelabError(f"recipe {path} is not valid YAML{where}: {getattr(e, 'problem', e)}") from None
    if not isinstance(raw, dict):
        raise TunelabError(f"recipe {path} must be a mapping of sections (model:, data:, ...)")
    raw.setdefault("name", path.stem)
    return raw, str(path)


def load_config(recipe: str | Path | None = None, overrides: list[str] | dict | None = None) -> RunConfig:
    return validate_config(resolve_raw(recipe, overrides))


def resolve_raw(recipe: str | Path | None = None, overrides: list[str] | dict | None = None) -> dict:
    """The recipe with the overrides applied, as a plain dict (not validated yet)."""
    raw, _ = read_recipe(recipe)
    if overrides:
        extra = overrides if isinstance(overrides, dict) else parse_overrides(overrides)
        raw = merge_dicts(_switched(raw, extra), extra)
    return raw


def _switched(raw: dict, extra: dict) -> dict:
    """An override that picks another method or task (`method.name=nblora`) keeps the recipe's keys the
    new unit shares and drops the rest with one note line; the override's own keys are checked as
    usual, so one the new unit lacks is still an error."""
    raw = copy.deepcopy(raw)
    for kind, key in KINDS.items():
        new = (extra.get(kind) or {}).get(key) if isinstance(extra.get(kind), dict) else None
        old_section = raw.get(kind)
        if new is None or not isinstance(old_section, dict) or old_section.get(key, _default_of(kind)) == new:
            continue
        cls = section_classes(kind).get(new)
        if cls is None:
            continue  # validation names the unknown choice
        dropped = [k for k in old_section if k != key and k not in cls.model_fields]
        raw[kind] = {k: v for k, v in old_section.items() if k not in dropped}
        if dropped:
            console.print(f"[dim]note:[/] {kind}.{key}={new}: dropped the recipe's {', '.join(f'{kind}.{k}' for k in dropped)} "
                          f"(not keys of '{new}')")
    return raw


def _default_of(kind: str) -> str:
    return {"method": MethodConfig, "task": TaskConfig}[kind]().model_dump()[KINDS[kind]]


def validate_config(raw: dict) -> RunConfig:
    raw = copy.deepcopy(raw)
    for kind, base in (("method", MethodConfig), ("task", TaskConfig)):
        raw[kind] = _section(kind, raw.get(kind), base)
    try:
        return RunConfig.model_validate(raw)
    except ValidationError as e:
        raise TunelabError(_explain(e, RunConfig)) from None


def _section(kind: str, value, base: type[BaseModel]) -> BaseModel:
    """The plug-in section `kind` validated by the class its name/type picks."""
    key = KINDS[kind]
    value = value if value is not None else {}
    if isinstance(value, BaseModel):
        value = value.model_dump()
    if not isinstance(value, dict):
        raise TunelabError(f"{kind}: must be a section such as {{{key}: {base().model_dump()[key]}}}")
    name = value.get(key, base().model_dump()[key])
    classes = section_classes(kind)
    if name not in classes:
        raise TunelabError(_unknown_choice(f"{kind}.{key}", name, sorted(classes)))
    cls = classes[name]
    try:
        return cls.model_validate(value)
    except ValidationError as e:
        raise TunelabError(_explain(e, cls, prefix=f"{kind}.")) from None


def _unknown_choice(key: str, value: Any, choices: list[str]) -> str:
    close = difflib.get_close_matches(str(value), choices, n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    return f"{key}: unknown value '{value}'; {hint}choose one of: {', '.join(choices)}"


def _fields_at(model: type[BaseModel], loc: tuple) -> list[str]:
    """Valid field names of the (nested) section at `loc`."""
    cls: Any = model
    for part in loc:
        field = getattr(cls, "model_fields", {}).get(part)
        if field is None:
            return []
        ann = field.annotation
        cls = ann if isinstance(ann, type) and issubclass(ann, BaseModel) else None
        if cls is None:
            return []
    return list(cls.model_fields)


def _closest(key: str, valid: list[str]) -> list[str]:
    if SYNONYMS.get(key) in valid:
        return [SYNONYMS[key]]
    initials = "".join(w[0] for w in key.split("_") if w)
    if len(initials) > 1 and initials in valid:
        return [initials]
    return difflib.get_close_matches(key, valid, n=1, cutoff=0.5)


def _explain(err: ValidationError, model: type[BaseModel], prefix: str = "") -> str:
    msgs = []
    for e in err.errors():
        loc = tuple(p for p in e["loc"] if not isinstance(p, int))
        key = prefix + ".".join(str(p) for p in loc)
        if e["type"] == "extra_forbidden":
            valid = _fields_at(model, loc[:-1])
            close = _closest(str(loc[-1]), valid)
            hint = f"did you mean '{prefix + '.'.join([*map(str, loc[:-1]), close[0]])}'?" if close else (
                f"valid keys here: {', '.join(valid)}"
            )
            msgs.append(f"unknown key '{key}'; {hint}")
        elif e["type"] == "literal_error":
            msgs.append(f"{key}: {e['msg'].lower()}, got {e['input']!r}")
        elif e["type"] == "value_error":
            msgs.append(e["msg"].removeprefix("Value error, "))
        else:
            msgs.append(f"{key}: {e['msg'].lower()}, got {e['input']!r}" if key else e["msg"])
    return "; ".join(msgs)
