"""Text-pair classification, e.g. answer selection: does this answer fit this question? Built on the
classification unit (same head, metrics, majority-class and untrained before-columns, report); only
the data and the encoding differ: two texts per example, tokenized as a pair (BERT's [SEP] and
segment ids).

Data:
- a packaged question/answer dataset (`data.name=zaragoza-faq`): each question with its own answer
  ("match") and `task.negatives` answers of other questions ("mismatch"). Questions are split into
  train/validation/test first, and negatives are drawn within each split, so no question or answer
  text crosses splits;
- a user file with `data.text_column`, `data.text_pair_column` and `data.label_column`: labelled
  pairs, split stratified; without a label column, every row is a matching pair and negatives are
  drawn as above.
At inference a single string "first ||| second" is read as a pair.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import pandas as pd
from pydantic import Field
from sklearn.model_selection import train_test_split

from tunelab.data.catalog import DATASETS
from tunelab.data.files import read_table
from tunelab.data.splits import Splits
from tunelab.errors import TunelabError
from tunelab.tasks.base import register
from tunelab.tasks.classification import ClassificationConfig, ClassificationTask

MATCH, MISMATCH = "match", "mismatch"
SEPARATOR = "|||"


class TextPairConfig(ClassificationConfig):
    type: Literal["text_pair"] = "text_pair"
    labels: list[str] | None = Field([MISMATCH, MATCH], description="label order")
    negatives: int = Field(1, ge=1, le=20, description="generated pairs: mismatched answers drawn per question")


def with_negatives(df: pd.DataFrame, k: int, seed: int) -> pd.DataFrame:
    """Each (text, text_pair) row as a match, plus k mismatches pairing its text with other rows' pairs."""
    n = len(df)
    if n < 2:
        raise TunelabError("text_pair: a split needs at least two rows to draw mismatched pairs from")
    rng = np.random.default_rng(seed)
    texts, pairs = df["text"].to_numpy(), df["text_pair"].to_numpy()
    negatives = []
    for _ in range(k):
        other = (np.arange(n) + rng.integers(1, n, size=n)) % n  # never the row itself
        keep = pairs[other] != pairs  # a question sharing its answer text with another is no mismatch
        negatives.append(pd.DataFrame({"text": texts[keep], "text_pair": pairs[other][keep], "label": MISMATCH}))
    matches = pd.DataFrame({"text": texts, "text_pair": pairs, "label": MATCH})
    out = pd.concat([matches, *negatives], ignore_index=True).drop_duplicates(["text", "text_pair"])
    return out.sample(frac=1, random_state=seed).reset_index(drop=True)


@register
class TextPairTask(ClassificationTask):
    name = "text_pair"
    config_cls = TextPairConfig
    onnx_export = False  # the ONNX graph takes input_ids + attention_mask only, no segment ids

    def load_splits(self, data_cfg=None):
        d = data_cfg or self.cfg.data
        seed, notes = d.split.seed, []
        if d.name:
            if d.name not in DATASETS or not {"question", "answer"} <= set(DATASETS[d.name].load().columns):
                raise TunelabError(f"text_pair: dataset '{d.name}' has no question/answer pairs; use a QA dataset "
                                   "(zaragoza-faq, fanoutqa) or data.path with data.text_pair_column")
            df = DATASETS[d.name].load().rename(columns={"question": "text", "answer": "text_pair"})
            labelled = False
        else:
            path = d.path or d.train_path
            raw = read_table(path, d.format, d.encoding)
            pair_col = d.text_pair_column or "text_pair"
            for col, key in ((d.text_column, "data.text_column"), (pair_col, "data.text_pair_column")):
                if col not in raw.columns:
                    raise TunelabError(f"'{path}' has no column '{col}' (it has: {', '.join(map(str, raw.columns[:12]))}); "
                                       f"set {key}")
            labelled = d.label_column in raw.columns
            cols = {d.text_column: "text", pair_col: "text_pair", **({d.label_column: "label"} if labelled else {})}
            df = raw[list(cols)].rename(columns=cols)
        df = df.dropna().astype(str).apply(lambda c: c.str.strip())
        df = df[(df["text"] != "") & (df["text_pair"] != "")].drop_duplicates().reset_index(drop=True)
        if labelled:  # labelled pairs: split the rows, stratified
            rest, test = train_test_split(df, test_size=d.split.test, random_state=seed, stratify=df["label"])
            train, val = train_test_split(rest, test_size=d.split.validation / (1 - d.split.test), random_state=seed,
                                          stratify=rest["label"])
            frames = {"train": train, "validation": val, "test": test}
        else:  # split the questions (a question may have several answers), so no question crosses splits
            questions = np.sort(df["text"].unique())
            rest, test = train_test_split(questions, test_size=d.split.test, random_state=seed)
            train, val = train_test_split(rest, test_size=d.split.validation / (1 - d.split.test), random_state=seed)
            frames = {name: df[df["text"].isin(set(q))] for name, q in (("train", train), ("validation", val), ("test", test))}
        if not labelled:
            k = self.cfg.task.negatives
            frames = {s: with_negatives(f.reset_index(drop=True), k, seed + i) for i, (s, f) in enumerate(frames.items())}
            notes.append(f"pairs: each question with its own answer ({MATCH}) and {k} answer(s) of other questions "
                         f"({MISMATCH}), drawn within each split")
        for split, limit in (("train", d.max_train_samples), ("validation", d.max_eval_samples), ("test", d.max_eval_samples)):
            if limit and len(frames[split]) > limit:
                frames[split] = frames[split].sample(n=limit, random_state=seed)
                notes.append(f"{split}: random subsample of {limit} pairs")
        frames = {k: v.reset_index(drop=True) for k, v in frames.items()}
        labels = list(self.cfg.task.labels or sorted(set(frames["train"]["label"])))
        unknown = sorted(set(pd.concat(frames.values())["label"]) - set(labels))
        if unknown:
            found = sorted(set(pd.concat(frames.values())["label"]))
            raise TunelabError(f"text_pair: labels {', '.join(unknown[:5])} are not in task.labels ({', '.join(labels)}); "
                               f"set task.labels=[{','.join(found[:20])}]")
        self.labels = labels
        self.splits = Splits(frames["train"], frames["validation"], frames["test"], labels, notes)
        return self.splits

    def read_file(self, path: str) -> pd.DataFrame:
        d = self.cfg.data
        raw = read_table(path, d.format, d.encoding)
        cols = {d.text_column: "text", d.text_pair_column or "text_pair": "text_pair", d.label_column: "label"}
        missing = [c for c in cols if c not in raw.columns]
        if missing:
            raise TunelabError(f"'{path}' has no column '{missing[0]}' (it has: {', '.join(map(str, raw.columns[:12]))})")
        return raw[list(cols)].rename(columns=cols).dropna().astype(str).reset_index(drop=True)

    def texts(self, df: pd.DataFrame):
        return df["text"].tolist(), df["text_pair"].tolist()

    def classify(self, model, texts, pairs=None, desc=None):
        if pairs is None:  # "question ||| answer"
            split = [t.split(SEPARATOR, 1) for t in texts]
            texts, pairs = [s[0].strip() for s in split], [s[1].strip() if len(s) > 1 else "" for s in split]
        return super().classify(model, texts, pairs, desc)

    def probe_inputs(self, n: int) -> list[str]:
        test = self.load_splits().test.head(n)
        return [f"{a} {b}" for a, b in zip(test["text"], test["text_pair"])]
