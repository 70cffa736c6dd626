"""Sequence classification (sentiment and any labelled text) on encoder or decoder backbones with a
new classification head."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

from tunelab.config.schema import ModelConfig
from tunelab.console import task_bar
from tunelab.metrics.classification import classification_metrics
from tunelab.models.catalog import hf_source, load_error
from tunelab.models.cpu_kernels import use_cpu_kernels
from tunelab.tasks.batching import length_grouped_batches
from tunelab.train.precision import autocast


@dataclass
class Encoded:
    """Tokenized examples, unpadded; padding happens per batch (dynamic padding)."""

    input_ids: list[list[int]]
    labels: np.ndarray | None

    @property
    def lengths(self) -> np.ndarray:
        return np.fromiter((len(x) for x in self.input_ids), dtype=np.int64, count=len(self.input_ids))

    def __len__(self) -> int:
        return len(self.input_ids)


class ClassificationTask:
    type = "classification"
    peft_task_type = "SEQ_CLS"
    default_metric = "macro_f1"
    higher_is_better = {"macro_f1": True, "accuracy": True, "weighted_f1": True, "loss": False}

    def __init__(self):
        self.new_modules: list[str] = []

    # -- model ---------------------------------------------------------------------------------
    def load(self, model_cfg: ModelConfig, labels: list[str], **extra):
        """Tokenizer and backbone with a new, randomly initialized head of len(labels) outputs.

        Records in `self.new_modules` every module whose weights the checkpoint lacked (the head, and
        e.g. the pooler of a masked-LM checkpoint): they must be trained and saved with the adapter,
        or each reload would draw them at random again."""
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
        self.new_modules = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]})
        return tok, model

    def head_modules(self, model) -> list[str]:
        """Modules trained in full and saved with any method: the new head + other fresh weights."""
        return self.new_modules or [n for n in ("classifier", "score") if hasattr(model, n)]

    # -- data ----------------------------------------------------------------------------------
    def encode(self, tokenizer, df, labels: list[str], max_length: int, desc: str = "Tokenizing") -> Encoded:
        texts = df["text"].tolist()
        ids: list[list[int]] = []
        chunk = 2048
        with task_bar(desc, total=len(texts)) as advance:
            for i in range(0, len(texts), chunk):
                part = texts[i : i + chunk]
                ids.extend(tokenizer(part, truncation=True, max_length=max_length)["input_ids"])
                advance(len(part))
        y = None
        if "label" in df.columns:
            index = {name: i for i, name in enumerate(labels)}
            y = np.array([index[v] for v in df["label"]], dtype=np.int64)
        return Encoded(ids, y)

    @staticmethod
    def batches(enc: Encoded, batch_size: int, rng: np.random.Generator | None, group_by_length: bool) -> list[np.ndarray]:
        return length_grouped_batches(enc.lengths, batch_size, rng, group_by_length)

    @staticmethod
    def collate(tokenizer, enc: Encoded, idx: np.ndarray) -> dict[str, torch.Tensor]:
        batch = tokenizer.pad({"input_ids": [enc.input_ids[i] for i in idx]}, return_tensors="pt")
        if enc.labels is not None:
            batch["labels"] = torch.from_numpy(enc.labels[idx])
        return dict(batch)

    @staticmethod
    def loss(model, batch) -> torch.Tensor:
        return model(**batch).loss

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def predict_proba(self, model, tokenizer, enc: Encoded, batch_size: int, precision: str, desc: str = "Evaluating"):
        """Class probabilities for every example, computed in length-sorted batches."""
        model.eval()
        probs = np.zeros((len(enc), model.config.num_labels), dtype=np.float32)
        losses = []
        device = next(model.parameters()).device
        order = np.argsort(-enc.lengths, kind="stable")
        with task_bar(desc, total=len(enc)) as advance:
            for i in range(0, len(enc), batch_size):
                idx = order[i : i + batch_size]
                batch = {k: v.to(device) for k, v in self.collate(tokenizer, enc, idx).items()}
                with autocast(precision, device):
                    out = model(**batch)
                probs[idx] = torch.softmax(out.logits.float(), -1).cpu().numpy()
                if out.loss is not None:
                    losses.append(float(out.loss) * len(idx))
                advance(len(idx))
        loss = sum(losses) / len(enc) if losses else None
        return probs, loss

    def evaluate(self, model, tokenizer, enc: Encoded, labels: list[str], batch_size: int, precision: str, desc="Evaluating") -> dict:
        probs, loss = self.predict_proba(model, tokenizer, enc, batch_size, precision, desc)
        metrics = classification_metrics(enc.labels, probs.argmax(-1), labels)
        metrics["loss"] = loss
        return metrics
