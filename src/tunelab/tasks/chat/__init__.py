"""Chat: multi-turn conversations, the loss on every assistant reply; scored on the last reply with
ROUGE and the perplexity of the references."""

from __future__ import annotations

from typing import Literal

from tunelab.data.generative import map_columns, messages_list
from tunelab.metrics import text as tm
from tunelab.tasks.base import register
from tunelab.tasks.generative import GenerativeConfig, GenerativeTask
from tunelab.tasks.prompts import with_system


class ChatConfig(GenerativeConfig):
    type: Literal["chat"] = "chat"


@register
class ChatTask(GenerativeTask):
    name = "chat"
    config_cls = ChatConfig
    primary_metric = "perplexity"
    fields = ("messages",)

    def prepare_frame(self, df, columns, source):
        df = map_columns(df, self.fields, (), columns, source)
        df = df.assign(messages=df["messages"].map(messages_list))
        df = df[df["messages"].map(lambda m: len(m) >= 2 and m[-1]["role"] == "assistant")]
        return df.assign(references=df["messages"].map(lambda m: [m[-1]["content"]]))

    def conversation(self, row):
        return with_system([dict(m) for m in row["messages"]], self.cfg.task.system_prompt)

    def input_row(self, text):
        return {"messages": [{"role": "user", "content": text}, {"role": "assistant", "content": ""}]}

    def generation_metrics(self, predictions, refs):
        scores = tm.rouge(predictions, [r[0] for r in refs])
        return {k: 100 * v for k, v in scores.items()}
