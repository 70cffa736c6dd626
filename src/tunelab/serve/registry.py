"""The models a server holds in memory, by the name clients pass as `model`.

Each name is a finished tunelab run (base + adapter) or a plain HF model folder (e.g. a merged
`tunelab export`). Runs whose adapters are peft adapters on the same base (same model, task and
labels, not quantized) share ONE copy of the base: the later ones are added with peft's
`load_adapter` and the right one is switched on with `set_adapter` before each model call. Any other
run gets its own base copy. All model calls, loads included, happen on one model thread, so
switching adapters never races with a running forward pass.
"""

from __future__ import annotations

import re
import time
from dataclasses import dataclass, field
from pathlib import Path

from tunelab.errors import TunelabError
from tunelab.serve.schemas import NAME_PATTERN, ApiError
from tunelab.session import Predictor


@dataclass
class Group:
    """One base model in memory and the served names using it."""

    key: tuple | None  # None: never shared (non-peft method, plain HF folder)
    model: object
    names: set[str] = field(default_factory=set)


@dataclass
class Served:
    name: str
    source: str
    predictor: Predictor  # its .model is the group's (shared) model
    group: Group
    adapter: str | None  # peft adapter name inside the group's model; None: no adapter switching
    created: int = field(default_factory=lambda: int(time.time()))

    @property
    def task(self) -> str:
        """"classification" or "generation": which endpoints serve it."""
        return self.predictor.kind

    def activate(self) -> None:
        """Make this name's adapter the active one (call on the model thread)."""
        if self.adapter and self.group.model.active_adapter != self.adapter:
            self.group.model.set_adapter(self.adapter)


def parse_target(arg: str) -> tuple[str, str]:
    """CLI argument `path` or `name=path` -> (name, path); the default name is the folder's name."""
    name, sep, path = arg.partition("=")
    if not sep:
        name, path = Path(arg).resolve().name, arg
    return name, path


def check_name(name: str) -> None:
    if not re.fullmatch(NAME_PATTERN, name):
        raise ApiError(422, f"model name '{name[:80]}' is not allowed: use 1-64 letters, digits, '.', '_' or '-', "
                            "starting with a letter or digit")


class Registry:
    def __init__(self):
        self.served: dict[str, Served] = {}
        self.groups: list[Group] = []
        self._adapters = 0  # peft adapter names are internal ("a1", "a2"...): served names may hold '.'

    def get(self, name: str, task: str | None = None) -> Served:
        entry = self.served.get(name)
        if entry is None:
            raise ApiError(404, f"model '{name[:200]}' is not served; available: {', '.join(sorted(self.served)) or 'none'}",
                           "model_not_found")
        if task and entry.task != task:
            hint = "/v1/classify" if entry.task == "classification" else "/v1/chat/completions, /v1/completions or /v1/generate"
            raise ApiError(400, f"model '{name}' is a {entry.task} model; use {hint}")
        return entry

    # -- adding and removing (blocking: call on the model thread) -------------------------------
    def add(self, name: str, path: str) -> Served:
        check_name(name)
        if name in self.served:
            raise ApiError(409, f"model '{name}' is already served; remove it first (DELETE /admin/adapters/{name})")
        folder = Path(path)
        try:
            run, hf = (folder / "config.yaml").is_file(), (folder / "config.json").is_file()
        except (OSError, ValueError):  # unreadable, or not a path at all (a NUL byte)
            run = hf = False
        if run:
            entry = self._add_run(name, folder)
        elif hf:
            entry = self._add_hf_folder(name, folder)
        else:
            raise ApiError(400, f"'{path[:300]}' is neither a tunelab run folder (config.yaml) nor a HF model folder (config.json)")
        entry.group.names.add(name)
        self.served[name] = entry
        return entry

    def remove(self, name: str) -> None:
        entry = self.get(name)
        group = entry.group
        group.names.discard(name)
        del self.served[name]
        if not group.names:
            self.groups.remove(group)  # the base goes with its last user
        elif entry.adapter:
            other = self.served[next(iter(group.names))]
            other.activate()
            group.model.delete_adapter(entry.adapter)

    def _add_run(self, name: str, folder: Path) -> Served:
        from tunelab.methods import get_method
        from tunelab.runs.rundir import RunDir

        try:
            cfg = RunDir.open(folder).config()
            method = get_method(cfg.method.name)(cfg.method)
        except TunelabError as e:
            raise ApiError(400, f"cannot serve '{folder}': {e}") from None
        key = (cfg.model.name, cfg.task.type, tuple(_run_labels(folder))) if method.shares_base else None
        group = next((g for g in self.groups if key is not None and g.key == key), None)
        if group is not None:
            first = self.served[next(iter(group.names))]
            self._adapters += 1
            adapter = f"a{self._adapters}"
            group.model.load_adapter(str(folder / "adapter"), adapter_name=adapter)
            return Served(name, str(folder), first.predictor.sharing(folder), group, adapter)
        try:
            predictor = Predictor.from_run(str(folder))
        except TunelabError as e:
            raise ApiError(400, f"cannot serve '{folder}': {e}") from None
        group = Group(key, predictor.model)
        self.groups.append(group)
        adapter = predictor.model.active_adapter if key is not None else None  # peft calls the first one "default"
        return Served(name, str(folder), predictor, group, adapter)

    def _add_hf_folder(self, name: str, folder: Path) -> Served:
        """A plain transformers model (a merged export): a sequence classifier if its config says so
        (labels from id2label), otherwise a text generator, with its own context length."""
        try:
            predictor = Predictor.from_model_folder(folder)
        except TunelabError as e:
            raise ApiError(400, f"cannot serve '{folder}': {e}") from None
        group = Group(None, predictor.model)
        self.groups.append(group)
        return Served(name, str(folder), predictor, group, adapter=None)


def _run_labels(folder: Path) -> list[str]:
    import json

    labels_file = folder / "adapter" / "labels.json"
    return json.loads(labels_file.read_text(encoding="utf-8")) if labels_file.is_file() else []
