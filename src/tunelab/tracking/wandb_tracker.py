"""Weights & Biases: a run in the run folder (`<run>/wandb/`). Offline unless the user is logged in
(WANDB_API_KEY or `wandb login`) or WANDB_MODE says otherwise; an offline run is uploaded later with
`wandb sync <run>/wandb/offline-run-*`. compare and tune trials share a W&B group."""

from __future__ import annotations

import os
from pathlib import Path

from tunelab.tracking.base import Tracker, run_tags


def wandb_mode() -> str:
    mode = os.environ.get("WANDB_MODE")
    if mode:
        return mode
    if os.environ.get("WANDB_API_KEY"):
        return "online"
    try:
        import netrc

        hosts = netrc.netrc().hosts
        return "online" if any("wandb" in h for h in hosts) else "offline"
    except (FileNotFoundError, netrc.NetrcParseError, OSError):
        return "offline"


class WandbTracker(Tracker):
    backend = "wandb"

    def start(self, run):
        import wandb

        t = self.cfg.tracking
        run_id = self.saved_id()
        self.run = wandb.init(
            project=t.experiment or self.cfg.name, name=run["name"], group=t.group, config=run["config"],
            tags=[f"{k}:{v}"[:64] for k, v in run_tags(self.cfg).items()], dir=str(self.path), id=run_id,
            resume="allow" if run_id else None, mode=wandb_mode(), reinit="create_new",
            # console="off": W&B's stdout capture would fight the console's live progress bar;
            # x_disable_stats: no sampling thread competing with a 2-core training run.
            settings=wandb.Settings(console="off", silent=True, x_disable_stats=True))
        if not run_id:
            self.save_id(self.run.id)

    def log(self, values, step):
        self.run.log(values, step=step)

    def finish(self, summary, files, status):
        import wandb

        if summary:
            self.run.summary.update({k: v for k, v in summary.items() if isinstance(v, (int, float, str))})
        if files:
            art = wandb.Artifact(f"{self.run.name or self.run.id}-run".replace("/", "-"), type="model")
            for name, path in files.items():
                path = Path(path)
                if path.is_dir():
                    art.add_dir(str(path), name=name)
                elif path.is_file():
                    art.add_file(str(path))
            self.run.log_artifact(art)
        self.run.finish(exit_code=0 if status == "FINISHED" else 1)
