"""A run folder, `runs/<name>-<timestamp>/`:

    config.yaml         resolved config (every default filled in)
    metrics.jsonl       one record per optimizer step / evaluation
    checkpoints/        resumable training state (see train/checkpoint.py)
    best/               trainable weights of the best validation step
    adapter/            the result in the ecosystem's format (PEFT folder + tokenizer + labels.json)
    report.md, plots/   before/after tables, loss curves, confusion matrices
    summary.json        numbers of the run; written last, so its presence means "complete"
    failed.json         why training stopped (a NaN loss, ...), with the last good checkpoint
    .lock               held (flock) by the process training the run: how `tunelab runs` tells running
                        from interrupted, even after a crash or a kill -9 (the kernel drops the lock)
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import time
from pathlib import Path

import yaml

from tunelab.config.schema import RunConfig
from tunelab.errors import TunelabError
from tunelab.runs.io import atomic_write_json, atomic_write_text


class RunDir:
    def __init__(self, path: Path):
        self.path = Path(path)

    # -- locations -----------------------------------------------------------------------------
    config_path = property(lambda self: self.path / "config.yaml")
    metrics_path = property(lambda self: self.path / "metrics.jsonl")
    checkpoints = property(lambda self: self.path / "checkpoints")
    best_dir = property(lambda self: self.path / "best")
    adapter_dir = property(lambda self: self.path / "adapter")
    plots_dir = property(lambda self: self.path / "plots")
    summary_path = property(lambda self: self.path / "summary.json")

    @property
    def complete(self) -> bool:
        return self.summary_path.is_file()

    @property
    def state(self) -> str:
        """complete / running / failed / interrupted (stopped without finishing: a resumable checkpoint
        when checkpoints/ has one) / new (nothing trained yet)."""
        if self.complete:
            return "complete"
        if self.running:
            return "running"
        if (self.path / "failed.json").is_file():
            return "failed"
        return "interrupted" if self.checkpoints.is_dir() or self.metrics_path.is_file() else "new"

    @property
    def running(self) -> bool:
        return self.trainer_pid() is not None

    def trainer_pid(self) -> int | None:
        """The process training this run now (it holds .lock and wrote its pid there), else None."""
        lock = self.path / ".lock"
        if not lock.is_file():
            return None
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                f.seek(0)
                text = f.read().strip()
                return int(text) if text.isdigit() else -1
            fcntl.flock(f, fcntl.LOCK_UN)
        return None

    @contextlib.contextmanager
    def hold(self):
        """Mark the run as running for as long as the block lasts (released by the kernel on any exit)."""
        with open(self.path / ".lock", "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise TunelabError(f"run '{self.path}' is being trained by another process; wait for it or stop it first") from None
            f.truncate(0)
            f.write(str(os.getpid()))
            f.flush()
            try:
                yield self
            finally:
                fcntl.flock(f, fcntl.LOCK_UN)

    # -- creation ------------------------------------------------------------------------------
    @classmethod
    def create(cls, cfg: RunConfig, overwrite: bool = False) -> RunDir:
        if cfg.output.dir:
            path = Path(cfg.output.dir)
        else:
            stamp = time.strftime("%Y%m%d-%H%M%S")
            path = Path(cfg.output.root) / f"{cfg.output.name or cfg.name}-{stamp}"
            n = 2
            while path.exists():
                path = path.with_name(f"{cfg.output.name or cfg.name}-{stamp}-{n}")
                n += 1
        if path.exists() and any(path.iterdir()):
            if (path / "config.yaml").exists() and not overwrite:
                raise TunelabError(
                    f"'{path}' already holds a run; pass --overwrite to replace it, --resume {path} to continue it, "
                    "or choose another output.dir"
                )
            if not (path / "config.yaml").exists():
                raise TunelabError(f"'{path}' exists and is not a tunelab run folder; choose another output.dir")
            shutil.rmtree(path)
        path.mkdir(parents=True, exist_ok=True)
        run = cls(path)
        atomic_write_text(run.config_path, yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False))
        return run

    @classmethod
    def open(cls, path: str | Path) -> RunDir:
        run = cls(Path(path))
        if not run.config_path.is_file():
            raise TunelabError(f"'{path}' is not a tunelab run folder (no config.yaml); give the folder `tunelab train` printed")
        return run

    def config(self) -> RunConfig:
        from tunelab.config.load import validate_config

        return validate_config(yaml.safe_load(self.config_path.read_text(encoding="utf-8")))

    # -- metrics log ---------------------------------------------------------------------------
    def log(self, record: dict) -> None:
        with open(self.metrics_path, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def metrics(self) -> list[dict]:
        if not self.metrics_path.is_file():
            return []
        out = []
        for line in self.metrics_path.read_text(encoding="utf-8").splitlines():
            try:
                out.append(json.loads(line))
            except json.JSONDecodeError:  # a line cut short by a crash
                continue
        return out

    def truncate_metrics(self, step: int) -> None:
        """On resume, drop records written after the checkpoint the run continues from."""
        kept = [r for r in self.metrics() if r.get("step", 0) <= step]
        atomic_write_text(self.metrics_path, "".join(json.dumps(r) + "\n" for r in kept))

    def write_json(self, name: str, obj) -> None:
        atomic_write_json(self.path / name, obj)

    def read_json(self, name: str):
        p = self.path / name
        return json.loads(p.read_text(encoding="utf-8")) if p.is_file() else None
