"""What a method trains, as tensors by name: the trainable parameters plus the method's extra trained
buffers. Checkpoints, best/, federated updates and adapters all move exactly this set."""

from __future__ import annotations

import torch
from torch import nn


def count_parameters(model: nn.Module) -> tuple[int, int]:
    """(trainable, total) parameter counts."""
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def trainable_state(model: nn.Module, extra: dict[str, torch.Tensor] | None = None) -> dict[str, torch.Tensor]:
    """Trainable parameters plus `extra` (a method's trained buffers, `Method.extra_state`), on the CPU."""
    out = {n: p.detach().contiguous().cpu() for n, p in model.named_parameters() if p.requires_grad}
    out.update({n: t.detach().contiguous().cpu() for n, t in (extra or {}).items()})
    return out


def load_trainable_state(model: nn.Module, tensors: dict[str, torch.Tensor], extra_names: list[str] = ()) -> None:
    """Copy `tensors` into the model by name; every trainable parameter (and each of `extra_names`) must
    be there, and nothing else."""
    targets = {**dict(model.named_buffers()), **dict(model.named_parameters())}
    expected = [n for n, p in model.named_parameters() if p.requires_grad] + list(extra_names)
    missing = [n for n in expected if n not in tensors]
    unknown = [n for n in tensors if n not in targets]
    if missing or unknown:
        raise RuntimeError(f"checkpoint does not fit the model (missing {missing[:3]}, unexpected {unknown[:3]})")
    with torch.no_grad():
        for n, t in tensors.items():
            targets[n].copy_(t)
