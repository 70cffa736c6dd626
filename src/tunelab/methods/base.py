"""The one interface every adaptation method implements: apply to a model, list what trains, save,
load, merge."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from tunelab.config.schema import MethodConfig
from tunelab.errors import TunelabError

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make a method available under `cls.name` in recipes and the CLI."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise RuntimeError(f"method '{cls.name}' registered twice")
    _REGISTRY[cls.name] = cls
    return cls


def registry() -> dict[str, type[Method]]:
    return dict(_REGISTRY)


class Method:
    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    #: "peft" methods save a folder plain `peft.PeftModel.from_pretrained` loads.
    format: ClassVar[str] = "peft"

    def __init__(self, cfg: MethodConfig):
        self.cfg = cfg

    def apply(self, model: nn.Module, *, head_modules: list[str], peft_task_type: str | None) -> nn.Module:
        """Return the model made ready for training: only this method's parameters (and the new task
        head) have requires_grad=True."""
        raise NotImplementedError

    def save(self, model: nn.Module, out_dir: Path) -> None:
        raise NotImplementedError

    def load(self, base: nn.Module, adapter_dir: Path, *, trainable: bool = False) -> nn.Module:
        raise NotImplementedError

    def merge(self, model: nn.Module) -> nn.Module:
        raise TunelabError(f"method '{self.name}' cannot be merged into the base weights")

    # -- optional hooks (defaults do nothing); each is called from exactly one place ------------
    def model_load_kwargs(self, device: str | None = None) -> dict:
        """Extra `from_pretrained` kwargs for the base model (qlora: its quantization config and placement
        on `device`, default: the GPU when one is visible). Called by the workflows before the base is
        loaded, for training (with the run's device) and for reloading."""
        return {}

    def optimizer_groups(self, model: nn.Module, weight_decay: float, lr: float) -> list[dict] | None:
        """AdamW parameter groups (each may set its own "lr"), or None for the loop's default groups
        (loraplus: a larger learning rate for the B matrices)."""
        return None

    def before_optimizer_step(self, model: nn.Module, optimizer, step: int, total_steps: int) -> None:
        """Called by the loop before optimizer.step(), gradients in place, with `step` the number of the
        step about to be taken (1-based) (scalora: merge and rescale with the current gradient)."""

    def on_optimizer_step(self, model: nn.Module, optimizer, step: int, total_steps: int) -> None:
        """Called by the loop after optimizer.step() and before zero_grad(), with `step` the number of
        steps done (adalora: rank budget update)."""

    def extra_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """Model buffers, by their name in `model`, that are trained state besides the trainable
        parameters (scalora: the update merged so far). Saved with them in every checkpoint, best/ and
        the adapter, and copied back by name on load."""
        return {}

    def info(self) -> dict:
        """Method-specific numbers for the run summary (qlora: base memory before/after quantization)."""
        return {}


def check_target_modules(model: nn.Module, targets: list[str] | str | None) -> None:
    """Fail early, with the names that do exist, when a target module is not in the model."""
    if targets is None or isinstance(targets, str):  # None: library default; str: a regex
        return
    names = [n for n, _ in model.named_modules()]
    leaves = sorted({n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, nn.Linear)
                     or type(m).__name__ == "Conv1D"})
    missing = [t for t in targets if not any(n == t or n.endswith("." + t) for n in names)]
    if missing:
        raise TunelabError(
            f"target module(s) {', '.join(missing)} not found in the model; "
            f"linear layers it has: {', '.join(leaves)} (set method.target_modules)"
        )


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total
