"""Plug-in config sections. A method's section (`method:`) and a task's section (`task:`) are defined
next to their unit (tunelab/methods/<name>/, tunelab/tasks/<name>/) and registered here under the
name that selects them (`method.name`, `task.type`), so the schema never lists them.

The config layer sits below the plug-ins, so it never imports them: the plug-in packages are found
through the `tunelab.plugins` entry-point group (tunelab's own `methods` and `tasks` are declared in
pyproject.toml; another package can add its own the same way) and imported the first time a
section is looked up."""

from __future__ import annotations

import functools
import importlib
from importlib.metadata import entry_points

from pydantic import BaseModel

KINDS = {"method": "name", "task": "type"}  # section -> the key that picks its class
_SECTIONS: dict[str, dict[str, type[BaseModel]]] = {kind: {} for kind in KINDS}
PLUGIN_GROUP = "tunelab.plugins"
BUILTIN_PLUGINS = ("tunelab.methods", "tunelab.tasks")


def register_section(kind: str, name: str, cls: type[BaseModel]) -> None:
    known = _SECTIONS[kind]
    if name in known and known[name] is not cls:
        raise RuntimeError(f"{kind} '{name}' registered twice")
    known[name] = cls


@functools.cache
def load_plugins() -> None:
    """Import every plug-in package once (each registers its units on import)."""
    names = {ep.value for ep in entry_points(group=PLUGIN_GROUP)}
    # Run from a source tree without an install, the entry points are missing: the built-in units
    # are still found.
    for name in sorted(names | set(BUILTIN_PLUGINS)):
        importlib.import_module(name)


def section_classes(kind: str) -> dict[str, type[BaseModel]]:
    load_plugins()
    return dict(_SECTIONS[kind])


class UnitRegistry:
    """The plug-in units of one kind (methods by name, tasks by type): a class decorator that also
    registers the unit's config section."""

    def __init__(self, kind: str):
        self.kind = kind
        self.units: dict[str, type] = {}

    def register(self, cls: type) -> type:
        if cls.name in self.units and self.units[cls.name] is not cls:
            raise RuntimeError(f"{self.kind} '{cls.name}' registered twice")
        self.units[cls.name] = cls
        register_section(self.kind, cls.name, cls.config_cls)
        return cls


def import_units(package: str, path) -> None:
    """Import every subpackage of a plug-in package: each unit registers itself on import."""
    import pkgutil

    for info in pkgutil.iter_modules(path):
        if info.ispkg:
            importlib.import_module(f"{package}.{info.name}")
