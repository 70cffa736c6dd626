"""Question answering: closed-book (question -> answer) or with a context passage (SQuAD-style files
with `context` and `answers`), scored with SQuAD exact match and token F1 against every reference."""

from __future__ import annotations

from typing import Literal

from tunelab.data.generative import answers_list, map_columns, text_fields
from tunelab.metrics import text as tm
from tunelab.tasks.base import register
from tunelab.tasks.generative import GenerativeConfig, GenerativeTask
from tunelab.tasks.prompts import fill_template, single_turn


class QaConfig(GenerativeConfig):
    type: Literal["qa"] = "qa"


@register
class QaTask(GenerativeTask):
    name = "qa"
    config_cls = QaConfig
    primary_metric = "f1"
    fields = ("question", "answer")
    optional_fields = ("context",)
    default_prompt = "question: {question}"
    context_prompt = "question: {question} context: {context}"

    def prepare_frame(self, df, columns, source):
        df = map_columns(df, ("question",), ("answer", "context", "answers"), columns, source)
        if "answer" not in df.columns and "answers" in df.columns:
            df = df.assign(answer=df["answers"].map(lambda a: (answers_list(a) or [""])[0]))
        df = text_fields(map_columns(df, self.fields, (), {}, source), self.fields, self.optional_fields, keep=("answers",))
        refs = df["answers"].map(answers_list) if "answers" in df.columns else df["answer"].map(lambda a: [a])
        return df.assign(references=[r or [a] for r, a in zip(refs, df["answer"])])

    def template(self, row):
        return self.cfg.task.prompt or (self.context_prompt if row.get("context") else self.default_prompt)

    def conversation(self, row):
        fields = {k: v for k, v in row.items() if isinstance(v, str)}
        return single_turn(fill_template(self.template(row), fields), row["answer"], self.cfg.task.system_prompt)

    def input_row(self, text):
        return {"question": text, "answer": ""}

    def generation_metrics(self, predictions, refs):
        return tm.squad(predictions, refs)
