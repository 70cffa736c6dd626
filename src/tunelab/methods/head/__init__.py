"""Transfer learning: the pretrained backbone stays frozen; only the new task head (and optionally
the top `top_k_layers` transformer layers of each stack) train."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from torch import nn

from tunelab.config.schema import MethodConfig
from tunelab.errors import TunelabError
from tunelab.methods.base import register
from tunelab.methods.own_common import OwnMethod

LAYER_LISTS = ("layer", "layers", "block", "h")


class HeadConfig(MethodConfig):
    name: Literal["head"] = "head"
    top_k_layers: int = Field(0, ge=0, description="also train the last k layers of each layer stack")


def layer_stacks(model: nn.Module) -> list[nn.ModuleList]:
    """The transformer layer lists (BERT encoder.layer, Llama model.layers, T5 encoder/decoder.block)."""
    return [m for n, m in model.named_modules() if isinstance(m, nn.ModuleList) and n.rsplit(".", 1)[-1] in LAYER_LISTS]


@register
class HeadMethod(OwnMethod):
    name = "head"
    config_cls = HeadConfig

    def inject(self, model, head_modules):
        k = self.cfg.top_k_layers
        if k:
            stacks = layer_stacks(model)
            if not stacks:
                raise TunelabError(f"head: no layer stack found in {type(model).__name__} to unfreeze; set method.top_k_layers=0")
            for stack in stacks:
                for layer in list(stack)[-k:]:
                    for p in layer.parameters():
                        p.requires_grad_(True)
        elif not head_modules:
            raise TunelabError(f"head: {type(model).__name__} has no new task head, so nothing would train; "
                               "set method.top_k_layers >= 1")

    def merge(self, model):
        return model  # trained weights are the model's own: nothing to fold in
