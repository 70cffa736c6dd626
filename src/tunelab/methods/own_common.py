"""Shared plumbing of tunelab's own methods (full, head, adapter, nblora, scalora).

They wrap target linear layers in plain `nn.Module`s (`Injected`) and save what they train, plus any
extra state a method declares, as `method_weights.safetensors` + `tunelab_method.json` (the method's
config, the head modules and the tensor names). `load()` re-applies the method to a fresh base and
loads those tensors: no pickle, nothing patched in library classes.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from tunelab.errors import TunelabError
from tunelab.methods.base import Method

WEIGHTS = "method_weights.safetensors"
META = "tunelab_method.json"


class Injected(nn.Module):
    """A frozen `base` linear layer plus a trained addition; subclasses define `extra(x, y)`
    (returns the new output given input x and the base output y) and, when the addition is linear in
    x, `delta_weight()` for merging."""

    def __init__(self, base: nn.Linear):
        super().__init__()
        self.base = base

    def forward(self, x):
        return self.extra(x, self.base(x))

    # Some model code reads its linear layers' weight (T5 checks `wo.weight.dtype`): pass it through.
    weight = property(lambda self: self.base.weight)
    bias = property(lambda self: self.base.bias)

    def extra(self, x, y):
        raise NotImplementedError

    def delta_weight(self) -> torch.Tensor | None:
        return None


class LowRankInjected(Injected):
    """Base of the LoRA-shaped wrappers: A (r x k, Kaiming-uniform) and B (d x r, zeros), input dropout."""

    def __init__(self, base: nn.Linear, r: int, dropout: float):
        super().__init__(base)
        d, k = base.out_features, base.in_features
        dev = base.weight.device
        self.lora_A = nn.Parameter(torch.empty(r, k, device=dev))
        nn.init.kaiming_uniform_(self.lora_A, a=math.sqrt(5))
        self.lora_B = nn.Parameter(torch.zeros(d, r, device=dev))
        self.drop = nn.Dropout(dropout) if dropout else nn.Identity()


def linear_shape(m: nn.Module) -> tuple[int, int]:
    """(out_features, in_features) of an nn.Linear or a GPT-2 style Conv1D."""
    if isinstance(m, nn.Linear):
        return m.out_features, m.in_features
    raise TunelabError(f"{type(m).__name__} is not an nn.Linear; tunelab's own methods wrap nn.Linear layers only")


def matching_linears(model: nn.Module, targets: list[str], skip: list[str]) -> list[str]:
    """Names of the nn.Linear modules whose name is a target or ends with '.target', outside `skip`."""
    out = []
    for name, m in model.named_modules():
        if any(name == s or name.startswith(s + ".") or f".{s}." in f".{name}." for s in skip):
            continue
        if isinstance(m, nn.Linear) and any(name == t or name.endswith("." + t) for t in targets):
            out.append(name)
    return out


def replace_module(model: nn.Module, name: str, new: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = model.get_submodule(parent_name) if parent_name else model
    setattr(parent, child, new)


def set_head_trainable(model: nn.Module, head_modules: list[str]) -> None:
    for h in head_modules:
        try:
            sub = model.get_submodule(h)
        except AttributeError:
            continue
        for p in sub.parameters():
            p.requires_grad_(True)


class OwnMethod(Method):
    """Subclasses implement `inject(model, head_modules)` (wrap layers, set requires_grad on what the
    method trains); the head modules are made trainable here. Buffers named by `extra_state(model)`
    (base.Method) are saved and loaded with the trainable parameters."""

    format = "tunelab"
    mergeable = True  # the low-rank and full/head methods fold into the base; see merge()
    why_not_mergeable = "its addition is not a linear map of the input"

    def inject(self, model: nn.Module, head_modules: list[str]) -> None:
        raise NotImplementedError

    def apply(self, model, *, head_modules, peft_task_type):
        for p in model.parameters():
            p.requires_grad_(False)
        self.inject(model, head_modules)
        set_head_trainable(model, head_modules)
        self.head_modules = list(head_modules)
        return model

    def save(self, model, out_dir: Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        tensors = self.trainable_state(model)  # what trains + extra_state, as checkpoints hold it
        save_file(tensors, str(out_dir / WEIGHTS))
        meta = {"method": self.name, "config": self.cfg.model_dump(), "head_modules": getattr(self, "head_modules", []),
                "tensors": sorted(tensors)}
        (out_dir / META).write_text(json.dumps(meta, indent=2), encoding="utf-8")

    def load(self, base, adapter_dir: Path, *, trainable: bool = False):
        adapter_dir = Path(adapter_dir)
        meta_path = adapter_dir / META
        if not meta_path.is_file():
            raise TunelabError(f"'{adapter_dir}' has no {META}; it was not saved by tunelab method '{self.name}'")
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta["method"] != self.name:
            raise TunelabError(f"'{adapter_dir}' holds a '{meta['method']}' adapter, not '{self.name}'; load it with method.name={meta['method']}")
        self.cfg = type(self.cfg).model_validate(meta["config"])
        model = self.apply(base, head_modules=meta["head_modules"], peft_task_type=None)
        tensors = load_file(str(adapter_dir / WEIGHTS))
        state = dict(model.named_parameters())
        state.update(dict(model.named_buffers()))
        unknown = [n for n in tensors if n not in state]
        if unknown:
            raise TunelabError(f"adapter '{adapter_dir}' does not fit this model (unexpected tensors {unknown[:3]}); "
                               "load it on the base model it was trained from")
        with torch.no_grad():
            for n, t in tensors.items():
                if n in state:
                    state[n].copy_(t)
        if not trainable:
            for p in model.parameters():
                p.requires_grad_(False)
            model.eval()
        return model

    def merge(self, model):
        """Fold every Injected layer's linear delta into its base weight and put the plain layer back."""
        names = [n for n, m in model.named_modules() if isinstance(m, Injected)]
        for name in names:
            m = model.get_submodule(name)
            delta = m.delta_weight()
            if delta is None:
                raise TunelabError(f"method '{self.name}' cannot be merged into the base weights: {self.why_not_mergeable}")
            with torch.no_grad():
                m.base.weight += delta.to(m.base.weight.dtype)
            replace_module(model, name, m.base)
        return model


def default_targets(model: nn.Module) -> list[str]:
    """peft's default LoRA targets for the architecture (query/value, q/v, q_proj/v_proj, ...)."""
    from peft.utils.constants import TRANSFORMERS_MODELS_TO_LORA_TARGET_MODULES_MAPPING as MAP

    model_type = getattr(getattr(model, "config", None), "model_type", None)
    if model_type not in MAP:
        raise TunelabError(f"no default target modules for model type '{model_type}'; set method.target_modules")
    return list(MAP[model_type])


def wrap_linears(model: nn.Module, targets: list[str] | None, head_modules: list[str], factory) -> list[nn.Module]:
    """Replace each target nn.Linear by `factory(linear)`; the wrappers' own parameters train."""
    from tunelab.methods.base import check_target_modules

    targets = targets or default_targets(model)
    check_target_modules(model, targets)
    names = matching_linears(model, targets, head_modules)
    if not names:
        raise TunelabError(f"none of the target modules {targets} is an nn.Linear in {type(model).__name__} "
                           "(tunelab's own low-rank methods wrap nn.Linear only); set method.target_modules")
    wrapped = []
    for n in names:
        layer = factory(model.get_submodule(n))
        replace_module(model, n, layer)
        for pn, p in layer.named_parameters():
            p.requires_grad_(not pn.startswith("base."))
        wrapped.append(layer)
    return wrapped
