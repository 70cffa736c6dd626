import pandas as pd
import pytest

from tunelab.config.schema import DataConfig
from tunelab.data import load_splits
from tunelab.errors import TunelabError


def cfg(**kw) -> DataConfig:
    return DataConfig(**kw)


def test_packaged_split_is_fixed_stratified_and_disjoint():
    a = load_splits(cfg())
    b = load_splits(cfg())
    assert a.labels == ["negative", "neutral", "positive"]
    for split in ("train", "validation", "test"):
        assert getattr(a, split)["text"].tolist() == getattr(b, split)["text"].tolist()
    texts = [set(getattr(a, s)["text"]) for s in ("train", "validation", "test")]
    assert not (texts[0] & texts[1]) and not (texts[0] & texts[2]) and not (texts[1] & texts[2])
    full = pd.concat([a.train, a.validation, a.test])["label"].value_counts(normalize=True)
    test = a.test["label"].value_counts(normalize=True)
    assert (full - test).abs().max() < 0.01  # stratified
    assert sum(a.sizes().values()) == 38158 - 915  # every row used once, exact duplicates dropped


def test_split_seed_changes_split_and_subsample_is_stratified():
    a = load_splits(cfg(max_train_samples=900))
    assert len(a.train) == 900
    counts = a.train["label"].value_counts()
    assert abs(counts["negative"] / 900 - 16186 / 38158) < 0.02
    b = load_splits(cfg(split={"seed": 7}))
    assert set(b.test["text"]) != set(load_splits(cfg()).test["text"])


def test_user_csv_with_column_mapping(tweets_csv):
    s = load_splits(cfg(path=str(tweets_csv), text_column="tweet", label_column="sentiment"))
    assert s.labels == ["negative", "neutral", "positive"]
    assert sum(s.sizes().values()) == 900


def test_jsonl_and_parquet(tmp_path, tweets_csv):
    df = pd.read_csv(tweets_csv)
    df.to_json(tmp_path / "d.jsonl", orient="records", lines=True)
    df.to_parquet(tmp_path / "d.parquet")
    for name in ("d.jsonl", "d.parquet"):
        s = load_splits(cfg(path=str(tmp_path / name), text_column="tweet", label_column="sentiment"))
        assert sum(s.sizes().values()) == 900


def test_missing_file():
    with pytest.raises(TunelabError, match=r"data file '.*nope.csv' does not exist"):
        load_splits(cfg(path="nope.csv"))


def test_missing_text_or_label_column(tweets_csv):
    with pytest.raises(TunelabError, match=r"has no column 'text' \(it has: tweet, sentiment\); set data.text_column"):
        load_splits(cfg(path=str(tweets_csv)))
    with pytest.raises(TunelabError, match=r"has no column 'label'.*set data.label_column"):
        load_splits(cfg(path=str(tweets_csv), text_column="tweet"))


def test_empty_dataset(tmp_path):
    (tmp_path / "empty.csv").write_text("text,label\n")
    with pytest.raises(TunelabError, match="no usable rows"):
        load_splits(cfg(path=str(tmp_path / "empty.csv")))
    (tmp_path / "blank.csv").write_text("")
    with pytest.raises(TunelabError, match="is empty"):
        load_splits(cfg(path=str(tmp_path / "blank.csv")))


def test_labels_in_test_not_in_train(tmp_path):
    pd.DataFrame({"text": [f"t{i}" for i in range(20)], "label": ["a", "b"] * 10}).to_csv(tmp_path / "tr.csv", index=False)
    pd.DataFrame({"text": ["x", "y"], "label": ["a", "zebra"]}).to_csv(tmp_path / "te.csv", index=False)
    with pytest.raises(TunelabError, match="labels in test not in train: zebra"):
        load_splits(cfg(train_path=str(tmp_path / "tr.csv"), test_path=str(tmp_path / "te.csv")))


def test_unreadable_encoding_suggests_setting_it(tmp_path):
    (tmp_path / "latin.csv").write_bytes("text,label\ncaf\xe9 ok,a\nbad,b\n".encode("latin-1"))
    with pytest.raises(TunelabError, match=r"not valid utf-8 text \(byte 0xe9.*data.encoding=latin-1"):
        load_splits(cfg(path=str(tmp_path / "latin.csv")))


def test_unknown_packaged_dataset():
    with pytest.raises(TunelabError, match="did you mean 'tweets-sentiment'"):
        load_splits(cfg(name="tweet-sentiment"))
