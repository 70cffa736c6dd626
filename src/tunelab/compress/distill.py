"""Knowledge distillation: a student run trained on a finished teacher run's outputs.

The student run is an ordinary run folder (before/after on the same test split, adapter/ or full
weights, report), made by the one Session with its loss swapped through the loop's hooks:

    loss = alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, labels)

with both distributions softened by temperature T (Hinton et al., 2015: the T^2 keeps the soft
term's gradients on the scale of the hard one's as T grows). Classification teachers' outputs are
computed once over the training set and cached (one row of class scores per example); a generative
teacher runs beside the student on each batch, token by token (its full-vocabulary logits over the
training set would not fit), which needs the same tokenizer on both sides. alpha = 0 is the same
student trained on labels alone, at the same budget: the baseline distillation must beat.
"""

from __future__ import annotations

import dataclasses

import torch
import torch.nn.functional as F

from tunelab.errors import TunelabError
from tunelab.runs.io import atomic_write_json
from tunelab.runtime import autocast
from tunelab.session import Predictor, Session

TEACHER_KEY = "teacher_logits"  # rides in the batch dict, so the loop's slicing keeps rows aligned


class DistillSession(Session):
    def __init__(self, cfg, run, teacher: Predictor, *, alpha: float, temperature: float, teacher_source: str):
        super().__init__(cfg, run)
        self.teacher, self.alpha, self.temperature, self.teacher_source = teacher, alpha, temperature, teacher_source
        self.cached: torch.Tensor | None = None

    def prepare(self) -> dict:
        stats = super().prepare()
        if self.task.labels and list(self.task.labels) != list(self.teacher.labels):
            raise TunelabError(f"the student's labels {self.task.labels} differ from the teacher's {self.teacher.labels}; "
                               "distil on the teacher's own data and labels")
        if self.alpha > 0:
            self.cached = self.task.teacher_logits(self.teacher, self.splits)
            if self.cached is None:  # the teacher runs beside the student (vocabularies checked by distill_run)
                self.teacher.model.to(self.device).eval()
        atomic_write_json(self.run_dir.path / "distill.json", {
            "teacher": self.teacher_source, "student": self.cfg.model.name, "alpha": self.alpha,
            "temperature": self.temperature, "teacher_outputs": "cached per example" if self.cached is not None else
            ("computed beside the student on each batch" if self.alpha > 0 else "unused (labels only)")})
        return stats

    def evaluate_before(self) -> dict:
        before = super().evaluate_before()
        teacher = self.teacher.run.read_json("summary.json") if self.teacher.run else None
        if teacher and teacher.get("test", {}).get("after"):
            self.before = {**before, "teacher": teacher["test"]["after"]}  # shown beside before/after in the report
        return self.before

    def hooks(self):
        hooks = super().hooks()
        if self.alpha == 0:
            return hooks
        collate = hooks.collate

        def with_teacher(idx):
            batch = collate(idx)
            if self.cached is not None:
                batch[TEACHER_KEY] = self.cached[torch.as_tensor(idx)]
            return batch

        return dataclasses.replace(hooks, collate=with_teacher, loss=self.loss)

    def loss(self, model, batch) -> torch.Tensor:
        teacher = batch.pop(TEACHER_KEY, None)
        logits, targets = self.task.target_logits(model, batch)
        if teacher is None:
            with torch.no_grad(), autocast(self.precision, self.device):
                teacher, _ = self.task.target_logits(self.teacher.model, batch)
        return kd_loss(logits, teacher, targets, self.alpha, self.temperature)


def kd_loss(student: torch.Tensor, teacher: torch.Tensor, targets: torch.Tensor, alpha: float, temperature: float):
    """Mean over rows of alpha * T^2 * KL(teacher_T || student_T) + (1 - alpha) * CE(student, targets)."""
    s, t = student.float(), teacher.float().detach()
    hard = F.cross_entropy(s, targets)
    soft = F.kl_div(F.log_softmax(s / temperature, -1), F.log_softmax(t / temperature, -1), log_target=True,
                    reduction="batchmean") * temperature**2
    return alpha * soft + (1 - alpha) * hard


def check_same_vocabulary(teacher_tok, student_tok, teacher: str, student: str) -> None:
    if teacher_tok.get_vocab() != student_tok.get_vocab():
        raise TunelabError(f"token-level distillation needs the teacher's tokenizer: '{student}' has a different "
                           f"vocabulary than the teacher '{teacher}'; choose a student of the same family "
                           "(or --student-layers N: the teacher with fewer layers)")


def check_settings(alpha: float, temperature: float) -> None:
    if not 0.0 <= alpha <= 1.0:
        raise TunelabError(f"--alpha must be in [0, 1] (the weight of the teacher's term), not {alpha}")
    if temperature <= 0:
        raise TunelabError(f"--temperature must be > 0, not {temperature}")

