"""Tasks: how a model is built for the task, how examples become batches, how outputs are scored."""

from tunelab.tasks.classification import ClassificationTask

TASKS = {"classification": ClassificationTask}


def get_task(name: str):
    return TASKS[name]()


__all__ = ["TASKS", "ClassificationTask", "get_task"]
