"""Prompt tuning: trained soft-prompt embeddings prepended to the input, optionally initialized from
the embeddings of a text (Lester et al. 2021)."""

from __future__ import annotations

from typing import Literal

import peft
from pydantic import Field

from tunelab.config.schema import MethodConfig
from tunelab.errors import TunelabError
from tunelab.methods.base import register
from tunelab.methods.peft_common import PeftMethod, head_list


class PromptConfig(MethodConfig):
    name: Literal["prompt"] = "prompt"
    num_virtual_tokens: int = Field(20, ge=1)
    init_text: str | None = Field(None, description="initialize from this text's token embeddings (else random)")
    tokenizer: str | None = Field(None, description="tokenizer for init_text; default: the model's folder")


@register
class PromptMethod(PeftMethod):
    name = "prompt"
    config_cls = PromptConfig
    mergeable = False
    why_not_mergeable = "soft prompts are extra input embeddings, not a weight update"

    def apply(self, model, *, head_modules, peft_task_type):
        self._tokenizer = self.cfg.tokenizer or getattr(model, "name_or_path", None) or None
        if self.cfg.init_text and not self._tokenizer:
            raise TunelabError("prompt init_text needs a tokenizer: set method.tokenizer to the model's folder")
        return super().apply(model, head_modules=head_modules, peft_task_type=peft_task_type)

    def peft_config(self, head_modules, peft_task_type):
        c = self.cfg
        text = dict(prompt_tuning_init=peft.PromptTuningInit.TEXT, prompt_tuning_init_text=c.init_text,
                    tokenizer_name_or_path=self._tokenizer) if c.init_text else {}
        return peft.PromptTuningConfig(task_type=peft_task_type, num_virtual_tokens=c.num_virtual_tokens,
                                       modules_to_save=head_list(head_modules), **text)
