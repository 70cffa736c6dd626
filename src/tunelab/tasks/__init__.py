"""Tasks: how a model is built for the task, how examples become batches, how outputs are scored."""

from tunelab.tasks.classification import ClassificationTask
from tunelab.tasks.generative import GenerativeTask

GENERATIVE = ("summarization", "qa", "translation", "chat")


def get_task(name: str):
    if name == "classification":
        return ClassificationTask()
    if name in GENERATIVE:
        return GenerativeTask(name)
    raise KeyError(name)


__all__ = ["GENERATIVE", "ClassificationTask", "GenerativeTask", "get_task"]
