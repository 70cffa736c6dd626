"""Full fine-tuning: every weight trains. Saves the whole model's weights (safetensors)."""

from __future__ import annotations

from typing import Literal

from tunelab.config.schema import MethodConfig
from tunelab.methods.base import register
from tunelab.methods.own_common import OwnMethod


class FullConfig(MethodConfig):
    name: Literal["full"] = "full"


@register
class FullMethod(OwnMethod):
    name = "full"
    config_cls = FullConfig

    def inject(self, model, head_modules):
        for p in model.parameters():
            p.requires_grad_(True)

    def merge(self, model):
        return model  # the weights are the model: nothing to fold in
