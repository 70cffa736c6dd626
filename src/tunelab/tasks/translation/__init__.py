"""Translation: a source sentence -> the target language, scored with chrF and BLEU (sacrebleu)."""

from __future__ import annotations

from typing import Literal

from tunelab.metrics import text as tm
from tunelab.tasks.base import register
from tunelab.tasks.generative import GenerativeConfig, SourceTargetTask


class TranslationConfig(GenerativeConfig):
    type: Literal["translation"] = "translation"
    source_lang: str = "English"
    target_lang: str = "Spanish"


@register
class TranslationTask(SourceTargetTask):
    name = "translation"
    config_cls = TranslationConfig
    primary_metric = "chrf"
    default_prompt = "translate {source_lang} to {target_lang}: {source}"

    def template_fields(self):
        return {"source_lang": self.cfg.task.source_lang, "target_lang": self.cfg.task.target_lang}

    def generation_metrics(self, predictions, refs):
        first = [r[0] for r in refs]
        return {"bleu": tm.bleu(predictions, first), "chrf": tm.chrf(predictions, first)}
