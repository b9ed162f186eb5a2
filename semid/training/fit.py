"""Train a model with the shared loop and keep its best weights: the one path every task uses."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn
from torch.utils.data import Dataset

from semid.saving import load_state
from semid.training.config import TrainConfig, TrainResult
from semid.training.trainer import Trainer


def train_model(
    model: nn.Module,
    dataset: Dataset,
    config: TrainConfig,
    out_dir: str | os.PathLike,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    collate_fn: Callable[[list[Any]], Any] | None = None,
    resume: bool = True,
    device: str = "auto",
    trained_on: dict[str, Any] | None = None,
) -> TrainResult:
    """Fit ``model`` with :class:`Trainer` (checkpoints in ``out_dir``, resumed unless ``resume`` is
    False, or refused when ``trained_on`` differs from the checkpoints') on ``device`` (see
    :class:`Trainer`) and load the best weights into it (the last ones when nothing was evaluated)."""
    if not resume:  # the trainer clears its checkpoints but not the best weights of an earlier run
        shutil.rmtree(Path(out_dir) / "best", ignore_errors=True)
    trainer = Trainer(
        model,
        dataset,
        config,
        out_dir,
        evaluate=evaluate,
        collate_fn=collate_fn,
        device=device,
        trained_on=trained_on,
    )
    result = trainer.fit(resume=resume)
    if result.best_path.is_file():  # absent when max_steps ended training before any save
        load_state(model, result.best_path)
    return result
