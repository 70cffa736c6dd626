"""What runs on the model thread: classification and generation for a batch of requests, and one
streamed generation, all through the inference layer (session/predictor.py), so a served run answers
exactly what `tunelab predict` answers and nothing prints. Tokenizers are only touched here: fast
tokenizers are not safe to use from two threads while one changes padding."""

from __future__ import annotations

import threading
from dataclasses import dataclass

import torch
from transformers import StoppingCriteria, StoppingCriteriaList

from tunelab.config.schema import GenerateConfig
from tunelab.serve.registry import Served


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
    preds = entry.predictor.classify(flat)
    out, i = [], 0
    for texts in batches:
        out.append(preds[i : i + len(texts)])
        i += len(texts)
    return out


def generate(entry: Served, prompts: list[str], sampling: Sampling) -> list[Generated]:
    entry.activate()
    p = entry.predictor
    texts = p.generate(prompts, sampling.config(p.cfg.generate, len(prompts)))
    return [finish(entry, prompt, t, sampling) for prompt, t in zip(prompts, texts)]


def finish(entry: Served, prompt: str, text: str, sampling: Sampling) -> Generated:
    """Cut at a stop string and count tokens (OpenAI `usage`): the prompt as it reached the model (cut
    from the left to fit the context beside the reply). The reply is re-tokenized (generation returns
    text), which can differ by a token from what was generated; capped at max_tokens."""
    p = entry.predictor
    produced = min(p.count_tokens(text), sampling.max_new_tokens)
    reason = "length" if produced >= sampling.max_new_tokens else "stop"
    cut = cut_at_stop(text, sampling.stop)
    if cut is not None:
        text, reason, produced = cut, "stop", min(p.count_tokens(cut), produced)
    return Generated(text, len(p.prompt_ids(prompt, sampling.config(p.cfg.generate))), produced, reason)


def cut_at_stop(text: str, stop: tuple[str, ...]) -> str | None:
    hits = [text.index(s) for s in stop if s and s in text]
    return text[: min(hits)] if hits else None


class _Cancelled(StoppingCriteria):
    """Ends generation early when the streaming client has gone away."""

    def __init__(self, event: threading.Event):
        self.event = event

    def __call__(self, input_ids, scores, **kwargs):
        return torch.full((input_ids.shape[0],), self.event.is_set(), dtype=torch.bool)


def generate_streaming(entry: Served, prompt: str, sampling: Sampling, streamer, cancel: threading.Event) -> None:
    """One generation whose pieces go to `streamer` (transformers' AsyncTextIteratorStreamer); the
    prompt is cut from the left to leave room for the reply, as batched generation does."""
    try:
        entry.activate()
        p = entry.predictor
        p.stream(prompt, sampling.config(p.cfg.generate), streamer, StoppingCriteriaList([_Cancelled(cancel)]))
    finally:
        streamer.end()
