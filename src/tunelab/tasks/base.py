"""The one interface every task implements, and the registry of tasks by `task.type`.

A task unit (tunelab/tasks/<name>/) owns everything that differs between tasks: its config section,
how its data is read and split, how its model is loaded (which head), how examples become batches
and a loss, what it measures before training (majority class; zero- and k-shot) and after, and what
its report and summary show. The Session (tunelab/session/) runs the same steps for every task and
never asks which one it has; inference (Predictor) asks for `kind` only, which says whether the model
classifies or generates.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import torch

from tunelab.config.schema import RunConfig, TaskConfig
from tunelab.config.sections import UnitRegistry

_UNITS = UnitRegistry("task")
#: class decorator: make a task available under `cls.name` as `task.type`
register = _UNITS.register


def registry() -> dict[str, type[Task]]:
    return dict(_UNITS.units)


class Task:
    name: ClassVar[str]
    config_cls: ClassVar[type[TaskConfig]]
    #: what inference does with the trained model: "classification" (labels and scores) or
    #: "generation" (text from a prompt)
    kind: ClassVar[str]
    default_metric: ClassVar[str]
    #: direction of each validation metric this task reports
    higher_is_better: ClassVar[dict[str, bool]] = {"loss": False}
    #: `tunelab export --onnx` can export this task's model
    onnx_export: ClassVar[bool] = False
    #: the test figure `tunelab compress` ranks smaller models by (see `test_quality`)
    quality_metric: ClassVar[str] = "loss"
    #: distillation compares teacher and student token by token (so both need one vocabulary)
    token_level_distillation: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig):
        self.cfg = cfg
        self.labels: list[str] = []
        self.new_modules: list[str] = []
        self.peft_task_type: str | None = None
        self.seq2seq = False
        self.tok = None
        self.precision = "fp32"
        self.splits = None

    # -- data ------------------------------------------------------------------------------------
    def load_splits(self, data_cfg=None):
        """The train/validation/test split (tunelab.data.Splits) of `data_cfg` (default: the run's);
        sets `self.labels` where the task has labels."""
        raise NotImplementedError

    def use_splits(self, splits) -> None:
        """Take `splits` made elsewhere (a federated client's own share) as if load_splits had read them."""
        self.splits, self.labels = splits, list(splits.labels)

    def read_file(self, path: str):
        """One user file in this task's columns, prepared but not split (`tunelab eval RUN --file`)."""
        raise NotImplementedError

    # -- model -----------------------------------------------------------------------------------
    def load_model(self, model_cfg=None, **extra):
        """(tokenizer, model) with this task's head; `extra` goes to `from_pretrained` (a method's
        quantization config). Records the weights the checkpoint lacked in `self.new_modules`."""
        raise NotImplementedError

    def head_modules(self, model) -> list[str]:
        """Modules trained in full and saved with any method: the new head and other fresh weights."""
        return self.new_modules

    def repeats_shapes(self) -> bool:
        """True when training batches come in few, repeating shapes (packed rows): wider CPU kernel
        caches then pay."""
        return False

    # -- training --------------------------------------------------------------------------------
    def prepare(self, tok, splits, precision: str) -> dict:
        """Tokenize what training and evaluation need; return train length statistics."""
        raise NotImplementedError

    def batches(self, epoch: int) -> list[np.ndarray]:
        """The epoch's micro-batches as index arrays: a pure function of (seed, epoch)."""
        raise NotImplementedError

    def collate(self, idx: np.ndarray) -> dict[str, torch.Tensor]:
        raise NotImplementedError

    def loss(self, model, batch) -> torch.Tensor:
        return model(**batch).loss

    #: what the loss averages over in a batch (None: examples); micro-batches are weighted by it
    loss_weight = None

    def validate(self, model) -> dict:
        raise NotImplementedError

    # -- knowledge distillation (tunelab distill) --------------------------------------------------
    def target_logits(self, model, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (n, classes) and targets (n,) that the task's loss compares: one row per example
        (classification) or per target token (generation)."""
        raise NotImplementedError

    def teacher_logits(self, teacher, splits) -> torch.Tensor | None:
        """The teacher's logits for every training example, computed once (row i: splits.train row i),
        or None when the teacher must run beside the student on each batch. `teacher` is a Predictor."""
        raise NotImplementedError

    def metric_for_best(self) -> str:
        return self.cfg.train.metric_for_best or self.default_metric

    # -- evaluation ------------------------------------------------------------------------------
    def baselines(self) -> dict[str, dict]:
        """Reference columns that need no model (majority class)."""
        return {}

    def evaluate_before(self, model) -> dict[str, dict]:
        """The base model on the test split, by column name (before; zero-shot, k-shot)."""
        return {"before": self.evaluate(model, "Evaluating before")}

    def evaluate(self, model, desc: str | None = "Evaluating") -> dict:
        """Test-split metrics of `model`."""
        raise NotImplementedError

    def test_quality(self, model) -> dict:
        """Test-split metrics that include `quality_metric`, as cheaply as they can be had."""
        return self.evaluate(model, None)

    def summary_fields(self) -> dict:
        """Task-specific entries of summary.json."""
        return {}

    def report_parts(self, columns: dict[str, dict]) -> dict:
        """Keyword arguments of runs.report.write_report: the columns to show (numbers only), labels,
        sample outputs."""
        return {"columns": columns}

    # -- inference -------------------------------------------------------------------------------
    def probe_inputs(self, n: int) -> list[str]:
        """Up to n model inputs from the test split (as text the model reads): what `export` checks
        its output on."""
        raise NotImplementedError
