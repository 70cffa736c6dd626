"""Adaptation methods. Each method is one self-contained subpackage (`tunelab/methods/<name>/`) that
defines its config section and a `Method` subclass and registers both with `@register`; importing this
package imports every unit, so adding a method touches one folder."""

from __future__ import annotations

from tunelab.config.sections import import_units
from tunelab.methods.base import Method, register, registry

import_units(__name__, __path__)  # the config loader finds method sections once this package is imported


def get_method(name: str) -> type[Method]:
    return registry()[name]


def method_names() -> list[str]:
    return sorted(registry())


__all__ = ["Method", "get_method", "method_names", "register"]
