"""The packaged generative corpora load the real files with the documented sizes and clean content."""

from __future__ import annotations

import importlib.util
import re
import time
from collections import Counter

import pandas as pd
import pytest

from tunelab.data import corpora
from tunelab.data.catalog import DATASETS
from tunelab.errors import TunelabError

_loaded: dict[str, pd.DataFrame] = {}


def load(name: str) -> pd.DataFrame:
    """Each corpus is read once per test session."""
    if name not in _loaded:
        _loaded[name] = DATASETS[name].load()
    return _loaded[name]


def no_empty(df: pd.DataFrame, *cols: str) -> None:
    for col in cols:
        assert df[col].map(lambda s: isinstance(s, str) and s.strip() != "").all(), f"empty {col}"


@pytest.fixture(scope="module")
def bible(tmp_path_factory):
    """The Bible pairs built into a fresh cache folder (a few seconds), so the test covers the build."""
    mp = pytest.MonkeyPatch()
    cache = tmp_path_factory.mktemp("cache")
    mp.setenv("TUNELAB_CACHE", str(cache))
    try:
        yield corpora.bible_en_es(), cache
    finally:
        mp.undo()


def test_catalog_entries_have_task_columns():
    expected = {"summarization": {"source", "target"}, "translation": {"source", "target"},
                "qa": {"question", "answer"}, "chat": {"messages"}}
    names = {"aclsum", "zaragoza-faq", "fanoutqa", "bible-en-es", "faq-sv-en", "chitchat", "chatterbot"}
    assert names <= set(DATASETS)
    for name in names - {"bible-en-es"}:
        entry = DATASETS[name]
        assert expected[entry.task] <= set(load(name).columns), name
        assert entry.licence and "==" in entry.pip
    assert DATASETS["tweets-sentiment"].task == "classification"


def test_aclsum_own_split_and_clean_sources():
    df = load("aclsum")
    assert list(df.columns) == ["source", "target", "split"]
    assert df["split"].value_counts().to_dict() == {"train": 100, "validation": 50, "test": 100}
    no_empty(df, "source", "target")
    words = df["source"].str.split().str.len()
    assert words.median() > 500 and words.min() > 200  # abstract + introduction + conclusion, uncut
    assert (df["target"].str.split().str.len() < words / 5).all()  # summaries are much shorter
    assert not df["source"].str.contains(r"\w , \w| n't\b|\( \w|\w \)").any()  # PTB tokenization undone
    other = corpora.aclsum("challenge")
    assert (other["source"] == df["source"]).all() and (other["target"] != df["target"]).mean() > 0.95
    with pytest.raises(TunelabError, match="aspect"):
        corpora.aclsum("results")


def test_zaragoza_faq():
    df = load("zaragoza-faq")
    assert list(df.columns) == ["question", "answer"] and len(df) == 503
    no_empty(df, "question", "answer")
    assert df["question"].str.endswith("?").mean() > 0.9
    assert df["answer"].str.len().median() > df["question"].str.len().median() * 2
    assert df["question"].str.contains("building permit").any()


def test_fanoutqa_answers_flattened():
    df = load("fanoutqa")
    assert list(df.columns) == ["question", "answer"] and len(df) == 310
    no_empty(df, "question", "answer")
    row = df[df["question"].str.contains("batting hand of each of the first five picks in the 1998")].iloc[0]
    assert row["answer"] == "Pat Burrell: Right; Mark Mulder: Left; Corey Patterson: Left; Jeff Austin: Right; JD Drew: Left"
    assert not df["answer"].str.contains(r"\{'|\['|^(?:True|False)$").any()  # no dict/list/bool reprs
    assert corpora._flatten_answer({"a": ["x", 2], "b": "", "c": False}) == "a: x, 2; c: No"


def test_faq_sv_en_pairs():
    df = load("faq-sv-en")
    assert list(df.columns) == ["source", "target"] and len(df) == 1006
    no_empty(df, "source", "target")
    assert df["source"].str.contains("[åäö]").mean() > 0.5
    assert df["target"].str.contains(r"\b(?:the|is|and|a|to|of|for|can|do|does|I)\b").mean() > 0.95
    assert ("Vad är bygglov?", "What is a bygglov (building permit)?") in set(zip(df["source"], df["target"]))


