"""Shared plumbing of the peft-backed methods: apply through `get_peft_model`, save/load the PEFT
folder (the new task head rides along as `modules_to_save`), merge where peft can."""

from __future__ import annotations

from pathlib import Path

import peft
from torch import nn

from tunelab.errors import TunelabError
from tunelab.methods.base import Method


class PeftMethod(Method):
    """Subclasses implement `peft_config(head_modules, peft_task_type)`; `mergeable` says whether
    peft's merge_and_unload is exact for this method."""

    format = "peft"
    mergeable = True
    why_not_mergeable = ""

    def peft_config(self, head_modules: list[str], peft_task_type: str | None) -> peft.PeftConfig:
        raise NotImplementedError

    def apply(self, model, *, head_modules, peft_task_type):
        try:
            return peft.get_peft_model(model, self.peft_config(head_modules, peft_task_type))
        except (ValueError, TypeError, AttributeError, NotImplementedError) as e:
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            raise TunelabError(f"method '{self.name}' cannot be applied to {type(model).__name__}: {msg}") from None

    def save(self, model: peft.PeftModel, out_dir: Path) -> None:
        model.save_pretrained(str(out_dir), safe_serialization=True)

    def load(self, base: nn.Module, adapter_dir: Path, *, trainable: bool = False) -> nn.Module:
        return peft.PeftModel.from_pretrained(base, str(adapter_dir), is_trainable=trainable)

    def merge(self, model: peft.PeftModel) -> nn.Module:
        self.check_mergeable()
        return model.merge_and_unload()


def head_list(head_modules: list[str]) -> list[str] | None:
    return list(head_modules) or None
