"""Tasks: recommend, retrieve, text2image. Each implements :class:`Task` (build an index, train,
evaluate, add, predict); :func:`get_task` imports a built-in task the first time it is asked for.

The names below load ``semid.tasks.base`` on first use, so that importing a light module of this
package (``semid.tasks.specs``) does not import torch (`semid COMMAND --help` answers at once)."""

from __future__ import annotations

from semid.lazy import lazy_getattr

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
__getattr__ = lazy_getattr(__name__, dict.fromkeys(__all__, "semid.tasks.base"))
