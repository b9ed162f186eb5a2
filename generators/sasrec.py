"""SASRec with full cross-entropy: the dense sequential baseline, in the same harness as the generators.

SASRec (Kang & McAuley, 2018) trained with a softmax over *all* items rather than sampled negatives:
independent re-runs of TIGER found this the strongest dense baseline, so it is the one to beat.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, ClassVar

import torch
from torch import Tensor, nn

from semid.data.splits import PAD
from semid.dropout import BitDropout
from semid.item_softmax import item_cross_entropy
from semid.layers import SelfAttentionBlock, causal_bias
from semid.models import register_model

if TYPE_CHECKING:
    from semid.ids import SemanticIDs


@dataclass
class SASRecConfig:
    """SASRec hyper-parameters (defaults follow RecBole's SASRec, with full-softmax CE)."""

    LIMITS: ClassVar = {**dict.fromkeys(("max_len", "dim", "layers", "heads", "ff_mult"), "count"),
                        "dropout": "probability"}  # fmt: skip
    DIVIDES: ClassVar = ("dim", "heads")

    num_items: int = 0  # index rows; set from the index (sized_for)
    max_len: int = 50
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    ff_mult: int = 4  # RecBole: inner size 256 for hidden 64


@register_model("sasrec")
class SASRec(nn.Module):
    """Causal self-attention over item embeddings; scores every item with the shared embedding table."""

    config_class = SASRecConfig
    train_format = "sequence"  # trains on every position of a window at once

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = c = config
        self.item_emb = nn.Embedding(c.num_items + 1, c.dim, padding_idx=0)  # row 0 is PAD
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(c.dim, c.heads, c.dropout, c.ff_mult) for _ in range(c.layers)
        )
        self.ln, self.drop = nn.LayerNorm(c.dim), BitDropout(c.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    SIZED_FIELDS: ClassVar[dict[str, str]] = {"num_items": "the index", "max_len": "--max-history"}

    @classmethod
    def sized_for(
        cls, config: SASRecConfig, ids: SemanticIDs, max_history: int = 50, **context: object
    ) -> SASRecConfig:
        """The config for an index of ``len(ids)`` rows and histories of ``max_history`` items."""
        return replace(config, num_items=len(ids), max_len=max_history)

    def encode(self, items: Tensor, last_only: bool = False) -> Tensor:
        """Hidden states (B, T, D) for left-padded histories of index rows (B, T), PAD = -1;
        ``last_only``: the last position's only, (B, 1, D), at less cost."""
        items = items[:, -self.config.max_len :]
        x = self.item_emb(items + 1) * self.config.dim**0.5 + self.pos_emb.weight[-items.shape[1] :]
        x = self.drop(x)
        bias = causal_bias(items)
        for i, block in enumerate(self.blocks):
            x = block(x, bias, last_only=last_only and i == len(self.blocks) - 1)
        return self.ln(x)

    def scores(self, hidden: Tensor) -> Tensor:
        """Logits (..., N) over every item for hidden states (..., D)."""
        return hidden @ self.item_emb.weight[1:].T

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Cross-entropy over all items at every position with a next item -> (loss, hidden states
        (R, D) of those R positions, which :meth:`scores` turns into logits). Padding is never
        scored, a large saving on long, short-filled windows; the (R, N) logits are made a chunk at
        a time on large catalogues (:func:`~semid.item_softmax.item_cross_entropy`)."""
        hidden = self.encode(batch["items"])
        target = batch["next_items"][:, -hidden.shape[1] :]
        real = target >= 0
        rows = hidden[real]
        return item_cross_entropy(rows, self.item_emb.weight[1:], target[real]), rows

    def score_rows(self, batch: dict[str, Tensor]) -> Tensor:
        """Scores (B, num_items) of every item after each history's last position. History rows
        past ``num_items`` (items added to the index after training, which have no embedding) are
        left out of the history."""
        items = without_unknown_rows(batch["items"], self.config.num_items)
        return self.scores(self.encode(items, last_only=True)[:, -1])


def without_unknown_rows(items: Tensor, num_items: int) -> Tensor:
    """Left-padded histories (B, T) of index rows less the rows at or past ``num_items``, still
    left-padded (PAD = -1), the other items in their order."""
    known = items < num_items  # PAD too: only the unknown rows move
    # a stable sort by known-ness moves the unknown rows, made PAD, to the left and keeps the rest
    # in place order (no test first for rows to leave out: on a GPU that would wait for the device)
    order = known.to(torch.uint8).sort(dim=1, stable=True).indices
    return torch.where(known, items, PAD).gather(1, order)
