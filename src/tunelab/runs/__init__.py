"""Run folders: resolved config, metrics log, checkpoints, adapter, report, summary."""

from tunelab.runs.rundir import RunDir

__all__ = ["RunDir"]
