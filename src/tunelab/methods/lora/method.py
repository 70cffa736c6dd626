from __future__ import annotations

from typing import Literal

import peft
from pydantic import Field

from tunelab.config.schema import MethodConfig
from tunelab.methods.base import check_target_modules, register, top_layers
from tunelab.methods.peft_common import PeftMethod, head_list


class LoraConfig(MethodConfig):
    name: Literal["lora"] = "lora"
    r: int = Field(8, ge=1, description="rank of the update B @ A")
    alpha: float = Field(16, gt=0, description="scaling numerator: update is (alpha / r) * B @ A")
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | str | None = Field(
        None, description="module names (or a regex); default: peft's choice for the architecture"
    )
    top_k_layers: int | None = Field(
        None, ge=1, description="adapters only in the last k transformer layers (all of them when the model has no "
        "more; peft's layers_to_transform): the gradient stops at the lowest adapted layer, so the backward pass "
        "skips the layers below it. None: every layer"
    )
    bias: Literal["none", "all", "lora_only"] = "none"
    use_rslora: bool = Field(False, description="scale by alpha / sqrt(r) (rank-stabilized LoRA)")
    use_dora: bool = Field(False, description="weight-decomposed LoRA (DoRA)")
    init: Literal["default", "gaussian", "pissa", "olora"] = Field(
        "default", description="pissa: A, B from the top-r singular vectors of W, W keeps the residual"
    )
    rank_pattern: dict[str, int] = Field(default_factory=dict, description="per-layer ranks: module name (or "
                                         "regex suffix) -> rank, overriding r there (peft's rank_pattern)")
    alpha_pattern: dict[str, float] = Field(default_factory=dict, description="per-layer alpha, as rank_pattern")


def lora_peft_config(c, head_modules: list[str], peft_task_type: str | None, layers: list[int] | None = None,
                     **extra) -> peft.LoraConfig:
    """The peft LoraConfig of any LoRA-family section (lora, loraplus, qlora share the fields);
    `layers`: `c.top_k_layers` as the model's 0-based layer indices."""
    return peft.LoraConfig(
        task_type=peft_task_type,
        r=c.r,
        lora_alpha=c.alpha,
        lora_dropout=c.dropout,
        target_modules=c.target_modules,
        layers_to_transform=layers,
        bias=c.bias,
        use_rslora=c.use_rslora,
        use_dora=c.use_dora,
        init_lora_weights={"default": True}.get(c.init, c.init),
        rank_pattern=dict(c.rank_pattern),
        alpha_pattern=dict(c.alpha_pattern),
        # The new task head is trained in full and saved inside the adapter folder, so the
        # adapter alone restores the fine-tuned classifier.
        modules_to_save=head_list(head_modules),
        **extra,
    )


@register
class LoraMethod(PeftMethod):
    name = "lora"
    config_cls = LoraConfig
    serving_engines = frozenset({"torch", "vllm"})  # vLLM loads peft LoRA folders as they are

    def peft_config(self, head_modules, peft_task_type):
        return lora_peft_config(self.cfg, head_modules, peft_task_type, layers=getattr(self, "_layers", None))

    def apply(self, model, *, head_modules, peft_task_type):
        check_target_modules(model, self.cfg.target_modules)
        self._layers = top_layers(model, self.cfg.top_k_layers, self.cfg.target_modules)
        return super().apply(model, head_modules=head_modules, peft_task_type=peft_task_type)
