"""Summarization: a source text -> its summary, scored with ROUGE-1/2/L/Lsum."""

from __future__ import annotations

from typing import Literal

from tunelab.metrics import text as tm
from tunelab.tasks.base import register
from tunelab.tasks.generative import GenerativeConfig, SourceTargetTask


class SummarizationConfig(GenerativeConfig):
    type: Literal["summarization"] = "summarization"


@register
class SummarizationTask(SourceTargetTask):
    name = "summarization"
    config_cls = SummarizationConfig
    primary_metric = "rougeL"
    default_prompt = "summarize: {source}"

    def generation_metrics(self, predictions, refs):
        scores = tm.rouge(predictions, [r[0] for r in refs])
        return {k: 100 * v for k, v in scores.items()}
