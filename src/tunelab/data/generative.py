"""Splits for generative tasks: packaged corpora or user files (JSONL/CSV/...) mapped onto the task's
fields with `data.columns`. Packaged corpora with their own split keep it; the rest is split once at
random with `data.split.seed` (stratifying free text makes no sense)."""

from __future__ import annotations

import json
from collections.abc import Callable

import pandas as pd
from sklearn.model_selection import train_test_split

from tunelab.config.schema import DataConfig
from tunelab.data.catalog import DATASETS
from tunelab.data.files import read_table
from tunelab.data.splits import Splits, subsample
from tunelab.errors import TunelabError

def answers_list(value) -> list[str]:
    """SQuAD-style answers ({"text": [...]}, a list, or one string) -> list of strings."""
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in value if str(v).strip()] if value is not None else []


def messages_list(value) -> list[dict]:
    """A chat row's messages (a list, or JSON text in CSV files) -> [{role, content}, ...]."""
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TunelabError("chat data: the messages column must hold a list of {role, content} (JSON in CSV files)") from None
    if not isinstance(value, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value):
        raise TunelabError("chat data: each row needs messages as a list of {role, content} dicts")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def map_columns(df: pd.DataFrame, need: tuple[str, ...], optional: tuple[str, ...], columns: dict[str, str],
                source: str) -> pd.DataFrame:
    """Rename the user's columns to the task's fields (`data.columns`); fail on a missing needed field."""
    rename = {}
    for name in (*need, *optional):
        col = columns.get(name, name)
        if col in df.columns:
            rename[col] = name
    df = df.rename(columns=rename)
    missing = [f for f in need if f not in df.columns]
    if missing:
        cols = ", ".join(map(str, df.columns[:12]))
        raise TunelabError(f"{source} has no column for '{missing[0]}' (it has: {cols}); "
                           f"map it with data.columns.{missing[0]}=<your column>")
    return df


def text_fields(df: pd.DataFrame, need: tuple[str, ...], optional: tuple[str, ...] = (), keep: tuple[str, ...] = ()) -> pd.DataFrame:
    """The task's text fields only (plus `keep` and a `split` column), stripped; rows with an empty
    needed field dropped."""
    fields = [f for f in (*need, *optional) if f in df.columns]
    extra = [c for c in (*keep, "split") if c in df.columns]
    df = df[fields + extra].copy()
    for f in fields:
        df[f] = df[f].fillna("").astype(str).str.strip()
    return df[(df[list(need)] != "").all(axis=1)]


def _sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    return df if n is None or n >= len(df) else df.sample(n=n, random_state=seed).reset_index(drop=True)


def load_generative_splits(cfg: DataConfig, task: str, prepare: Callable[[pd.DataFrame, dict, str], pd.DataFrame]) -> Splits:
    """Splits of a generative task's data. `prepare(df, columns, source)` is the task's own: it maps the
    columns onto its fields and adds `references` (the task unit knows its fields)."""

    def _prepare(df: pd.DataFrame, columns: dict, source: str) -> pd.DataFrame:
        df = prepare(df, columns, source).reset_index(drop=True)
        if df.empty:
            raise TunelabError(f"{source} has no usable rows for task '{task}' (all empty)")
        return df

    notes: list[str] = []
    seed = cfg.split.seed
    if cfg.name:
        if cfg.name not in DATASETS:
            import difflib

            close = difflib.get_close_matches(cfg.name, list(DATASETS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise TunelabError(f"unknown dataset '{cfg.name}'; {hint}packaged: {', '.join(DATASETS)} (or set data.path)")
        entry = DATASETS[cfg.name]
        if entry.task != task:
            raise TunelabError(f"dataset '{cfg.name}' is for task '{entry.task}', not '{task}'; set task.type={entry.task}")
        frames = {"all": _prepare(entry.load(), {}, f"dataset '{cfg.name}'")}
    elif cfg.path:
        frames = {"all": _prepare(read_table(cfg.path, cfg.format, cfg.encoding), cfg.columns, f"'{cfg.path}'")}
    else:
        frames = {}
        for split, path in (("train", cfg.train_path), ("validation", cfg.validation_path), ("test", cfg.test_path)):
            if path:
                frames[split] = _prepare(read_table(path, cfg.format, cfg.encoding), cfg.columns, f"'{path}'")

    if "all" in frames:
        df = frames.pop("all")
        if "split" in df.columns and set(df["split"]) >= {"train", "test"}:
            for split in ("train", "validation", "test"):
                frames[split] = df[df["split"] == split].drop(columns="split").reset_index(drop=True)
            notes.append("using the dataset's own train/validation/test split")
        else:
            df = df.drop(columns="split", errors="ignore")
            rest, frames["test"] = train_test_split(df, test_size=cfg.split.test, random_state=seed)
            frames["train"], frames["validation"] = train_test_split(
                rest, test_size=cfg.split.validation / (1 - cfg.split.test), random_state=seed)
    if frames.get("validation") is None or frames["validation"].empty:
        frames["train"], frames["validation"] = train_test_split(frames["train"], test_size=cfg.split.validation, random_state=seed)
    if "test" not in frames or frames["test"].empty:
        notes.append("no test data: the validation split doubles as test")
        frames["test"] = frames["validation"]
    frames = {k: v.reset_index(drop=True) for k, v in frames.items()}
    subsample(frames, cfg, notes, _sample, "random")
    return Splits(frames["train"], frames["validation"], frames["test"], [], notes)
