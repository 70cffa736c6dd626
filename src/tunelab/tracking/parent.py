"""A `tunelab compare` or `tunelab tune` as one tracked run with every training as a child: an MLflow
parent run (children carry mlflow.parentRunId) and a W&B group; TensorBoard needs nothing (each
training's event files are in its own run folder under the compare/tune folder)."""

from __future__ import annotations

from pathlib import Path

from tunelab.config.schema import RunConfig
from tunelab.console import console


class ParentRun:
    def __init__(self, cfg: RunConfig, name: str, kind: str, folder: Path):
        self.mlflow = None
        self.group = f"{kind}-{name}" if "wandb" in cfg.tracking.backends else None
        if "mlflow" in cfg.tracking.backends:
            try:
                from tunelab.tracking.mlflow_tracker import MlflowParent

                self.mlflow = MlflowParent(cfg, name, kind, folder)
            except Exception as e:  # noqa: BLE001 -- as for a run: warn once, go on without it
                console.print(f"[yellow]warning:[/] tracking backend 'mlflow' is off for this {kind} "
                              f"({type(e).__name__}: {str(e).strip()[:200]}); the trainings go on")

    def child_settings(self) -> dict:
        """The tracking section every child training gets (merged into its config)."""
        out = dict(self.mlflow.child_settings()) if self.mlflow else {}
        if self.group:
            out["group"] = self.group
        return out

    def _safe(self, fn, *args) -> None:
        if self.mlflow is None:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001
            console.print(f"[yellow]warning:[/] tracking backend 'mlflow' failed for the parent run ({type(e).__name__}: "
                          f"{str(e).strip()[:200]}); results are in the folder")
            self.mlflow = None

    def log(self, values: dict[str, float], step: int | None = None) -> None:
        self._safe(self.mlflow.log if self.mlflow else None, values, step)

    def finish(self, files: dict[str, Path], status: str = "FINISHED") -> None:
        self._safe(self.mlflow.finish if self.mlflow else None, files, status)
