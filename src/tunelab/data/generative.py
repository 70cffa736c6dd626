"""Splits for generative tasks: packaged corpora or user files (JSONL/CSV/...) mapped onto the task's
fields with `data.columns`. Packaged corpora with their own split keep it; the rest is split once at
random with `data.split.seed` (stratifying free text makes no sense)."""

from __future__ import annotations

import json

import pandas as pd
from sklearn.model_selection import train_test_split

from tunelab.config.schema import DataConfig
from tunelab.data.catalog import DATASETS
from tunelab.data.files import read_table
from tunelab.data.splits import Splits, subsample
from tunelab.errors import TunelabError

FIELDS = {
    "summarization": ("source", "target"),
    "translation": ("source", "target"),
    "qa": ("question", "answer"),
    "chat": ("messages",),
}
OPTIONAL = {"qa": ("context",)}


def _answers(value) -> list[str]:
    """SQuAD-style answers ({"text": [...]}, a list, or one string) -> list of strings."""
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, str):
        value = [value]
    return [str(v) for v in value if str(v).strip()] if value is not None else []


def _messages(value) -> list[dict]:
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError:
            raise TunelabError("chat data: the messages column must hold a list of {role, content} (JSON in CSV files)") from None
    if not isinstance(value, list) or not all(isinstance(m, dict) and {"role", "content"} <= set(m) for m in value):
        raise TunelabError("chat data: each row needs messages as a list of {role, content} dicts")
    return [{"role": str(m["role"]), "content": str(m["content"])} for m in value]


def _prepare(df: pd.DataFrame, task: str, columns: dict[str, str], source: str) -> pd.DataFrame:
    need, optional = FIELDS[task], OPTIONAL.get(task, ())
    rename = {}
    for field in (*need, *optional, *(("answers",) if task == "qa" else ())):
        col = columns.get(field, field)
        if col in df.columns:
            rename[col] = field
    df = df.rename(columns=rename)
    if task == "qa" and "answer" not in df.columns and "answers" in df.columns:
        df = df.assign(answer=df["answers"].map(lambda a: (_answers(a) or [""])[0]))
    missing = [f for f in need if f not in df.columns]
    if missing:
        cols = ", ".join(map(str, df.columns[:12]))
        raise TunelabError(f"{source} has no column for '{missing[0]}' (it has: {cols}); "
                           f"map it with data.columns.{missing[0]}=<your column>")
    if task == "chat":
        df = df.assign(messages=df["messages"].map(_messages))
        df = df[df["messages"].map(lambda m: len(m) >= 2 and m[-1]["role"] == "assistant")]
        df = df.assign(references=df["messages"].map(lambda m: [m[-1]["content"]]))
    else:
        keep = [f for f in (*need, *optional) if f in df.columns]
        extra = ["answers"] if "answers" in df.columns else []
        df = df[keep + extra + (["split"] if "split" in df.columns else [])].copy()
        for f in keep:
            df[f] = df[f].fillna("").astype(str).str.strip()
        df = df[(df[list(need)] != "").all(axis=1)]
        if task == "qa":
            refs = df["answers"].map(_answers) if "answers" in df.columns else df["answer"].map(lambda a: [a])
            df = df.assign(references=[r or [a] for r, a in zip(refs, df["answer"])])
        else:
            df = df.assign(references=df["target"].map(lambda t: [t]))
    df = df.reset_index(drop=True)
    if df.empty:
        raise TunelabError(f"{source} has no usable rows for task '{task}' (all empty)")
    return df


def _sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    return df if n is None or n >= len(df) else df.sample(n=n, random_state=seed).reset_index(drop=True)


def load_generative_splits(cfg: DataConfig, task: str) -> Splits:
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
        frames = {"all": _prepare(entry.load(), task, {}, f"dataset '{cfg.name}'")}
    elif cfg.path:
        frames = {"all": _prepare(read_table(cfg.path, cfg.format, cfg.encoding), task, cfg.columns, f"'{cfg.path}'")}
    else:
        frames = {}
        for split, path in (("train", cfg.train_path), ("validation", cfg.validation_path), ("test", cfg.test_path)):
            if path:
                frames[split] = _prepare(read_table(path, cfg.format, cfg.encoding), task, cfg.columns, f"'{path}'")

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
