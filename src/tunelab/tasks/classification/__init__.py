"""Sequence classification (sentiment and any labelled text) on encoder or decoder backbones with a
new classification head. Before training: the majority class and the untrained head; after: accuracy,
macro/weighted F1, per-class scores and confusion matrices."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tunelab.config.schema import TaskConfig
from tunelab.console import task_bar
from tunelab.errors import TunelabError
from tunelab.data import load_splits
from tunelab.data.splits import read_labelled_file
from tunelab.metrics.classification import classification_metrics, majority_baseline
from tunelab.models.catalog import hf_source, load_error
from tunelab.models.cpu_kernels import use_cpu_kernels
from tunelab.models.head_positions import first_token_only
from tunelab.runtime import autocast
from tunelab.tasks.base import Task, register
from tunelab.tasks.batching import length_grouped_batches, length_stats


class ClassificationConfig(TaskConfig):
    type: Literal["classification"] = "classification"
    labels: list[str] | None = Field(None, description="label order; default: sorted names from train")
    first_token_only: bool = Field(True, description="BERT-style heads: the last layer computes only the first token, "
                                   "the one the head reads (same logits; models/head_positions.py)")


@dataclass
class Encoded:
    """Tokenized examples, unpadded; padding happens per batch (dynamic padding). `extra` holds other
    per-example token columns (token_type_ids of text pairs)."""

    input_ids: list[list[int]]
    labels: np.ndarray | None
    extra: dict[str, list[list[int]]] = field(default_factory=dict)

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)


@register
class ClassificationTask(Task):
    name = "classification"
    config_cls = ClassificationConfig
    kind = "classification"
    default_metric = "macro_f1"
    higher_is_better = {"macro_f1": True, "accuracy": True, "weighted_f1": True, "loss": False}
    onnx_export = True
    quality_metric = "macro_f1"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.peft_task_type = "SEQ_CLS"
        self.enc: dict[str, Encoded] = {}

    # -- data ------------------------------------------------------------------------------------
    def load_splits(self, data_cfg=None):
        splits = load_splits(data_cfg or self.cfg.data, self.cfg.task.labels)
        self.labels = splits.labels
        return splits

    def read_file(self, path: str) -> pd.DataFrame:
        return read_labelled_file(self.cfg.data, path)

    def texts(self, df: pd.DataFrame) -> tuple[list, list | None]:
        """(texts, second texts or None) of a split; text-pair tasks return both."""
        return df["text"].tolist(), None

    # -- model -----------------------------------------------------------------------------------
    def load_model(self, model_cfg=None, **extra):
        """Tokenizer and backbone with a new, randomly initialized head of len(labels) outputs.

        Records in `self.new_modules` every module whose weights the checkpoint lacked (the head, and
        e.g. the pooler of a masked-LM checkpoint): they must be trained and saved with the adapter,
        or each reload would draw them at random again."""
        model_cfg = model_cfg or self.cfg.model
        labels = self.labels
        path, kwargs = hf_source(model_cfg)
        try:
            tok = AutoTokenizer.from_pretrained(path, **kwargs)
            model, info = AutoModelForSequenceClassification.from_pretrained(
                path,
                output_loading_info=True,
                num_labels=len(labels),
                id2label=dict(enumerate(labels)),
                label2id={name: i for i, name in enumerate(labels)},
                **kwargs,
                **extra,
            )
        except OSError as e:
            raise load_error(model_cfg.name, e) from None
        if tok.pad_token is None:  # decoder-only tokenizers (GPT-2, Llama) ship without one
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        if model_cfg.cpu_kernels:
            use_cpu_kernels(model)
        if self.cfg.task.first_token_only:
            first_token_only(model)
        self.new_modules = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]})
        return tok, model

    def head_modules(self, model) -> list[str]:
        return self.new_modules or [n for n in ("classifier", "score") if hasattr(model, n)]

    # -- training --------------------------------------------------------------------------------
    def encode(self, tok, df: pd.DataFrame, desc: str | None = "Tokenizing") -> Encoded:
        texts, pairs = self.texts(df)
        max_length = self.cfg.model.max_length
        ids: list[list[int]] = []
        extra: dict[str, list] = {}
        chunk = 2048
        with task_bar(desc, total=len(texts)) as advance:
            for i in range(0, len(texts), chunk):
                part = texts[i : i + chunk]
                second = pairs[i : i + chunk] if pairs is not None else None
                out = tok(part, second, truncation=True, max_length=max_length)
                ids.extend(out["input_ids"])
                if second is not None and "token_type_ids" in out:
                    extra.setdefault("token_type_ids", []).extend(out["token_type_ids"])
                advance(len(part))
        y = None
        if "label" in df.columns:
            index = {name: i for i, name in enumerate(self.labels)}
            y = np.array([index[v] for v in df["label"]], dtype=np.int64)
        return Encoded(ids, y, extra)

    def prepare(self, tok, splits, precision: str) -> dict:
        self.tok, self.splits, self.precision = tok, splits, precision
        self.enc = {split: self.encode(tok, getattr(splits, split), f"Tokenizing {split}")
                    for split in ("train", "validation", "test")}
        return length_stats(self.enc["train"].lengths, self.cfg.model.max_length)

    def batches(self, epoch: int) -> list[np.ndarray]:
        t = self.cfg.train
        return length_grouped_batches(self.enc["train"].lengths, t.batch_size, np.random.default_rng([self.cfg.seed, epoch]),
                                      t.group_by_length)

    def collate(self, idx, enc: Encoded | None = None) -> dict[str, torch.Tensor]:
        enc = enc or self.enc["train"]
        features = {"input_ids": [enc.input_ids[i] for i in idx]}
        for k, v in enc.extra.items():
            features[k] = [v[i] for i in idx]
        batch = self.tok.pad(features, return_tensors="pt")
        if enc.labels is not None:
            batch["labels"] = torch.from_numpy(enc.labels[idx])
        return dict(batch)

    def validate(self, model) -> dict:
        return self.metrics(model, self.enc["validation"], "Validating")

    def target_logits(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        return model(**{k: v for k, v in batch.items() if k != "labels"}).logits, batch["labels"]

    def teacher_logits(self, teacher, splits) -> torch.Tensor:
        """Computed once with the teacher's own tokenizer: a class distribution per example does not
        depend on how the student tokenizes, so teacher and student may differ in vocabulary.
        Returned as log-probabilities (the logits up to a per-row constant, which softmax ignores)."""
        enc = teacher.task.encode(teacher.tokenizer, splits.train, "Teacher: tokenizing")
        probs, _ = teacher.task.predict_proba(teacher.model, enc, desc="Teacher: logits on the training set")
        return torch.from_numpy(probs).clamp_min(1e-12).log()

    # -- evaluation ------------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, model, enc: Encoded, batch_size: int | None = None, desc: str | None = "Evaluating"):
        """Class probabilities for every example, computed in length-sorted batches; and the mean loss
        where the examples have labels."""
        model.eval()
        batch_size = batch_size or self.cfg.eval.batch_size
        probs = np.zeros((len(enc), model.config.num_labels), dtype=np.float32)
        losses = []
        device = next(model.parameters()).device
        order = np.argsort(-enc.lengths, kind="stable")
        with task_bar(desc, total=len(enc)) as advance:
            for i in range(0, len(enc), batch_size):
                idx = order[i : i + batch_size]
                batch = {k: v.to(device) for k, v in self.collate(idx, enc).items()}
                with autocast(self.precision, device):
                    out = model(**batch)
                probs[idx] = torch.softmax(out.logits.float(), -1).cpu().numpy()
                if out.loss is not None:
                    losses.append(float(out.loss) * len(idx))
                advance(len(idx))
        loss = sum(losses) / len(enc) if losses else None
        return probs, loss

    def metrics(self, model, enc: Encoded, desc: str | None = "Evaluating") -> dict:
        probs, loss = self.predict_proba(model, enc, desc=desc)
        metrics = classification_metrics(enc.labels, probs.argmax(-1), self.labels)
        metrics["loss"] = loss
        return metrics

    def evaluate(self, model, desc: str | None = "Evaluating") -> dict:
        return self.metrics(model, self.enc["test"], desc)

    def evaluate_frame(self, model, df: pd.DataFrame, desc: str | None = "Evaluating") -> dict:
        """Metrics on any labelled frame with this task's columns (`tunelab eval --file`)."""
        unknown = sorted(set(df["label"]) - set(self.labels))
        if unknown:
            raise TunelabError(f"the data has labels the model was not trained on: {', '.join(unknown[:5])}")
        return self.metrics(model, self.encode(self.tok, df, None), desc)

    def baselines(self) -> dict[str, dict]:
        return {"majority class": majority_baseline(self.enc["train"].labels, self.enc["test"].labels, self.labels)}

    def summary_fields(self) -> dict:
        return {"labels": self.labels}

    def report_parts(self, columns: dict[str, dict]) -> dict:
        return {"columns": columns, "labels": self.labels}

    # -- inference -------------------------------------------------------------------------------
    def classify(self, model, texts: list, pairs: list | None = None, desc: str | None = None) -> list[dict]:
        """Label, score and per-label scores of each text (and its pair)."""
        df = pd.DataFrame({"text": texts, **({"text_pair": pairs} if pairs is not None else {})})
        probs, _ = self.predict_proba(model, self.encode(self.tok, df, None), desc=desc)
        return [{"label": self.labels[int(np.argmax(p))], "score": float(np.max(p)),
                 "scores": {name: float(v) for name, v in zip(self.labels, p)}} for p in probs]

    def probe_inputs(self, n: int) -> list[str]:
        return self.load_splits().test["text"].astype(str).tolist()[:n]
