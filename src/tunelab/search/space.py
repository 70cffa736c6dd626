"""The search space: sampling a trial's values from Optuna, and checking every dimension against the
recipe before any trial runs (so a typo costs a second, not a study)."""

from __future__ import annotations

from typing import Any

from tunelab.config import load_config, parse_overrides
from tunelab.config.load import merge_dicts
from tunelab.config.sections import section_classes
from tunelab.config.tune import Dimension
from tunelab.errors import TunelabError

#: sampled first: the unit they pick decides which of its keys exist (a conditional space)
SWITCHES = ("task.type", "method.name")


def nest(dotted: dict[str, Any]) -> dict:
    """{"train.lr": 1e-3} -> {"train": {"lr": 1e-3}}."""
    out: dict = {}
    for key, value in dotted.items():
        node = out
        *parents, leaf = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


def trial_overrides(user: list[str], params: dict[str, Any], extra: dict[str, Any] | None = None) -> dict:
    """The user's command-line overrides, then the trial's values, then tunelab's own (output folder...).
    A trial that picks another method keeps only the user's method keys that method has."""
    mine = parse_overrides(user)
    cls = section_classes("method").get(params.get("method.name"))
    if cls is not None and isinstance(mine.get("method"), dict):
        mine["method"] = {k: v for k, v in mine["method"].items() if k in cls.model_fields}
    return merge_dicts(merge_dicts(mine, nest(params)), nest(extra or {}))


def ordered(space: dict[str, Dimension]) -> list[str]:
    return sorted(space, key=lambda k: (k not in SWITCHES, SWITCHES.index(k) if k in SWITCHES else 0))


def applies(key: str, params: dict, base_method: str) -> bool:
    """A method key is searched only when the trial's method has it (method.r with method.name=full: no)."""
    if not key.startswith("method.") or key == "method.name":
        return True
    cls = section_classes("method").get(params.get("method.name", base_method))
    return cls is None or key.split(".")[1] in cls.model_fields


def suggest(trial, space: dict[str, Dimension], base_method: str) -> dict[str, Any]:
    """One value per dimension from the Optuna trial (define-by-run, so conditional keys just work)."""
    params: dict[str, Any] = {}
    for key in ordered(space):
        if not applies(key, params, base_method):
            continue
        d = space[key]
        kind = d.kind
        if kind == "choices":
            params[key] = trial.suggest_categorical(key, d.choices)
        elif kind in ("int", "log_int"):
            low, high = d.bounds
            params[key] = trial.suggest_int(key, low, high, log=kind == "log_int", step=int(d.step or 1))
        else:
            low, high = d.bounds
            params[key] = trial.suggest_float(key, low, high, log=kind == "log_uniform",
                                              step=d.step if kind == "uniform" else None)
    return params


def check_space(recipe: str | None, user: list[str], space: dict[str, Dimension]) -> None:
    """Every value a dimension can take (a range's two ends, every choice) makes a valid config."""
    base = load_config(recipe, user)
    switches = [k for k in SWITCHES if k in space]
    for key in ordered(space):
        for value in space[key].values():
            params = {key: value}
            if key.startswith("method.") and key != "method.name" and not applies(key, {}, base.method.name):
                # the recipe's method lacks the key: check it with a searched method that has it
                fits = [m for m in (space["method.name"].choices if "method.name" in switches else [])
                        if applies(key, {"method.name": m}, base.method.name)]
                if not fits:
                    raise TunelabError(f"tune.space: '{key}' is not a key of method '{base.method.name}' "
                                       "(nor of any method in tune.space's method.name)")
                params["method.name"] = fits[0]
            try:
                load_config(recipe, trial_overrides(user, params))
            except TunelabError as e:
                raise TunelabError(f"tune.space.{key}={value!r}: {e}") from None
