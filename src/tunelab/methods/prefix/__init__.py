"""Prefix tuning: trained key/value prefixes in every attention layer (Li & Liang 2021)."""

from __future__ import annotations

from typing import Literal

import peft
from pydantic import Field

from tunelab.config.schema import MethodConfig
from tunelab.methods.base import register
from tunelab.methods.peft_common import PeftMethod, head_list


class PrefixConfig(MethodConfig):
    name: Literal["prefix"] = "prefix"
    num_virtual_tokens: int = Field(20, ge=1)
    projection: bool = Field(False, description="reparameterize the prefix through an MLP while training")
    encoder_hidden_size: int = Field(256, ge=1, description="hidden size of that MLP")


@register
class PrefixMethod(PeftMethod):
    name = "prefix"
    config_cls = PrefixConfig
    mergeable = False
    why_not_mergeable = "prefixes are extra attention keys/values, not a weight update"

    def peft_config(self, head_modules, peft_task_type):
        c = self.cfg
        return peft.PrefixTuningConfig(task_type=peft_task_type, num_virtual_tokens=c.num_virtual_tokens,
                                       prefix_projection=c.projection, encoder_hidden_size=c.encoder_hidden_size,
                                       modules_to_save=head_list(head_modules))
