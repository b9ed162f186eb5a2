"""Tasks: recommend, retrieve (documents), text2image. Each implements :class:`Task` (build an index,
train, evaluate, add, predict); importing this package registers them."""

from semid.tasks import recommend, retrieve, text2image  # noqa: F401  (registers the tasks)
from semid.tasks.base import (
    EvalOptions,
    IndexSource,
    Predictor,
    Task,
    get_task,
    load_predictor,
    resolve_device,
    task_of_run,
)

__all__ = [
    "EvalOptions",
    "IndexSource",
    "Predictor",
    "Task",
    "get_task",
    "load_predictor",
    "resolve_device",
    "task_of_run",
]
