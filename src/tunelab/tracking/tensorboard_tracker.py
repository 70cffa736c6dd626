"""TensorBoard: event files in `<run>/tensorboard/` (`tensorboard --logdir runs` shows every run; a
compare or tune folder shows its trials side by side). The config is a text entry, the headline
hyper-parameters and test results an HParams entry."""

from __future__ import annotations

import yaml

from tunelab.tracking.base import Tracker, flatten, numbers

HPARAMS = ("model.name", "method.name", "method.r", "method.alpha", "train.lr", "train.epochs", "train.batch_size", "seed")


class TensorboardTracker(Tracker):
    backend = "tensorboard"

    def start(self, run):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(self.path / "tensorboard"))
        self.config = run["config"]
        if not run.get("resumed"):
            text = yaml.safe_dump(run["config"], sort_keys=False)
            self.writer.add_text("config", "    " + text.replace("\n", "\n    "))  # markdown code block

    def log(self, values, step):
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)

    def finish(self, summary, files, status):
        if summary:
            flat = flatten(self.config)
            hparams = {k: flat[k] for k in HPARAMS if isinstance(flat.get(k), (int, float, str, bool))}
            results = numbers({"after": (summary.get("test") or {}).get("after") or {}}, "hparam/test")
            if results:
                self.writer.add_hparams(hparams, results, run_name=".")
        self.writer.flush()
        self.writer.close()
