"""LoRA+: LoRA whose B matrices learn `lr_ratio` times faster than the A matrices (Hayou et al. 2024)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from tunelab.methods.base import register
from tunelab.methods.lora.method import LoraConfig, LoraMethod


class LoraPlusConfig(LoraConfig):
    name: Literal["loraplus"] = "loraplus"
    lr_ratio: float = Field(16.0, gt=0, description="learning rate of B = lr_ratio x learning rate of A")


@register
class LoraPlusMethod(LoraMethod):
    name = "loraplus"
    config_cls = LoraPlusConfig

    def optimizer_groups(self, model, weight_decay, lr):
        groups = {"a": [], "b": [], "other": [], "no_decay": []}
        for n, p in model.named_parameters():
            if not p.requires_grad:
                continue
            if "lora_B" in n:
                groups["b"].append(p)
            elif "lora_A" in n:
                groups["a"].append(p)
            elif p.ndim < 2 or "norm" in n.lower():
                groups["no_decay"].append(p)
            else:
                groups["other"].append(p)
        return [
            {"params": groups["a"], "weight_decay": weight_decay, "lr": lr},
            {"params": groups["b"], "weight_decay": weight_decay, "lr": lr * self.cfg.lr_ratio},
            {"params": groups["other"], "weight_decay": weight_decay, "lr": lr},
            {"params": groups["no_decay"], "weight_decay": 0.0, "lr": lr},
        ]
