"""The shared base of the generative tasks (summarization, QA, translation, chat; each its own unit in
tasks/<name>/) on encoder-decoder (T5, BART, BERT2BERT) and decoder-only (Llama, GPT-2) models: examples
-> token ids with the loss on replies only, packing, teacher-forced validation loss, zero-/k-shot
before-evaluations and generation metrics after. A unit supplies its fields, how a row becomes a
conversation, its default prompt and its metrics."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
import pandas as pd
import torch
from pydantic import Field
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from tunelab.config.schema import TaskConfig
from tunelab.console import task_bar
from tunelab.data import token_cache
from tunelab.data.files import read_table
from tunelab.data.generative import load_generative_splits, map_columns, text_fields
from tunelab.errors import TunelabError
from tunelab.models.catalog import hf_source, load_error
from tunelab.models.cpu_kernels import use_cpu_kernels
from tunelab.runtime import autocast
from tunelab.tasks.base import Task
from tunelab.tasks.batching import length_grouped_batches, length_stats
from tunelab.tasks.generation import generate_texts, prompt_learning
from tunelab.tasks.prompts import Renderer, fill_template, single_turn, with_shots

IGNORE = -100  # label value the loss skips (prompt tokens, padding, packing boundaries)


@dataclass
class GenEncoded:
    input_ids: list[list[int]]
    labels: list[list[int]]  # causal: aligned with input_ids; seq2seq: the target ids
    truncated: int = 0

    @property
    def lengths(self) -> np.ndarray:
        return np.array([len(a) + (0 if len(b) == len(a) else len(b)) for a, b in zip(self.input_ids, self.labels)])

    def __len__(self) -> int:
        return len(self.input_ids)


class GenerativeConfig(TaskConfig):
    """Fields every generative task has; a unit's section adds its own."""

    prompt: str | None = Field(None, description="instruction template with the task's fields, e.g. {source}; "
                               "default per task")
    system_prompt: str | None = Field(None, description="chat models: system message for every conversation")


def pick_shots(convs: list[list[dict]], k: int, seed: int) -> list[list[dict]]:
    """k training examples for k-shot prompts: drawn (seeded) from the shorter half of the training
    set so the prompt still fits the context window."""
    if k == 0 or not convs:
        return []
    sizes = np.array([sum(len(m["content"]) for m in c) for c in convs])
    short = np.flatnonzero(sizes <= np.median(sizes))
    pick = np.random.default_rng(seed).choice(short, size=min(k, len(short)), replace=False)
    return [convs[i] for i in pick]


