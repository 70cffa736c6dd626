"""What runs on the model thread: classification and generation for a batch of requests, and one
streamed generation. Reuses the toolkit's own paths (predict_texts, generate_texts, the task prompt
renderer), so a served run answers exactly what `tunelab predict` answers. Tokenizers are only
touched here: fast tokenizers are not safe to use from two threads while one changes padding."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tunelab.config.schema import GenerateConfig
from tunelab.serve.registry import Served
from tunelab.tasks.generation import generate_texts, generation_kwargs
from tunelab.train.precision import autocast
from tunelab.workflows.evaluate import predict_texts


@dataclass(frozen=True)
class Sampling:
    """Generation settings; requests with equal settings (and model) can share a batch."""

    max_new_tokens: int
    do_sample: bool
    temperature: float | None
    top_p: float | None
    stop: tuple[str, ...] = ()

    def config(self, base: GenerateConfig, batch_size: int = 1) -> GenerateConfig:
        update = dict(max_new_tokens=self.max_new_tokens, do_sample=self.do_sample, batch_size=batch_size)
        if self.do_sample:
            update.update(temperature=self.temperature, top_p=self.top_p)
        return base.model_copy(update=update)


@dataclass
class Generated:
    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: str  # "stop" or "length", as OpenAI reports it


def classify(entry: Served, batches: list[list[str]]) -> list[list[dict]]:
    entry.activate()
    flat = [t for texts in batches for t in texts]
    preds = predict_texts(entry.lr, flat)
    out, i = [], 0
    for texts in batches:
        out.append([{k: p[k] for k in ("label", "score", "scores")} for p in preds[i : i + len(texts)]])
        i += len(texts)
    return out


def generate(entry: Served, prompts: list[str], sampling: Sampling) -> list[Generated]:
    entry.activate()
    lr = entry.lr
    texts = generate_texts(lr.model, lr.tokenizer, prompts, sampling.config(lr.cfg.generate, len(prompts)),
                           seq2seq=lr.task.seq2seq, precision=lr.precision, max_length=lr.cfg.model.max_length)
    return [finish(entry, p, t, sampling) for p, t in zip(prompts, texts)]


def finish(entry: Served, prompt: str, text: str, sampling: Sampling) -> Generated:
    """Cut at a stop string and count tokens (OpenAI `usage`). The reply is re-tokenized (generate_texts
    returns text), which can differ by a token from what was generated; capped at max_tokens."""
    tok, seq2seq = entry.lr.tokenizer, entry.lr.task.seq2seq
    produced = min(count_tokens(tok, text), sampling.max_new_tokens)
    reason = "length" if produced >= sampling.max_new_tokens else "stop"
    cut = cut_at_stop(text, sampling.stop)
    if cut is not None:
        text, reason, produced = cut, "stop", min(count_tokens(tok, cut), produced)
    return Generated(text, len(tok(prompt, add_special_tokens=seq2seq)["input_ids"]), produced, reason)


def count_tokens(tok, text: str) -> int:
    return len(tok(text, add_special_tokens=False)["input_ids"]) if text else 0


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str | None:
    hits = [text.index(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else None


class _Cancelled(StoppingCriteria):
    """Ends generation early when the streaming client has gone away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


@torch.no_grad()
def generate_streaming(entry: Served, prompt: str, sampling: Sampling, streamer, cancel: threading.Event) -> None:
    """One generation whose pieces go to `streamer` (transformers' AsyncTextIteratorStreamer); the
    prompt is cut from the left to leave room for the reply, as generate_texts does."""
    try:
        entry.activate()
        lr = entry.lr
        tok, seq2seq = lr.tokenizer, lr.task.seq2seq
        gen = sampling.config(lr.cfg.generate)
        budget = lr.cfg.model.max_length if seq2seq else max(8, lr.cfg.model.max_length - gen.max_new_tokens)
        ids = tok(prompt, add_special_tokens=seq2seq)["input_ids"][-budget:]
        device = next(lr.model.parameters()).device
        enc = {"input_ids": torch.tensor([ids], device=device), "attention_mask": torch.ones(1, len(ids), dtype=torch.long, device=device)}
        with autocast(lr.precision, device):
            lr.model.generate(**enc, **generation_kwargs(tok, gen), streamer=streamer,
                              stopping_criteria=StoppingCriteriaList([_Cancelled(cancel)]))
    finally:
        streamer.end()
