"""Generative tasks (summarization, QA, translation, chat) on encoder-decoder (T5, BART, BERT2BERT)
and decoder-only (Llama, GPT-2) models: examples -> token ids with the loss on replies only, packing,
teacher-forced validation loss, and before/after generation metrics."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass

import numpy as np
import torch
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

from tunelab.config.schema import ModelConfig, RunConfig
from tunelab.console import task_bar
from tunelab.data import token_cache
from tunelab.errors import TunelabError
from tunelab.metrics import text as tm
from tunelab.models.catalog import hf_source, load_error
from tunelab.models.cpu_kernels import use_cpu_kernels
from tunelab.tasks.batching import length_grouped_batches
from tunelab.tasks.generation import generate_texts
from tunelab.tasks.prompts import Renderer, row_to_conversation, with_shots
from tunelab.train.precision import autocast

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


class GenerativeTask:
    peft_task_type = "CAUSAL_LM"
    default_metric = "loss"
    higher_is_better = {"loss": False, "perplexity": False}
    PRIMARY = {"summarization": "rougeL", "qa": "f1", "translation": "chrf", "chat": "perplexity"}

    def __init__(self, type: str):
        self.type = type
        self.seq2seq = False
        self.new_modules: list[str] = []

    # -- model ---------------------------------------------------------------------------------
    def load(self, model_cfg: ModelConfig, labels=None, **extra):
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
        return tok, model

    def head_modules(self, model) -> list[str]:
        return self.new_modules

    # -- data ----------------------------------------------------------------------------------
    def conversations(self, df, cfg: RunConfig) -> list[list[dict]]:
        return [row_to_conversation(row, cfg.task, cfg.task.system_prompt) for row in df.to_dict("records")]

    def encode(self, tok, convs: list[list[dict]], cfg: RunConfig, desc: str = "Tokenizing",
               context: list[list[dict]] | None = None) -> GenEncoded:
        """Token ids and labels; labels are IGNORE except on reply tokens. `context` (k-shot turns)
        is prepended to each conversation without contributing to the loss. Kept on disk by content
        hash (data/token_cache.py) unless `data.token_cache` is off."""
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
        enc = self._encode(tok, convs, cfg, desc, context)
        if key is not None:
            token_cache.save(key, {"input_ids": enc.input_ids, "labels": enc.labels}, {"truncated": str(enc.truncated)})
        return enc

    def _encode(self, tok, convs, cfg: RunConfig, desc: str, context) -> GenEncoded:
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

    @staticmethod
    def batches(enc: GenEncoded, batch_size: int, rng, group_by_length: bool) -> list[np.ndarray]:
        return length_grouped_batches(enc.lengths, batch_size, rng, group_by_length)

    def collate(self, tok, enc: GenEncoded, idx, packing: bool = False, max_length: int | None = None) -> dict:
        if packing and not self.seq2seq:
            return pack_examples([enc.input_ids[i] for i in idx], [enc.labels[i] for i in idx],
                                 max_length or max(len(enc.input_ids[i]) for i in idx), tok.pad_token_id)
        pad = tok.pad_token_id
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

    # -- evaluation ----------------------------------------------------------------------------
    @torch.no_grad()
    def teacher_forced_loss(self, model, tok, enc: GenEncoded, batch_size: int, precision: str, desc="Validating") -> dict:
        """Mean cross-entropy over reply tokens (token-weighted across batches) and its perplexity."""
        model.eval()
        device = next(model.parameters()).device
        total, count = 0.0, 0
        with task_bar(desc, total=len(enc)) as advance:
            for idx in length_grouped_batches(enc.lengths, batch_size, None, True):
                batch = {k: v.to(device) for k, v in self.collate(tok, enc, idx).items()}
                with autocast(precision, device):
                    if not self.seq2seq and keeps_logits(model):
                        logits, targets = reply_logits(model, batch)
                    else:
                        labels = batch.pop("labels")
                        logits = model(**batch, labels=labels if self.seq2seq else None, use_cache=False).logits
                        if not self.seq2seq:  # position t predicts token t+1
                            logits, labels = logits[:, :-1], labels[:, 1:]
                        logits, targets = logits[labels != IGNORE], labels[labels != IGNORE]
                nll = torch.nn.functional.cross_entropy(logits.float(), targets, reduction="sum")
                total += float(nll)
                count += len(targets)
                advance(len(idx))
        loss = total / max(1, count)
        return {"loss": loss, "perplexity": math.exp(min(loss, 50))}

    def generation_metrics(self, predictions: list[str], convs: list[list[dict]], refs: list[list[str]]) -> dict:
        first = [r[0] for r in refs]
        if self.type == "qa":
            return tm.squad(predictions, refs)
        if self.type == "translation":
            return {"bleu": tm.bleu(predictions, first), "chrf": tm.chrf(predictions, first)}
        scores = tm.rouge(predictions, first)
        return {k: 100 * v for k, v in scores.items()}

    def evaluate(self, model, tok, convs: list[list[dict]], refs: list[list[str]], cfg: RunConfig, precision: str,
                 shots: list[list[dict]] | None = None, desc: str = "Evaluating") -> dict:
        """Perplexity of the references and generation metrics for the last reply of each conversation."""
        context = [m for shot in shots for m in shot if m["role"] != "system"] if shots else None
        enc = self.encode(tok, convs, cfg, f"{desc}: tokenizing", context=context)
        metrics = self.teacher_forced_loss(model, tok, enc, cfg.eval.batch_size, precision, f"{desc}: perplexity")
        renderer = Renderer(tok, self.seq2seq)
        prompts = [renderer.render(with_shots(shots, c[:-1]) if shots else c[:-1], add_generation_prompt=True)
                   for c in convs]
        predictions = generate_texts(model, tok, prompts, cfg.generate, seq2seq=self.seq2seq, precision=precision,
                                     max_length=cfg.model.max_length, desc=f"{desc}: generating")
        metrics.update(self.generation_metrics(predictions, convs, refs))
        metrics["predictions"] = predictions
        return metrics


def keeps_logits(model) -> bool:
    """True when the model can compute its LM head on chosen positions only (transformers'
    `logits_to_keep`). Prompt-learning adapters (prefix, prompt, P-tuning) prepend virtual tokens, so
    a position mask of the input's shape would not line up; AdaLoRA adds its orthogonality penalty
    only to a loss the model computes itself: both take the full-logits path."""
    peft_cfg = getattr(model, "active_peft_config", None)
    if peft_cfg is not None and (peft_cfg.is_prompt_learning or peft_cfg.peft_type == "ADALORA"):
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
