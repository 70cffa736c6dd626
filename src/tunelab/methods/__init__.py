"""Adaptation methods. Each method is one self-contained subpackage (`tunelab/methods/<name>/`) that
defines its config section and a `Method` subclass and registers both with `@register`; this package
imports every subpackage on first use, so adding a method touches one folder."""

from __future__ import annotations

import importlib
import pkgutil

from tunelab.methods.base import Method, register, registry


def _discover() -> None:
    for info in pkgutil.iter_modules(__path__):
        if info.ispkg:
            importlib.import_module(f"{__name__}.{info.name}")


def get_method(name: str) -> type[Method]:
    _discover()
    return registry()[name]


def method_names() -> list[str]:
    _discover()
    return sorted(registry())


__all__ = ["Method", "get_method", "method_names", "register"]