class GenerativeTask(Task):
    kind = "generation"
    default_metric = "loss"
    higher_is_better = {"loss": False, "perplexity": False}
    quality_metric = "perplexity"
    token_level_distillation = True
    #: the headline test metric of the report
    primary_metric: ClassVar[str]
    #: the fields a row of this task's data has (data.columns maps a file's columns onto them)
    fields: ClassVar[tuple[str, ...]] = ()
    optional_fields: ClassVar[tuple[str, ...]] = ()
    default_prompt: ClassVar[str | None] = None

    def __init__(self, cfg):
        super().__init__(cfg)
        self.peft_task_type = "CAUSAL_LM"
        self.enc: dict[str, GenEncoded] = {}
        self.convs: dict[str, list] = {}
        self.test_convs: list = []
        self.test_refs: list = []

    # -- what a unit defines -------------------------------------------------------------------
    def prepare_frame(self, df: pd.DataFrame, columns: dict, source: str) -> pd.DataFrame:
        """The task's fields (renamed from `columns`) and a `references` column (a list of strings)."""
        raise NotImplementedError

    def conversation(self, row: dict) -> list[dict]:
        """One prepared row -> messages; the last one is the reply to learn and score."""
        raise NotImplementedError

    def input_row(self, text: str) -> dict:
        """A row holding one user input (`tunelab predict RUN "text"`, /v1/generate): the text fills
        the task's main field."""
        raise NotImplementedError

    def generation_metrics(self, predictions: list[str], refs: list[list[str]]) -> dict:
        raise NotImplementedError

    def template(self, row: dict) -> str:
        return self.cfg.task.prompt or self.default_prompt

    # -- data ------------------------------------------------------------------------------------
    def load_splits(self, data_cfg=None):
        self.splits = load_generative_splits(data_cfg or self.cfg.data, self.name, self.prepare_frame)
        return self.splits

    def read_file(self, path: str) -> pd.DataFrame:
        d = self.cfg.data
        return self.prepare_frame(read_table(path, d.format, d.encoding), d.columns, f"'{path}'").reset_index(drop=True)

    def conversations(self, df: pd.DataFrame) -> list[list[dict]]:
        return [self.conversation(row) for row in df.to_dict("records")]

    def prompts_for(self, texts: list[str]) -> list[str]:
        """The model text for each input: the task prompt (and system prompt) rendered for the model."""
        renderer = Renderer(self.tok, self.seq2seq)
        return [renderer.render(self.conversation(self.input_row(t))[:-1], add_generation_prompt=True) for t in texts]

    # -- model -----------------------------------------------------------------------------------
    def load_model(self, model_cfg=None, **extra):
        model_cfg = model_cfg or self.cfg.model
        path, kwargs = hf_source(model_cfg)
        try:
            config = AutoConfig.from_pretrained(path, **kwargs)
            self.seq2seq = bool(getattr(config, "is_encoder_decoder", False))
            cls = AutoModelForSeq2SeqLM if self.seq2seq else AutoModelForCausalLM
            tok = AutoTokenizer.from_pretrained(path, **kwargs)
            model, info = cls.from_pretrained(path, output_loading_info=True, **kwargs, **extra)
        except OSError as e:
            raise load_error(model_cfg.name, e) from None
        except ValueError as e:
            raise TunelabError(f"model '{model_cfg.name}' cannot generate text ({str(e).splitlines()[0]}); "
                               "use a decoder-only or encoder-decoder model") from None
        self.peft_task_type = "SEQ_2_SEQ_LM" if self.seq2seq else "CAUSAL_LM"
        if tok.pad_token is None:
            tok.pad_token = tok.eos_token
        model.config.pad_token_id = tok.pad_token_id
        if model_cfg.cpu_kernels:
            use_cpu_kernels(model)
        if model.generation_config is not None:
            model.generation_config.pad_token_id = tok.pad_token_id
        # Weights the checkpoint lacked (e.g. cross-attention of a BERT2BERT warm start) train in full.
        self.new_modules = sorted({k.rsplit(".", 1)[0] for k in info["missing_keys"]
                                   if "lm_head" not in k and "embed" not in k})
        if config.model_type == "encoder-decoder":  # BERT2BERT warm start: cross-attention began random
            self.new_modules += [n for n, _ in model.named_modules() if n.endswith("crossattention")]
        self.tok = tok
        return tok, model

    def repeats_shapes(self) -> bool:
        return self.cfg.train.packing and not self.seq2seq

    # -- training --------------------------------------------------------------------------------
    def prepare(self, tok, splits, precision: str) -> dict:
        self.tok, self.splits, self.precision = tok, splits, precision
        self.convs = {split: self.conversations(getattr(splits, split)) for split in ("train", "validation", "test")}
        self.enc = {split: self.encode(self.convs[split], f"Tokenizing {split}") for split in ("train", "validation")}
        # Generation is the slow part of evaluation: a fixed, seeded subset of the test split.
        convs = self.convs["test"]
        n_test = min(len(convs), self.cfg.eval.max_samples or len(convs))
        idx = np.sort(np.random.default_rng(self.cfg.data.split.seed).permutation(len(convs))[:n_test])
        self.test_convs = [convs[i] for i in idx]
        self.test_refs = [splits.test["references"].iloc[i] for i in idx]
        stats = length_stats(self.enc["train"].lengths, self.cfg.model.max_length)
        stats["truncated_examples"] = self.enc["train"].truncated
        return stats

    def encode(self, convs: list[list[dict]], desc: str | None = "Tokenizing",
               context: list[dict] | None = None) -> GenEncoded:
        """Token ids and labels; labels are IGNORE except on reply tokens. `context` (k-shot turns)
        is prepended to each conversation without contributing to the loss. Kept on disk by content
        hash (data/token_cache.py) unless `data.token_cache` is off."""
        cfg, tok = self.cfg, self.tok
        key = None
        if cfg.data.token_cache:
            from tunelab.tasks import prompts

            key = token_cache.entry_key("generative", self.seq2seq, cfg.model.max_length, cfg.model.max_target_length,
                                        token_cache.tokenizer_fingerprint(tok), convs, context,
                                        inspect.getsource(GenerativeTask._encode), inspect.getsource(prompts))
            hit = token_cache.load(key)
            if hit is not None:
                columns, meta = hit
                return GenEncoded(columns["input_ids"], columns["labels"], int(meta.get("truncated", 0)))
        enc = self._encode(convs, desc, context)
        if key is not None:
            token_cache.save(key, {"input_ids": enc.input_ids, "labels": enc.labels}, {"truncated": str(enc.truncated)})
        return enc

    def _encode(self, convs, desc, context) -> GenEncoded:
        tok, cfg = self.tok, self.cfg
        renderer = Renderer(tok, self.seq2seq)
        max_len = cfg.model.max_length
        ids_all, labels_all, truncated = [], [], 0
        with task_bar(desc, total=len(convs)) as advance:
            for conv in convs:
                if self.seq2seq:
                    src = tok(renderer.render(conv[:-1]), truncation=True, max_length=max_len)["input_ids"]
                    tgt = tok(text_target=conv[-1]["content"], truncation=True, max_length=cfg.model.max_target_length)["input_ids"]
                    if tok.eos_token_id is not None and (not tgt or tgt[-1] != tok.eos_token_id):
                        tgt = [*tgt, tok.eos_token_id]
                    ids_all.append(src)
                    labels_all.append(tgt)
                else:
                    full = with_shots([context], conv) if context else conv
                    skip_replies = len([m for m in full if m["role"] == "assistant"]) - len([m for m in conv if m["role"] == "assistant"])
                    ids, labels = [], []
                    for text, is_reply in renderer.segments(full):
                        piece = tok(text, add_special_tokens=False)["input_ids"]
                        train = is_reply and skip_replies <= 0
                        if is_reply:
                            skip_replies -= 1
                            if train and tok.eos_token_id is not None and tok.eos_token_id not in piece:
                                piece = [*piece, tok.eos_token_id]  # every reply ends in EOS so the model learns to stop
                        ids += piece
                        labels += piece if train else [IGNORE] * len(piece)
                    if len(ids) > max_len:
                        truncated += 1
                        ids, labels = ids[-max_len:], labels[-max_len:]  # keep the reply end
                    ids_all.append(ids)
                    labels_all.append(labels)
                advance()
        return GenEncoded(ids_all, labels_all, truncated)

    def batches(self, epoch: int) -> list[np.ndarray]:
        t = self.cfg.train
        return length_grouped_batches(self.enc["train"].lengths, t.batch_size, np.random.default_rng([self.cfg.seed, epoch]),
                                      t.group_by_length and not t.packing)

    def collate(self, idx, enc: GenEncoded | None = None, packing: bool | None = None) -> dict:
        enc = enc if enc is not None else self.enc["train"]
        packing = self.cfg.train.packing if packing is None else packing
        pad = self.tok.pad_token_id
        if packing and not self.seq2seq:
            return pack_examples([enc.input_ids[i] for i in idx], [enc.labels[i] for i in idx],
                                 self.cfg.model.max_length, pad)
        src = [enc.input_ids[i] for i in idx]
        width = max(map(len, src))
        input_ids = torch.full((len(idx), width), pad, dtype=torch.long)
        attention = torch.zeros((len(idx), width), dtype=torch.long)
        for r, ids in enumerate(src):
            input_ids[r, : len(ids)] = torch.tensor(ids)
            attention[r, : len(ids)] = 1
        tgt = [enc.labels[i] for i in idx]
        labels = torch.full((len(idx), max(map(len, tgt))), IGNORE, dtype=torch.long)
        for r, lab in enumerate(tgt):
            labels[r, : len(lab)] = torch.tensor(lab)
        return {"input_ids": input_ids, "attention_mask": attention, "labels": labels}

    def loss_weight(self, batch) -> int:
        """Target tokens of a batch, what `loss` averages over (causal: labels shifted by one)."""
        labels = batch["labels"] if self.seq2seq else batch["labels"][:, 1:]
        return int((labels != IGNORE).sum())

    def loss(self, model, batch) -> torch.Tensor:
        # No KV cache in training: it wastes memory, and with a cache present transformers does not
        # read packed position_ids as sequence boundaries.
        if self.seq2seq or not keeps_logits(model):
            return model(**batch, use_cache=False).loss
        logits, targets = reply_logits(model, batch)
        return torch.nn.functional.cross_entropy(logits.float(), targets)

    def validate(self, model) -> dict:
        return self.teacher_forced_loss(model, self.enc["validation"])

    def target_logits(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (n, vocab) and targets (n,) of every position that predicts a target token."""
        if not self.seq2seq and keeps_logits(model):
            return reply_logits(model, batch)
        labels = batch["labels"]
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        logits = model(**inputs, labels=labels if self.seq2seq else None, use_cache=False).logits
        if not self.seq2seq:  # position t predicts token t+1
            logits, labels = logits[:, :-1], labels[:, 1:]
        return logits[labels != IGNORE], labels[labels != IGNORE]

    def teacher_logits(self, teacher, splits):
        """None: a generative teacher runs beside the student on every batch (token-level KD): its
        full-vocabulary logits over the training set (49k x every reply token) are too big to keep."""
        return None

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_forced_loss(self, model, enc: GenEncoded, desc: str | None = "Validating") -> dict:
        """Mean cross-entropy over reply tokens (token-weighted across batches) and its perplexity."""
        model.eval()
        device = next(model.parameters()).device
        total, count = 0.0, 0
        with task_bar(desc, total=len(enc)) as advance:
            for idx in length_grouped_batches(enc.lengths, self.cfg.eval.batch_size, None, True):
                batch = {k: v.to(device) for k, v in self.collate(idx, enc, packing=False).items()}
                with autocast(self.precision, device):
                    logits, targets = self.target_logits(model, batch)
                nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
                total += float(nll)
                count += len(targets)
                advance(len(idx))
        loss = total / max(1, count)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50))}

    def score(self, model, convs: list[list[dict]], refs: list[list[str]], shots: list[list[dict]] | None = None,
              desc: str | None = "Evaluating") -> dict:
        """Perplexity of the references and generation metrics for the last reply of each conversation."""
        context = [m for shot in shots for m in shot if m["role"] != "system"] if shots else None
        sub = None if desc is None else f"{desc}: "
        enc = self.encode(convs, sub and f"{sub}tokenizing", context=context)
        metrics = self.teacher_forced_loss(model, enc, sub and f"{sub}perplexity")
        renderer = Renderer(self.tok, self.seq2seq)
        prompts = [renderer.render(with_shots(shots, c[:-1]) if shots else c[:-1], add_generation_prompt=True)
                   for c in convs]
        predictions = self.generate(model, prompts, desc=sub and f"{sub}generating")
        metrics.update(self.generation_metrics(predictions, refs))
        metrics["predictions"] = predictions
        return metrics

    def generate(self, model, prompts: list[str], gen=None, desc: str | None = None, max_length: int | None = None) -> list[str]:
        return generate_texts(model, self.tok, prompts, gen or self.cfg.generate, seq2seq=self.seq2seq,
                              precision=self.precision, max_length=max_length or self.cfg.model.max_length, desc=desc)

    def test_quality(self, model) -> dict:
        """Teacher-forced perplexity of the reference replies of the evaluated test examples (the
        summary's `perplexity`): every model variant is scored on the same tokens, without the cost
        (and sampling noise) of generating."""
        return self.teacher_forced_loss(model, self.encode(self.test_convs, None), None)

    def evaluate(self, model, desc: str | None = "After") -> dict:
        return self.score(model, self.test_convs, self.test_refs, desc=desc)

    def evaluate_frame(self, model, df: pd.DataFrame, desc: str | None = "Evaluating") -> dict:
        """Metrics on a prepared frame of this task (`tunelab eval`): a seeded subset of eval.max_samples."""
        n = min(len(df), self.cfg.eval.max_samples or len(df))
        df = df.iloc[np.sort(np.random.default_rng(self.cfg.data.split.seed).permutation(len(df))[:n])]
        return self.score(model, self.conversations(df), df["references"].tolist(), desc=desc)

    def evaluate_before(self, model) -> dict[str, dict]:
        before = {"zero-shot": self.score(model, self.test_convs, self.test_refs, desc="Zero-shot")}
        k = self.cfg.eval.k_shot
        if k:
            shots = pick_shots(self.convs["train"], k, self.cfg.seed)
            before[f"{k}-shot"] = self.score(model, self.test_convs, self.test_refs, shots, desc=f"{k}-shot")
        return before

    def summary_fields(self) -> dict:
        return {"architecture": "encoder-decoder" if self.seq2seq else "decoder-only",
                "primary_metric": self.primary_metric, "test_examples": len(self.test_convs)}

    def report_parts(self, columns: dict[str, dict]) -> dict:
        samples = []
        for i in range(min(self.cfg.eval.show_samples, len(self.test_convs))):
            conv = self.test_convs[i]
            sample = {"input": conv[-2]["content"] if len(conv) > 1 else "", "reference": self.test_refs[i][0]}
            for name, m in columns.items():
                if "predictions" in m:  # a column read from another run's summary (a teacher's) has none
                    sample[name] = m["predictions"][i]
            samples.append(sample)
        numbers = {name: {k: v for k, v in m.items() if k != "predictions"} for name, m in columns.items()}
        return {"columns": numbers, "samples": samples}

    # -- inference -------------------------------------------------------------------------------
    def probe_inputs(self, n: int) -> list[str]:
        convs = self.conversations(self.load_splits().test.head(n))
        renderer = Renderer(self.tok, self.seq2seq)
        return [renderer.render(c[:-1], add_generation_prompt=True) for c in convs]


class SourceTargetTask(GenerativeTask):
    """Single-turn tasks whose rows are (source, target): the template fills the source, the target is
    the reply and the only reference (summarization, translation)."""

    fields = ("source", "target")

    def template_fields(self) -> dict:
        """Fields the template may use besides the row's own (translation: the languages)."""
        return {}

    def prepare_frame(self, df, columns, source):
        df = text_fields(map_columns(df, self.fields, (), columns, source), self.fields)
        return df.assign(references=df["target"].map(lambda t: [t]))

    def conversation(self, row):
        fields = {**{k: v for k, v in row.items() if isinstance(v, str)}, **self.template_fields()}
        return single_turn(fill_template(self.template(row), fields), row["target"], self.cfg.task.system_prompt)

    def input_row(self, text):
        return {"source": text, "target": ""}


def keeps_logits(model) -> bool:
    """True when the model can compute its LM head on chosen positions only (transformers'
    `logits_to_keep`). Prompt-learning adapters (prefix, prompt, P-tuning) prepend virtual tokens, so
    a position mask of the input's shape would not line up; AdaLoRA adds its orthogonality penalty
    only to a loss the model computes itself: both take the full-logits path."""
    model = getattr(model, "module", model)  # through a DistributedDataParallel wrapper
    peft_cfg = getattr(model, "active_peft_config", None)
    if prompt_learning(model) or getattr(peft_cfg, "peft_type", None) == "ADALORA":
        return False
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    return "logits_to_keep" in inspect.signature(base.forward).parameters


def reply_logits(model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Logits (n, vocab) and targets (n,) of the n positions that predict a reply token (labels not
    IGNORE). The LM head runs on those positions only: full-vocabulary logits of every prompt token
    were most of the memory of a training step (49k vocab x sequence x batch, fp32 for the loss)."""
    labels = batch["labels"]
    keep = torch.zeros_like(labels, dtype=torch.bool)
    keep[:, :-1] = labels[:, 1:] != IGNORE  # position t predicts token t+1
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    logits = model(**inputs, use_cache=False, logits_to_keep=keep).logits
    return logits, labels[:, 1:][keep[:, :-1]]


def pack_examples(ids: list[list[int]], labels: list[list[int]], row_len: int, pad_id: int) -> dict:
    """Pack examples into rows of `row_len` tokens (first-fit, longest first). Position ids restart
    at 0 for every example; transformers reads those restarts as sequence boundaries and builds a
    block-diagonal causal mask (when no KV cache is passed: call the model with use_cache=False), so
    packed examples never attend to each other. The first label of
    each example is IGNORE: it would otherwise be predicted from the previous example's last token."""
    order = sorted(range(len(ids)), key=lambda i: -len(ids[i]))
    rows: list[list[int]] = []
    for i in order:
        for row in rows:
            if sum(len(ids[j]) for j in row) + len(ids[i]) <= row_len:
                row.append(i)
                break
        else:
            rows.append([i])
    width = max(sum(len(ids[j]) for j in row) for row in rows)
    input_ids = torch.full((len(rows), width), pad_id, dtype=torch.long)
    label_t = torch.full((len(rows), width), IGNORE, dtype=torch.long)
    positions = torch.zeros((len(rows), width), dtype=torch.long)
    for r, row in enumerate(rows):
        at = 0
        for j in row:
            n = len(ids[j])
            input_ids[r, at : at + n] = torch.tensor(ids[j])
            label_t[r, at : at + n] = torch.tensor(labels[j])
            label_t[r, at] = IGNORE
            positions[r, at : at + n] = torch.arange(n)
            at += n
        positions[r, at:] = torch.arange(width - at)  # padding forms its own (ignored) sequence
    return {"input_ids": input_ids, "labels": label_t, "position_ids": positions}
