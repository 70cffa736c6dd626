"""Automatic per-layer LoRA rank (tune.strategy=layer_rank): one short run at a high rank, then for
each adapted layer the smallest rank whose singular values of the learned update B @ A keep
`tune.energy` of its spectral energy (sum of squared singular values). The ranks become peft's
`rank_pattern`; the pattern is then trained with the full budget beside a uniform rank of the same
parameter count and AdaLoRA with that average rank, all three as trials of the study."""

from __future__ import annotations

import torch

from tunelab.config.tune import TuneConfig


def energy_rank(delta: torch.Tensor, share: float) -> int:
    """Smallest k whose top-k singular values hold `share` of the squared singular values."""
    s2 = torch.linalg.svdvals(delta.detach().float()) ** 2
    if float(s2.sum()) == 0.0:
        return 1
    kept = torch.cumsum(s2, 0) / s2.sum()
    return int((kept < share - 1e-9).sum()) + 1


def spectral_ranks(model, share: float) -> dict[str, dict]:
    """{module name: {"rank", "width" (in + out features)}} of every LoRA layer of a peft model."""
    from peft.tuners.lora import LoraLayer

    out = {}
    for name, m in model.named_modules():
        if isinstance(m, LoraLayer) and "default" in m.lora_A:
            a, b = m.lora_A["default"].weight, m.lora_B["default"].weight
            key = name.removeprefix("base_model.model.")
            out[key] = {"rank": energy_rank(b @ a, share), "width": a.shape[1] + b.shape[0]}
    return out


def variants(ranks: dict[str, dict], t: TuneConfig) -> dict[str, dict]:
    """The three trained variants at (about) the same number of LoRA parameters."""
    pattern = {k: v["rank"] for k, v in ranks.items()}
    params = sum(v["rank"] * v["width"] for v in ranks.values())
    uniform = max(1, round(params / sum(v["width"] for v in ranks.values())))
    scale = t.alpha_per_rank or 2.0
    return {
        "per-layer": {"method.r": uniform, "method.alpha": scale * uniform, "method.rank_pattern": pattern,
                      "method.alpha_pattern": {k: scale * r for k, r in pattern.items()}},
        "uniform": {"method.r": uniform, "method.alpha": scale * uniform},
        "adalora": {"method.name": "adalora", "method.init_r": 2 * uniform, "method.target_r": uniform,
                    "method.alpha": scale * uniform},
    }
