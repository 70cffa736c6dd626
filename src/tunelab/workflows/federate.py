"""`tunelab federate RECIPE [overrides]`: the thin CLI side of tunelab/federated/."""

from __future__ import annotations

from pathlib import Path

from tunelab.federated.experiment import federate as run_federation


def federate(recipe: str | None, overrides: list[str], *, strategies: list[str] | None, superlink: str | None,
             out: str | None, baselines: bool | None, dp_noise: list[float] | None = None) -> Path:
    return run_federation(recipe, overrides, strategies=strategies, superlink=superlink, out=out, baselines=baselines,
                          dp_noise=dp_noise)
