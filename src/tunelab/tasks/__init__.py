"""Tasks. Each task is one self-contained unit (`tunelab/tasks/<name>/`) that defines its config
section and a `Task` subclass and registers both with `@register`; importing this package imports
every unit, so adding a task touches one folder (see tasks/base.py for the interface)."""

from __future__ import annotations

from tunelab.config.sections import import_units
from tunelab.tasks.base import Task, register, registry

import_units(__name__, __path__)  # the config loader finds task sections once this package is imported


def get_task(name: str) -> type[Task]:
    return registry()[name]


def task_names() -> list[str]:
    return sorted(registry())


def make_task(cfg) -> Task:
    """The task unit of a config, bound to it."""
    return get_task(cfg.task.type)(cfg)


__all__ = ["Task", "get_task", "make_task", "register", "task_names"]
