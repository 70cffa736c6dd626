"""Training and export jobs launched from the UI: each is the ordinary `tunelab` command in its own
process (a new session, so a crash or an OOM kill of training never takes the UI down, and closing
the UI does not kill a training run). Their output goes to `<root>/.ui/logs/`.

Stop sends SIGTERM to the process training the run (its pid is in the run's .lock, so this works for
runs started from the CLI too): the run pauses with a checkpoint (train/callbacks.py PauseOnSignal)
and Resume runs `tunelab train --resume`."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import yaml

from tunelab.config.schema import RunConfig
from tunelab.errors import TunelabError
from tunelab.runs.rundir import RunDir


class Jobs:
    def __init__(self, root: str | Path):
        self.root = Path(root).resolve()
        self.logs = self.root / ".ui" / "logs"
        self.procs: dict[str, subprocess.Popen] = {}

    def _launch(self, key: str, args: list[str], log: Path) -> subprocess.Popen:
        log.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "COLUMNS": "120", "PYTHONUNBUFFERED": "1", "TERM": "dumb"}
        with open(log, "a", encoding="utf-8") as out:
            out.write(f"$ tunelab {' '.join(args)}\n")
            out.flush()
            proc = subprocess.Popen([sys.executable, "-m", "tunelab", *args], stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, env=env, cwd=self.root.parent, start_new_session=True)
        self.procs[key] = proc
        return proc

    def log_path(self, run_path: str | Path) -> Path:
        return self.logs / f"{Path(run_path).name}.log"

    def new_run_path(self, cfg: RunConfig) -> Path:
        base = cfg.output.name or cfg.name
        path = self.root / f"{base}-{time.strftime('%Y%m%d-%H%M%S')}"
        n = 2
        while path.exists():
            path = self.root / f"{base}-{time.strftime('%Y%m%d-%H%M%S')}-{n}"
            n += 1
        return path

    def start_training(self, cfg: RunConfig) -> Path:
        """`tunelab train <the resolved config> output.dir=<a new folder under root>`."""
        path = self.new_run_path(cfg)
        recipe = self.root / ".ui" / "recipes" / f"{path.name}.yaml"
        recipe.parent.mkdir(parents=True, exist_ok=True)
        recipe.write_text(yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False), encoding="utf-8")
        self._launch(str(path), ["train", str(recipe), f"output.root={self.root}", f"output.dir={path}"], self.log_path(path))
        return path

    def wait_started(self, path: Path, timeout: float = 60.0) -> None:
        """Until the run folder exists (config.yaml written) or its process has exited."""
        t0 = time.time()
        proc = self.procs.get(str(path))
        while time.time() - t0 < timeout and not (path / "config.yaml").is_file():
            if proc is not None and proc.poll() is not None:
                break
            time.sleep(0.1)

    def stop(self, run_path: str | Path) -> str:
        run = RunDir(Path(run_path))
        pid = run.trainer_pid()
        if pid is None or pid <= 0:
            raise TunelabError(f"run '{run.path.name}' is not training now ({run.state})")
        os.kill(pid, signal.SIGTERM)
        return f"asked run {run.path.name} (pid {pid}) to stop after its current step; a checkpoint is kept"

    def resume(self, run_path: str | Path) -> str:
        run = RunDir.open(run_path)
        if run.state not in ("interrupted", "failed", "new"):
            raise TunelabError(f"run '{run.path.name}' is {run.state}; only a stopped run can be resumed")
        self._launch(str(run.path), ["train", "--resume", str(run.path)], self.log_path(run.path))
        return f"resuming {run.path.name}"

    def start_export(self, run_path: str | Path, args: list[str]) -> tuple[subprocess.Popen, Path]:
        log = self.logs / f"export-{Path(run_path).name}.log"
        log.unlink(missing_ok=True)
        return self._launch(f"export:{run_path}", ["export", str(run_path), *args], log), log

    def shutdown(self) -> None:
        """The UI's own exports are stopped with it; training runs go on (their own session)."""
        for key, proc in self.procs.items():
            if key.startswith("export:") and proc.poll() is None:
                proc.terminate()
