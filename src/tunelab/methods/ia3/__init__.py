"""(IA)^3: learned vectors that rescale keys, values and FFN activations (Liu et al. 2022)."""

from __future__ import annotations

from typing import Literal

import peft
from pydantic import Field

from tunelab.config.schema import MethodConfig
from tunelab.methods.base import register
from tunelab.methods.peft_common import PeftMethod, head_list


class Ia3Config(MethodConfig):
    name: Literal["ia3"] = "ia3"
    target_modules: list[str] | None = Field(None, description="default: peft's choice for the architecture")
    feedforward_modules: list[str] | None = Field(None, description="subset of target_modules scaled on their input")


@register
class Ia3Method(PeftMethod):
    name = "ia3"
    config_cls = Ia3Config

    def peft_config(self, head_modules, peft_task_type):
        c = self.cfg
        return peft.IA3Config(task_type=peft_task_type, target_modules=c.target_modules,
                              feedforward_modules=c.feedforward_modules, modules_to_save=head_list(head_modules))
