"""`tunelab train`: the Session end to end (tunelab/session/session.py)."""

from __future__ import annotations

from tunelab.config.schema import RunConfig
from tunelab.runs.rundir import RunDir
from tunelab.session import Session


def train(cfg: RunConfig | None = None, *, resume: str | None = None, overwrite: bool = False) -> RunDir:
    """Run a recipe end to end and return its run folder. With `resume`, continue that run from its
    latest checkpoint under its saved config."""
    session = Session.resume(resume) if resume else Session.from_config(cfg, overwrite=overwrite)
    return session.run()
