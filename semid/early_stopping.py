"""Early stopping on a validation loss: keep the best weights, stop after `patience` bad epochs.

Used by ``hrq`` and by the hierarchy benchmark's parent predictor, so both sides of a comparison
stop by the same rule and their training curves can be plotted from the same record.
"""

from __future__ import annotations

import copy
import math

from torch import nn


class EarlyStopping:
    """Tracks one validation value per epoch (lower is better) and the weights of the best epoch."""

    def __init__(self, patience: int | None, min_delta: float = 1e-4) -> None:
        if patience is not None and patience < 1:
            raise ValueError(f"patience must be >= 1 or None, got {patience}")
        self.patience = patience
        self.min_delta = min_delta
        self.best = math.inf
        self.best_epoch = -1
        self.bad_epochs = 0
        self.history: list[float] = []
        self._state: dict | None = None

    def update(self, value: float, module: nn.Module | None = None) -> bool:
        """Record this epoch's value (copying `module`'s weights if it is the best); True = stop.

        An improvement is a value below best - min_delta * max(1, |best|) (relative for large
        losses). With patience None the record is kept but training never stops early."""
        self.history.append(float(value))
        threshold = (
            self.best - self.min_delta * max(1.0, abs(self.best))
            if self.best < math.inf
            else math.inf
        )
        if value < threshold:
            self.best, self.best_epoch, self.bad_epochs = float(value), len(self.history) - 1, 0
            if module is not None:
                self._state = copy.deepcopy(module.state_dict())
        else:
            self.bad_epochs += 1
        return self.patience is not None and self.bad_epochs >= self.patience

    def restore(self, module: nn.Module) -> None:
        """Load the best epoch's weights back into `module` (no-op if none were kept)."""
        if self._state is not None:
            module.load_state_dict(self._state)

    @property
    def stopped_early(self) -> bool:
        """Whether the last update ran out of patience (the run converged by this rule)."""
        return self.patience is not None and self.bad_epochs >= self.patience
