"""What every tracking backend shares: the loop/session events turned into a few calls (start, log
numbers at a step, finish with files), and the rule that a tracker never stops a run.

A backend that raises (a server down, a bad URI, no disk) prints one warning line naming the backend
and the error, and is off for the rest of the run; training goes on and metrics.jsonl, written by the
loop's own MetricsLog callback, still has every number."""

from __future__ import annotations

import json
import math
from pathlib import Path

from tunelab.config.schema import RunConfig
from tunelab.console import console
from tunelab.runs.io import atomic_write_json
from tunelab.runtime import peak_rss_mb
from tunelab.train.loop import Callback


def flatten(d: dict, prefix: str = "", sep: str = ".") -> dict:
    """Nested dict -> {"a.b.c": value} over scalars (lists of scalars become one string)."""
    out = {}
    for k, v in d.items():
        key = f"{prefix}{sep}{k}" if prefix else str(k)
        if isinstance(v, dict):
            out.update(flatten(v, key, sep))
        elif isinstance(v, list):
            if all(not isinstance(x, (dict, list)) for x in v):
                out[key] = ",".join(map(str, v))
        else:
            out[key] = v
    return out


def numbers(d: dict, prefix: str) -> dict[str, float]:
    """The finite numbers of a (nested) metrics dict as `prefix/a/b` keys; bools and lists are skipped."""
    return {k: float(v) for k, v in flatten(d, prefix, "/").items()
            if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)}


def run_tags(cfg: RunConfig) -> dict[str, str]:
    data = cfg.data.name or cfg.data.path or cfg.data.train_path
    return {"task": cfg.task.type, "model": cfg.model.name, "method": cfg.method.name, "dataset": str(data),
            "seed": str(cfg.seed), "recipe": cfg.name, **cfg.tracking.tags}


class Tracker(Callback):
    """One backend. Subclasses implement start / log / finish; the events below call them through
    `_safe`, so a backend error is one warning, not a failed run. Only the main process has trackers
    (the Session makes them there)."""

    backend = "?"

    def __init__(self, cfg: RunConfig, run_path: Path):
        self.cfg, self.path = cfg, Path(run_path)
        self.off = False
        self.step = 0
        self._pending: dict[int, dict] = {}

    # -- what a backend implements ---------------------------------------------------------------
    def start(self, run: dict) -> None: ...

    def log(self, values: dict[str, float], step: int) -> None: ...

    def finish(self, summary: dict | None, files: dict[str, Path], status: str) -> None:
        """status: FINISHED, FAILED or KILLED (interrupted)."""

    # -- the rule ------------------------------------------------------------------------------------
    def _safe(self, fn, *args) -> None:
        if self.off:
            return
        try:
            fn(*args)
        except Exception as e:  # noqa: BLE001 -- any backend error: warn once, keep training
            self.off = True
            msg = str(e).strip().splitlines()[0][:200] if str(e).strip() else ""
            console.print(f"[yellow]warning:[/] tracking backend '{self.backend}' is off for this run "
                          f"({type(e).__name__}{': ' + msg if msg else ''}); training goes on, metrics.jsonl has every number")

    # -- ids kept in the run folder, so a resumed run continues the same tracked run -------------------
    def saved_id(self) -> str | None:
        p = self.path / "tracking.json"
        return json.loads(p.read_text()).get(self.backend) if p.is_file() else None

    def save_id(self, run_id: str) -> None:
        p = self.path / "tracking.json"
        ids = json.loads(p.read_text()) if p.is_file() else {}
        atomic_write_json(p, {**ids, self.backend: run_id})

    # -- the events ---------------------------------------------------------------------------------
    def on_run_begin(self, run):
        self._safe(self.start, run)

    def on_step_end(self, loop, record):
        self.step = record["step"]
        secs = record.get("seconds") or 0.0
        values = {"train/loss": record["loss"], "train/lr": record["lr"], "train/epoch": record["epoch"]}
        if record.get("grad_norm") is not None:
            values["train/grad_norm"] = record["grad_norm"]
        if secs > 0:
            values["train/examples_per_s"] = record["examples"] / secs
            if record.get("tokens"):
                values["train/tokens_per_s"] = record["tokens"] / secs
        values["train/peak_rss_mb"] = peak_rss_mb()
        if loop.accelerator.device.type == "cuda":
            import torch

            values["train/cuda_max_allocated_mb"] = torch.cuda.max_memory_allocated() / 2**20
        self._pending[self.step] = values
        if self.step % self.cfg.tracking.log_every_steps == 0:
            self._flush()

    def _flush(self) -> None:
        for step, values in sorted(self._pending.items()):
            self._safe(self.log, values, step)
        self._pending.clear()

    def on_evaluate(self, loop, metrics, improved):
        self._flush()
        self._safe(self.log, numbers(metrics, "validation"), loop.state["step"])

    def on_train_end(self, loop):
        self._flush()

    def on_run_test(self, phase, columns):
        self._safe(self.log, numbers(columns, "test"), self.step)

    def on_run_end(self, summary, files):
        self._flush()
        self._safe(self.finish, summary, files if self.cfg.tracking.artifacts else {}, "FINISHED")

    def on_run_failed(self, error, interrupted):
        self._flush()
        self._safe(self.finish, None, {}, "KILLED" if interrupted else "FAILED")
