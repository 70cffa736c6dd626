"""The one interface every adaptation method implements: apply to a model, list what trains, save,
load, merge; and the capabilities the rest of tunelab reads instead of probing or listing names
(whether it merges and why not, which serving engines load its output, whether served runs can share
one base, what it trains fresh)."""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

import torch
from torch import nn

from tunelab.config.schema import MethodConfig
from tunelab.config.sections import UnitRegistry
from tunelab.errors import TunelabError
from tunelab.models.state import load_trainable_state, trainable_state

_UNITS = UnitRegistry("method")
#: class decorator: make a method available under `cls.name` in recipes and the CLI
register = _UNITS.register


def registry() -> dict[str, type[Method]]:
    return dict(_UNITS.units)


class Method:
    name: ClassVar[str]
    config_cls: ClassVar[type[MethodConfig]]
    #: "peft" methods save a folder plain `peft.PeftModel.from_pretrained` loads.
    format: ClassVar[str] = "peft"
    #: whether `merge` folds the trained update into the base weights exactly, and if not, why not
    mergeable: ClassVar[bool] = False
    why_not_mergeable: ClassVar[str] = "it has no merge into the base weights"
    #: serving engines that load this method's saved output as it is ("torch": `tunelab serve`;
    #: "vllm": vLLM's LoRA adapter loading)
    serving_engines: ClassVar[frozenset[str]] = frozenset({"torch"})

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
        raise TunelabError(f"method '{self.name}' cannot be merged into the base weights: {self.why_not_mergeable}")

    def check_mergeable(self) -> None:
        """Fail before anything loads when this method cannot merge (export checks it first)."""
        if not self.mergeable:
            raise TunelabError(f"method '{self.name}' cannot be merged into the base weights: {self.why_not_mergeable}; "
                               "keep the adapter folder and load it on the base model")

    @property
    def shares_base(self) -> bool:
        """Runs of this method on the same base can share one copy of it in a server (peft adapters
        switched with set_adapter, on an unquantized base)."""
        return self.format == "peft" and not self.model_load_kwargs()

    def fresh_modules(self, head_modules: list[str]) -> list[str]:
        """Modules this method trains in full from the task: the new head and whatever else the
        checkpoint lacked. Quantizing exporters and QLoRA leave them in full precision."""
        return list(head_modules)

    # -- the trained state -----------------------------------------------------------------------
    def trainable_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        """What a checkpoint, best/ and a federated update hold: trainable parameters + extra_state."""
        return trainable_state(model, self.extra_state(model))

    def load_trainable_state(self, model: nn.Module, tensors: dict[str, torch.Tensor]) -> None:
        load_trainable_state(model, tensors, list(self.extra_state(model)))

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


def top_layers(model: nn.Module, k: int | None, targets: list[str] | str | None) -> list[int] | None:
    """The 0-based indices of the model's last `k` layers, or None for all of them (k None, or not fewer
    than the model has). A regex target cannot be combined with layer indices in peft: said here."""
    if k is None:
        return None
    if isinstance(targets, str):
        raise TunelabError("method.top_k_layers needs method.target_modules as a list of names, not a regex "
                           "(or set method.top_k_layers=null and put the layer numbers in the regex)")
    n = getattr(getattr(model, "config", None), "num_hidden_layers", None)
    if not isinstance(n, int):
        raise TunelabError(f"method.top_k_layers: {type(model).__name__} does not say how many layers it has "
                           "(config.num_hidden_layers); set method.top_k_layers=null")
    return None if k >= n else list(range(n - k, n))