def test_bible_pairs(bible):
    df, _ = bible
    assert list(df.columns) == ["source", "target"] and 30_000 <= len(df) <= 31_200
    no_empty(df, "source", "target")
    ratio = df["source"].str.len() / df["target"].str.len()
    assert ratio.between(0.5, 2.0).all()
    assert not (df["source"].str.contains("[<>]") | df["target"].str.contains("[<>]")).any()  # OSIS tags stripped
    spanish = Counter(w for t in df["target"].sample(2000, random_state=0) for w in re.findall(r"\w+", t.lower()))
    assert {"de", "y", "que", "la", "el", "los"} <= {w for w, _ in spanish.most_common(15)}
    pairs = dict(zip(df["source"], df["target"]))
    john = "For God so loved the world, that he gave his only born Son, that whoever believes in him should not perish, but have eternal life."
    assert pairs[john].startswith("Porque de tal manera amó Dios al mundo")
    # footnotes are dropped without gluing their neighbours together
    assert any(s.startswith("In the beginning, God created the heavens and the earth.") for s in pairs)
    # Num 13 is numbered differently in the two Bibles: none of its verses may be paired
    assert not df["source"].str.startswith("“Send men, that they may spy out the land of Canaan").any()
    assert not df["source"].str.contains("World English Bible Glossary").any()


def test_bible_cache_is_reused(bible, monkeypatch):
    df, cache = bible
    files = list((cache / "data").iterdir())
    assert [f.name for f in files] == [f"bible-en-es-v{corpora.BIBLE_CACHE_VERSION}.parquet"]  # no temp files left
    mtime = files[0].stat().st_mtime_ns
    monkeypatch.setenv("TUNELAB_CACHE", str(cache))
    monkeypatch.setattr(corpora, "_build_bible", lambda: pytest.fail("rebuilt instead of reading the cache"))
    start = time.perf_counter()
    again = corpora.bible_en_es()
    assert time.perf_counter() - start < 5
    pd.testing.assert_frame_equal(again, df)
    assert files[0].stat().st_mtime_ns == mtime


def test_bible_missing_debian_packages(tmp_path, monkeypatch):
    monkeypatch.setenv("TUNELAB_CACHE", str(tmp_path / "cache"))
    monkeypatch.setattr(corpora, "SWORD_DIR", tmp_path / "sword")
    with pytest.raises(TunelabError, match=r"apt-get install sword-text-web sword-text-sparv"):
        corpora.bible_en_es()


def test_missing_pip_package_names_install_command(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "aclsum" else real(name, *a))
    with pytest.raises(TunelabError, match=r"pip install --no-deps aclsum==0\.1\.2") as err:
        corpora.aclsum()
    assert "\n" not in str(err.value)


def check_conversations(df: pd.DataFrame) -> None:
    assert list(df.columns) == ["messages"]
    for messages in df["messages"]:
        assert len(messages) >= 2
        assert [m["role"] for m in messages] == ["user", "assistant"] * (len(messages) // 2)
        assert all(isinstance(m["content"], str) and m["content"].strip() for m in messages)


def test_chitchat_conversations():
    df = load("chitchat")
    assert 4_000 <= len(df) <= 4_018  # 7,168 in the file, 3,150 of them with a single speaker
    check_conversations(df)
    assert df["messages"].map(len).sum() > 100_000
    assert df["messages"].map(len).median() > 10


def test_chatterbot_conversations():
    df = load("chatterbot")
    assert len(df) == 898  # 2,026 in the files, mostly repeats of the same tech-support dialogues
    check_conversations(df)
    keys = df["messages"].map(lambda ms: tuple(m["content"] for m in ms))
    assert keys.is_unique
    assert any(ms[0]["content"] == "What is AI?" for ms in df["messages"])
    assert len(corpora.chatterbot(dedupe=False)) == 2025  # all but the malformed trivia entry


def test_loaders_are_fast():
    for name in ("aclsum", "zaragoza-faq", "fanoutqa", "faq-sv-en", "chitchat", "chatterbot"):
        start = time.perf_counter()
        DATASETS[name].load()
        assert time.perf_counter() - start < 5, name
