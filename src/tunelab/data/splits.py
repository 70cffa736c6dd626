"""Build the train/validation/test split a run uses. The split depends only on the data and
`data.split.seed`, never on the training seed, so runs with different seeds or methods are compared
on exactly the same examples."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd
from sklearn.model_selection import train_test_split

from tunelab.config.schema import DataConfig
from tunelab.data.catalog import DATASETS
from tunelab.data.files import read_table
from tunelab.errors import TunelabError


@dataclass
class Splits:
    train: pd.DataFrame
    validation: pd.DataFrame
    test: pd.DataFrame
    labels: list[str]
    notes: list[str] = field(default_factory=list)  # what was done to the data, shown to the user

    def sizes(self) -> dict[str, int]:
        return {"train": len(self.train), "validation": len(self.validation), "test": len(self.test)}


def _prepare(df: pd.DataFrame, cfg: DataConfig, source: str, text_col: str, label_col: str) -> pd.DataFrame:
    for col, key in ((text_col, "data.text_column"), (label_col, "data.label_column")):
        if col not in df.columns:
            cols = ", ".join(map(str, df.columns[:12]))
            raise TunelabError(f"{source} has no column '{col}' (it has: {cols}); set {key}")
    df = df[[text_col, label_col]].rename(columns={text_col: "text", label_col: "label"})
    df = df.dropna()
    df = df.assign(text=df["text"].astype(str).str.strip(), label=df["label"].astype(str).str.strip())
    df = df[(df["text"] != "") & (df["label"] != "")].reset_index(drop=True)
    if df.empty:
        raise TunelabError(f"{source} has no usable rows (every text or label is empty); check the file and columns")
    return df


def _stratified_sample(df: pd.DataFrame, n: int | None, seed: int) -> pd.DataFrame:
    if n is None or n >= len(df):
        return df
    counts = df["label"].value_counts()
    if counts.min() < 2 or n < len(counts):
        return df.sample(n=n, random_state=seed).reset_index(drop=True)
    part, _ = train_test_split(df, train_size=n, stratify=df["label"], random_state=seed)
    return part.reset_index(drop=True)


def _split(df: pd.DataFrame, frac: float, seed: int, what: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    counts = df["label"].value_counts()
    if counts.min() < 2:
        rare = ", ".join(counts[counts < 2].index.astype(str)[:5])
        raise TunelabError(f"label(s) {rare} have a single example, too few to split off a {what} set; add examples or drop them")
    try:
        a, b = train_test_split(df, test_size=frac, stratify=df["label"], random_state=seed)
    except ValueError as e:
        raise TunelabError(f"cannot split {len(df)} rows into a {what} set ({e}); add data or change data.split") from None
    return a.reset_index(drop=True), b.reset_index(drop=True)


def subsample(frames: dict, cfg: DataConfig, notes: list[str], sample, kind: str) -> None:
    """Apply data.max_train_samples / max_eval_samples in place and say so in `notes`."""
    for split, limit, key in (("train", cfg.max_train_samples, "max_train_samples"),
                              ("validation", cfg.max_eval_samples, "max_eval_samples"),
                              ("test", cfg.max_eval_samples, "max_eval_samples")):
        n = len(frames[split])
        frames[split] = sample(frames[split], limit, cfg.split.seed)
        if len(frames[split]) < n:
            notes.append(f"{split}: {kind} subsample of {len(frames[split])} of {n} examples (data.{key})")


def load_splits(cfg: DataConfig, labels: list[str] | None = None) -> Splits:
    """Labelled text split into train/validation/test; `labels` fixes the label order (default: sorted)."""
    notes: list[str] = []
    text_col, label_col = cfg.text_column, cfg.label_column
    if cfg.name:
        if cfg.name not in DATASETS:
            import difflib

            close = difflib.get_close_matches(cfg.name, list(DATASETS), n=1)
            hint = f"did you mean '{close[0]}'? " if close else ""
            raise TunelabError(f"unknown dataset '{cfg.name}'; {hint}packaged: {', '.join(DATASETS)} (or set data.path)")
        raw = DATASETS[cfg.name].load()
        text_col, label_col = "text", "label"
        frames = {"all": _prepare(raw, cfg, f"dataset '{cfg.name}'", text_col, label_col)}
    elif cfg.path:
        frames = {"all": _prepare(read_table(cfg.path, cfg.format, cfg.encoding), cfg, f"'{cfg.path}'", text_col, label_col)}
    else:
        frames = {}
        for split, path in (("train", cfg.train_path), ("validation", cfg.validation_path), ("test", cfg.test_path)):
            if path:
                frames[split] = _prepare(read_table(path, cfg.format, cfg.encoding), cfg, f"'{path}'", text_col, label_col)

    seed = cfg.split.seed
    if "all" in frames:
        df = frames.pop("all")
        if cfg.dedupe:
            before = len(df)
            df = df.drop_duplicates("text").reset_index(drop=True)
            if len(df) < before:
                notes.append(f"dropped {before - len(df)} duplicate texts so no example is in two splits")
        rest, frames["test"] = _split(df, cfg.split.test, seed, "test")
        frac = cfg.split.validation / (1 - cfg.split.test)
        frames["train"], frames["validation"] = _split(rest, frac, seed, "validation")
    else:
        if "validation" not in frames:
            frames["train"], frames["validation"] = _split(frames["train"], cfg.split.validation, seed, "validation")
        if "test" not in frames:
            notes.append("no test file: the validation split doubles as test")
            frames["test"] = frames["validation"]

    train_labels = set(frames["train"]["label"])
    for split in ("validation", "test"):
        unseen = sorted(set(frames[split]["label"]) - train_labels)
        if unseen:
            raise TunelabError(
                f"labels in {split} not in train: {', '.join(unseen[:5])}; the model cannot learn them; "
                "add training examples for them or remove them"
            )
    labels = labels or sorted(train_labels)
    missing = sorted(train_labels - set(labels))
    if missing:
        raise TunelabError(f"train has labels not listed in task.labels: {', '.join(missing[:5])}; add them to task.labels")
    if len(train_labels) < 2:
        raise TunelabError(f"train has a single label ('{next(iter(train_labels))}'); classification needs at least two")

    subsample(frames, cfg, notes, _stratified_sample, "stratified")
    return Splits(frames["train"], frames["validation"], frames["test"], list(labels), notes)


def read_labelled_file(cfg: DataConfig, path: str) -> pd.DataFrame:
    """One labelled file with `text` and `label` columns (from data.text_column / data.label_column),
    not split: `tunelab eval RUN --file`."""
    return _prepare(read_table(path, cfg.format, cfg.encoding), cfg, f"'{path}'", cfg.text_column, cfg.label_column)
