"""Hybrid ranking: a generator's beams and its item-level head, mixed per candidate item.

A generator with an item head (``model.has_item_head()``, e.g. MMGRec with ``item_loss`` > 0) scores
a query two ways: log p(ID) from the ID decoder and log p(item) from a softmax over index rows.
:class:`HybridRanker` takes the union of the beam-search answers and the head's top rows (as many
as there are beams), scores every candidate by

    log p(ID) + w * log p(item)

and keeps the top k; ``seen`` rows are excluded from both sources. Beam answers keep their beam
log-probs; the head's extra candidates get theirs teacher-forced (``Generator.score_codes``), so
both are exact. Rows the head does not know (added after training) get the query's lowest head
log-prob. The mixing weight w (``model.config.item_mix``) is chosen on the valid split
(:func:`choose_mix`); w = 0 makes :func:`semid.ranking.ranker_for` return plain beam search.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from semid.ids import SemanticIDs
from semid.metrics import compute_metrics
from semid.ranking import BeamRanker, Ranking, beams_for, codes_of, pad_to, seen_mask

MIX_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # candidate weights w, chosen on valid


@dataclass
class Candidates:
    """Candidate rows of a batch of queries with both of their scores."""

    rows: Tensor  # (B, C) int64 index rows, -1 where none
    gen: Tensor  # (B, C) log p(ID), -inf where none
    item: Tensor  # (B, C) log p(item) from the head

    def top(self, weight: float, k: int, ids: SemanticIDs) -> Ranking:
        """The k best candidates by log p(ID) + weight * log p(item)."""
        score = self.gen + weight * self.item if weight else self.gen.clone()
        score = score.masked_fill(self.rows < 0, float("-inf"))
        best, order = score.topk(min(k, score.shape[1]), dim=1)
        rows = torch.where(best > float("-inf"), self.rows.gather(1, order), -1)
        rows, best = pad_to(rows, best, k)
        return Ranking(rows, best, codes_of(ids, rows))


class HybridRanker:
    """Beam search plus a generator's item head, mixed with weight ``mix`` (see the module doc)."""

    def __init__(self, model: Any, ids: SemanticIDs, num_beams: int | None = None,
                 mix: float = 1.0, **cold: Any) -> None:  # fmt: skip
        self.model, self.ids, self.mix = model, ids, mix
        self.beam = BeamRanker(model, ids, num_beams, **cold)

    def to(self, device: torch.device | str) -> HybridRanker:
        """Move the search structures to ``device``."""
        self.beam.to(device)
        return self

    def rank(self, batch: Any, k: int, seen: Tensor | None = None) -> Ranking:
        """Top-k rows (B, k) by the mixed score, ``seen`` excluded."""
        return self.candidates(batch, k, seen).top(self.mix, k, self.ids)

    @torch.no_grad()
    def candidates(self, batch: Any, k: int, seen: Tensor | None = None) -> Candidates:
        """The union of the beams and the head's top rows (B, 2 * beams), with both scores."""
        beams = beams_for(self.beam.num_beams, k)
        found = self.beam.rank(batch, beams, seen)
        head = self._head(batch, seen)  # (B, N)
        best, top = (t.cpu() for t in head.topk(min(beams, head.shape[1]), dim=1))
        top = top.masked_fill(best == float("-inf"), -1)  # seen rows
        top = top.masked_fill((top[:, :, None] == found.rows[:, None, :]).any(-1), -1)
        trie = self.beam.trie
        extra = self.model.score_codes(batch, trie, self.ids.codes[top.clamp(min=0)].to(trie.device))
        rows = torch.cat([found.rows, top], 1)
        gen = torch.cat([found.scores, extra.cpu().float()], 1)
        return Candidates(rows, gen.masked_fill(rows < 0, float("-inf")), _gather(head.cpu(), rows))

    def _head(self, batch: Any, seen: Tensor | None) -> Tensor:
        """Head log-probs (B, N index rows): unknown rows at the query's lowest, seen rows -inf."""
        head = self.model.item_log_probs(batch).float()
        n = len(self.ids)
        if head.shape[1] < n:
            floor = head.min(dim=1, keepdim=True).values.expand(-1, n - head.shape[1])
            head = torch.cat([head, floor], 1)
        head = head[:, :n]
        if seen is not None and seen.shape[1]:
            head = head.masked_fill(seen_mask(seen.to(head.device), n), float("-inf"))
        return head


def _gather(head: Tensor, rows: Tensor) -> Tensor:
    """Head log-probs (B, C) of candidate rows (B, C); -inf where the row is -1."""
    return head.gather(1, rows.clamp(min=0)).masked_fill(rows < 0, float("-inf"))


def choose_mix(parts: list[Candidates], targets: Tensor, ids: SemanticIDs,
               grid: tuple[float, ...] = MIX_GRID, k: int = 10) -> tuple[float, dict[str, float]]:  # fmt: skip
    """The weight of ``grid`` with the best NDCG@k on queries whose candidates are ``parts`` and
    whose answers are ``targets`` (Q,) (ties: the smallest weight), and NDCG@k of every weight."""
    ndcg = {}
    for weight in grid:
        rows = torch.cat([c.top(weight, k, ids).rows for c in parts])
        ndcg[str(weight)] = compute_metrics(rows, targets, ks=(k,), names=("ndcg",))[f"ndcg@{k}"]
    best = max(grid, key=lambda w: (ndcg[str(w)], -w))
    return best, ndcg
