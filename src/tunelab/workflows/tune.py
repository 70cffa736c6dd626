"""`tunelab tune RECIPE [overrides]`: the thin CLI side of tunelab/search/."""

from __future__ import annotations

from pathlib import Path

from tunelab.search import tune as run_study


def tune(recipe: str | None, overrides: list[str], *, out: str | None, storage: str | None, study: str | None,
         rank: bool, n_trials: int | None, timeout_minutes: float | None) -> Path:
    return run_study(recipe, overrides, out=out, storage=storage, study_name=study, rank=rank, n_trials=n_trials,
                     timeout_minutes=timeout_minutes)
