"""Packaged YAML recipes. `tunelab recipes` lists them; any recipe can also be a path to a file."""

from __future__ import annotations

from pathlib import Path

import yaml

from tunelab.errors import TunelabError

RECIPES_DIR = Path(__file__).parent


def recipe_names() -> list[str]:
    return sorted(p.stem for p in RECIPES_DIR.glob("*.yaml"))


def describe(name: str) -> str:
    raw = yaml.safe_load((RECIPES_DIR / f"{name}.yaml").read_text(encoding="utf-8")) or {}
    return str(raw.get("description", "")).strip()


def find_recipe(recipe: str | Path) -> Path:
    path = Path(recipe)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise TunelabError(f"recipe file '{path}' does not exist; `tunelab recipes` lists the packaged ones")
        return path
    packaged = RECIPES_DIR / f"{recipe}.yaml"
    if packaged.is_file():
        return packaged
    import difflib

    close = difflib.get_close_matches(str(recipe), recipe_names(), n=1)
    hint = f"did you mean '{close[0]}'? " if close else ""
    raise TunelabError(f"no recipe named '{recipe}'; {hint}`tunelab recipes` lists them, or pass a .yaml path")
