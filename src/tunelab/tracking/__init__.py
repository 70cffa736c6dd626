"""Experiment tracking: each backend is a callback of the loop and of the Session (train/loop.py's
`Callback`, its `on_run_*` events included), so the loop and the pipeline never ask which trackers a
run has. `trackers_for(cfg, run_path)` makes a run's; `ParentRun` is a compare or tune as one tracked
run whose trainings are its children."""

from __future__ import annotations

from pathlib import Path

from tunelab.config.schema import RunConfig
from tunelab.tracking.base import Tracker
from tunelab.tracking.parent import ParentRun


def trackers_for(cfg: RunConfig, run_path: Path) -> list[Tracker]:
    from tunelab.tracking.mlflow_tracker import MlflowTracker
    from tunelab.tracking.tensorboard_tracker import TensorboardTracker
    from tunelab.tracking.wandb_tracker import WandbTracker

    kinds = {"mlflow": MlflowTracker, "wandb": WandbTracker, "tensorboard": TensorboardTracker}
    return [kinds[b](cfg, run_path) for b in dict.fromkeys(cfg.tracking.backends)]


__all__ = ["ParentRun", "Tracker", "trackers_for"]
