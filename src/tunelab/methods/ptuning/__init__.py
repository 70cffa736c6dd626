"""P-tuning: virtual-token embeddings produced by a small trained encoder (MLP or LSTM) (Liu et al. 2021)."""

from __future__ import annotations

from typing import Literal

import peft
from pydantic import Field

from tunelab.config.schema import MethodConfig
from tunelab.methods.base import register
from tunelab.methods.peft_common import PeftMethod, head_list


class PTuningConfig(MethodConfig):
    name: Literal["ptuning"] = "ptuning"
    num_virtual_tokens: int = Field(20, ge=1)
    encoder: Literal["MLP", "LSTM"] = "MLP"
    encoder_hidden_size: int = Field(128, ge=1)


@register
class PTuningMethod(PeftMethod):
    name = "ptuning"
    config_cls = PTuningConfig
    mergeable = False
    why_not_mergeable = "p-tuning adds virtual input tokens, not a weight update"

    def peft_config(self, head_modules, peft_task_type):
        c = self.cfg
        return peft.PromptEncoderConfig(task_type=peft_task_type, num_virtual_tokens=c.num_virtual_tokens,
                                        encoder_reparameterization_type=c.encoder,
                                        encoder_hidden_size=c.encoder_hidden_size,
                                        modules_to_save=head_list(head_modules))
