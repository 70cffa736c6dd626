"""Hyper-parameter search and rank selection on Optuna (`tunelab tune`): one study, shared by every
worker that opens its storage. Trials are Sessions with one more loop callback (the pruner's)."""

from tunelab.search.runner import resolve, tune

__all__ = ["resolve", "tune"]
