"""Most-popular: the baseline every recommender must beat; recommends the most interacted items."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from semid.models import register_model

if TYPE_CHECKING:
    from semid.ids import SemanticIDs


@dataclass
class MostPopularConfig:
    """Only the catalogue size; the counts are fitted from the training interactions."""

    num_items: int = 0


@register_model("pop")
class MostPopular(nn.Module):
    """Scores every index row by its number of training interactions (ties: lower row first)."""

    config_class = MostPopularConfig
    reads_histories = False  # the same ranking for every history
    trainable = False  # fitted by counting (`fit_train_sequences_`), not by gradient steps

    def __init__(self, config: MostPopularConfig) -> None:
        super().__init__()
        self.config = config
        self.register_buffer("popularity", torch.zeros(config.num_items, dtype=torch.float64))

    SIZED_FIELDS: ClassVar[dict[str, str]] = {"num_items": "the index"}

    @classmethod
    def sized_for(
        cls, config: MostPopularConfig, ids: SemanticIDs, **context: object
    ) -> MostPopularConfig:
        """The config for an index of ``len(ids)`` rows."""
        return MostPopularConfig(num_items=len(ids))

    def fit_counts_(self, train_rows: Tensor) -> None:
        """Count the training interactions (E,) per index row."""
        counts = torch.bincount(train_rows, minlength=self.config.num_items)
        self.popularity.copy_(counts[: self.config.num_items].double())

    def fit_train_sequences_(self, items: Tensor, ptr: Tensor) -> None:
        """Fit from the training sequences (index rows ``items`` (E,), CSR ``ptr``): count them."""
        self.fit_counts_(items)

    def score_rows(self, batch: dict[str, Tensor]) -> Tensor:
        """Scores (B, N): each row's training interactions, the same for every query."""
        return self.popularity.expand(_batch_size(batch), -1)

    def ranking_keys(self, scores: Tensor) -> Tensor:
        """What ranks ``scores`` (B, N): the scores, ties going to lower rows (a decreasing offset
        below the gap between two counts keeps topk's order deterministic)."""
        n = scores.shape[-1]
        return scores - torch.arange(n, dtype=scores.dtype, device=scores.device) / max(n, 1) * 1e-3


def _batch_size(batch: dict[str, Tensor]) -> int:
    return next(iter(batch.values())).shape[0]
