"""AdaLoRA: LoRA in SVD form (P diag(E) Q) whose rank budget is reallocated during training by
importance scores, from `init_r` per matrix down to an average `target_r` (Zhang et al. 2023)."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import peft
from pydantic import Field

from tunelab.config.schema import MethodConfig
from tunelab.methods.base import check_target_modules, register
from tunelab.methods.peft_common import PeftMethod, head_list


class AdaLoraConfig(MethodConfig):
    name: Literal["adalora"] = "adalora"
    init_r: int = Field(12, ge=1, description="initial rank of every adapted matrix")
    target_r: int = Field(4, ge=1, description="average rank the budget is pruned down to")
    alpha: float = Field(16, gt=0)
    dropout: float = Field(0.1, ge=0, lt=1)
    target_modules: list[str] | str | None = None
    tinit: float = Field(0.1, ge=0, lt=1, description="fraction of steps of warm-up before pruning starts")
    tfinal: float = Field(0.2, ge=0, lt=1, description="fraction of final steps with the budget fixed")
    delta_t: int = Field(10, ge=1, description="steps between budget reallocations")
    orth_reg_weight: float = Field(0.5, ge=0)


@register
class AdaLoraMethod(PeftMethod):
    name = "adalora"
    config_cls = AdaLoraConfig

    def peft_config(self, head_modules, peft_task_type, total_step: int = 1000):
        c = self.cfg
        return peft.AdaLoraConfig(
            task_type=peft_task_type, init_r=c.init_r, target_r=c.target_r, lora_alpha=c.alpha,
            lora_dropout=c.dropout, target_modules=c.target_modules, total_step=total_step,
            tinit=int(c.tinit * total_step), tfinal=int(c.tfinal * total_step), deltaT=c.delta_t,
            orth_reg_weight=c.orth_reg_weight, modules_to_save=head_list(head_modules),
        )

    def apply(self, model, *, head_modules, peft_task_type):
        check_target_modules(model, self.cfg.target_modules)
        return super().apply(model, head_modules=head_modules, peft_task_type=peft_task_type)

    def on_optimizer_step(self, model, optimizer, step, total_steps):
        pcfg = model.peft_config["default"]
        if pcfg.total_step != total_steps:  # the schedule follows the loop's real step count
            pcfg.total_step = total_steps
            pcfg.tinit = int(self.cfg.tinit * total_steps)
            pcfg.tfinal = int(self.cfg.tfinal * total_steps)
            if pcfg.tinit >= total_steps - pcfg.tfinal:
                pcfg.tinit, pcfg.tfinal = 0, 0
        model.base_model.update_and_allocate(step)

    def load(self, base, adapter_dir: Path, *, trainable: bool = False):
        # peft 0.21.2: an AdaLoRA model loaded with is_trainable=False has no `trainable_adapter_name`
        # and its forward with labels raises AttributeError. Load it trainable, then freeze it.
        model = peft.PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=True)
        if not trainable:
            for p in model.parameters():
                p.requires_grad_(False)
            model.eval()
        return model
