"""Hybrid ranking: a generator's beams and its item-level head, mixed per candidate item.

A generator with an item head (``model.has_item_head()``, e.g. MMGRec with ``item_loss`` > 0) scores
a query two ways: log p(ID) from the ID decoder and log p(item) from a softmax over index rows.
:class:`HybridRanker` takes the union of the beam-search answers and the head's top rows (as many
as there are beams), scores every candidate by

    log p(ID) + w * log p(item)

and keeps the top k; ``seen`` rows are excluded from both sources. Beam answers keep their beam
log-probs; the head's extra candidates get theirs teacher-forced (``Generator.score_codes``), so
both are exact. Rows the head does not know (added after training by ``semid index add``) get the
head's log-prob of their semantic neighbours: the log of the mean head probability of the trained
rows that share the longest prefix of their ID (:func:`neighbour_weights`); a row that shares not
even a first code with a trained row gets the query's lowest head log-prob. The mixing weight w (``model.config.item_mix``) is chosen on the valid split
(:func:`choose_mix`); w = 0 makes :func:`semid.ranking.ranker_for` return plain beam search.

A third view is optional: lexical log-probs of the query over every row (``batch["lexical"]``
(B, N), e.g. BM25 of the query text, :mod:`semid.lexical`), whose top rows join the candidates and
which add ``lexical_mix`` * log p_lex(row) to the score (``model.config.lexical_mix``, chosen on the
valid split with w).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from semid.errors import SemidError
from semid.ids import SemanticIDs, codes_of_rows
from semid.metrics import compute_metrics
from semid.ranking import BeamRanker, Ranking, beams_for, pad_to, seen_mask

MIX_GRID = (0.0, 0.25, 0.5, 1.0, 2.0, 4.0, 8.0)  # candidate weights w, chosen on valid
# candidate lexical weights, when there are scores
LEXICAL_GRID = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5, 1.0, 2.0, 4.0)


@dataclass
class Candidates:
    """Candidate rows of a batch of queries with both of their scores."""

    rows: Tensor  # (B, C) int64 index rows, -1 where none
    gen: Tensor  # (B, C) log p(ID), -inf where none
    item: Tensor  # (B, C) log p(item) from the head
    lexical: Tensor | None = None  # (B, C) lexical log-probs of the rows, when the batch had them

    def top(self, weight: float, k: int, ids: SemanticIDs, lexical_weight: float = 0.0) -> Ranking:
        """The k best candidates by log p(ID) + weight * log p(item) + lexical_weight * log p_lex."""
        score = self.gen + weight * self.item if weight else self.gen.clone()
        if lexical_weight:
            score = score + lexical_weight * self.lexical
        score = score.masked_fill(self.rows < 0, float("-inf"))
        best, order = score.topk(min(k, score.shape[1]), dim=1)
        rows = torch.where(best > float("-inf"), self.rows.gather(1, order), -1)
        rows, best = pad_to(rows, best, k)
        return Ranking(rows, best, codes_of_rows(ids.codes, rows))


class HybridRanker:
    """Beam search plus a generator's item head, mixed with weight ``mix`` (see the module doc)."""

    def __init__(self, model: Any, ids: SemanticIDs, num_beams: int | None = None,
                 mix: float = 1.0, lexical_mix: float = 0.0, **cold: Any) -> None:  # fmt: skip
        self.model, self.ids, self.mix, self.lexical_mix = model, ids, mix, lexical_mix
        self.beam = BeamRanker(model, ids, num_beams, **cold)
        self._neighbours: Tensor | None = None  # (new rows, trained rows), built on first use

    def to(self, device: torch.device | str) -> HybridRanker:
        """Move the search structures to ``device``."""
        self.beam.to(device)
        return self

    def rank(self, batch: Any, k: int, seen: Tensor | None = None) -> Ranking:
        """Top-k rows (B, k) by the mixed score, ``seen`` excluded."""
        if self.lexical_mix and "lexical" not in batch:
            raise SemidError(
                "this model mixes lexical scores: the batch needs the queries' lexical log-probs"
            )
        return self.candidates(batch, k, seen).top(self.mix, k, self.ids, self.lexical_mix)

    @torch.no_grad()
    def candidates(self, batch: Any, k: int, seen: Tensor | None = None) -> Candidates:
        """The union of the beams, the head's top rows and (with ``batch["lexical"]``) the lexical
        top rows (B, up to 3 * beams), with every score."""
        with self.model.encoding_once():  # the three passes below read one encoding of the batch
            return self._candidates(batch, k, seen)

    def _candidates(self, batch: Any, k: int, seen: Tensor | None) -> Candidates:
        beams = beams_for(self.beam.num_beams, k)
        found = self.beam.rank(batch, beams, seen)
        head = self._head(batch, seen)  # (B, N)
        lexical = batch.get("lexical") if isinstance(batch, dict) else None
        if lexical is not None:
            lexical = self._extend(lexical.float(), seen)
        rows = found.rows
        for view in (head, lexical):
            if view is None:
                continue
            best, top = (t.cpu() for t in view.topk(min(beams, view.shape[1]), dim=1))
            top = top.masked_fill(best == float("-inf"), -1)  # seen rows
            rows = torch.cat(
                [rows, top.masked_fill((top[:, :, None] == rows[:, None, :]).any(-1), -1)], 1
            )
        extra = _packed(rows[:, found.rows.shape[1] :])  # rows the beams did not find, first
        rows = torch.cat([found.rows, extra], 1)
        scored = torch.empty(extra.shape)
        if extra.shape[1]:
            trie = self.beam.trie
            codes = self.ids.codes[extra.clamp(min=0)].to(trie.device)
            scored = self.model.score_codes(batch, trie, codes).cpu().float()
        gen = torch.cat([found.scores, scored], 1)
        return Candidates(rows, gen.masked_fill(rows < 0, float("-inf")), _gather(head, rows),
                          None if lexical is None else _gather(lexical, rows))  # fmt: skip

    def _head(self, batch: Any, seen: Tensor | None) -> Tensor:
        """Head log-probs (B, N index rows): unknown rows from their neighbours', seen rows -inf."""
        known = self.model.item_log_probs(batch).float()
        trained, n = known.shape[1], len(self.ids)
        if trained < n:
            if self._neighbours is None or self._neighbours.shape != (n - trained, trained):
                self._neighbours = neighbour_weights(self.ids.codes[:n], trained).to(known.device)
            mean = (self._neighbours @ known.exp().T).T  # (B, new rows) mean neighbour probability
            floor = known.min(dim=1, keepdim=True).values
            known = torch.cat([known, torch.maximum(mean.log(), floor)], 1)
        return self._extend(known, seen)

    def _extend(self, scores: Tensor, seen: Tensor | None) -> Tensor:
        """Scores (B, N index rows): rows beyond ``scores`` at the query's lowest, seen rows -inf."""
        n = len(self.ids)
        if scores.shape[1] < n:
            floor = scores.min(dim=1, keepdim=True).values.expand(-1, n - scores.shape[1])
            scores = torch.cat([scores, floor], 1)
        scores = scores[:, :n]
        if seen is not None and seen.shape[1]:
            scores = scores.masked_fill(seen_mask(seen.to(scores.device), n), float("-inf"))
        return scores


def neighbour_weights(codes: Tensor, trained: int) -> Tensor:
    """(N - trained, trained) sparse averaging weights: row r of the rows beyond ``trained`` spreads
    weight 1 evenly over the trained rows whose IDs (``codes`` (N, L)) share the longest prefix with
    r's (at least its first code); a row without such neighbours gets an all-zero row."""
    new = codes[trained:]
    weights_of: dict[int, tuple[Tensor, Tensor]] = {}  # new row -> (trained rows, weight)
    for depth in range(codes.shape[1] - 1, 0, -1):
        pending = [r for r in range(len(new)) if r not in weights_of]
        if not pending:
            break
        _, inverse = torch.unique(codes[:, :depth], dim=0, return_inverse=True)
        members: dict[int, list[int]] = {}
        for row, group in enumerate(inverse[:trained].tolist()):
            members.setdefault(group, []).append(row)
        for r in pending:
            group = members.get(int(inverse[trained + r]))
            if group:
                weights_of[r] = (torch.tensor(group), torch.full((len(group),), 1.0 / len(group)))
    rows = [torch.full((len(m),), r) for r, (m, _) in weights_of.items()]
    if not rows:
        return torch.zeros(len(new), trained).to_sparse()
    index = torch.stack([torch.cat(rows), torch.cat([m for m, _ in weights_of.values()])])
    values = torch.cat([w for _, w in weights_of.values()])
    return torch.sparse_coo_tensor(
        index, values, (len(new), trained), check_invariants=True
    ).coalesce()


def _packed(rows: Tensor) -> Tensor:
    """Candidate rows (B, C), -1 where none, with each query's rows moved to the front (in their
    order) and the columns no query fills dropped: teacher-forcing scores no empty slot."""
    order = (rows < 0).to(torch.uint8).argsort(dim=1, stable=True)
    width = int((rows >= 0).sum(1).max()) if rows.numel() else 0
    return rows.gather(1, order)[:, :width]


def _gather(scores: Tensor, rows: Tensor) -> Tensor:
    """Scores (B, C) on the CPU of candidate rows (B, C, on the CPU) out of ``scores`` (B, N, on any
    device: only the (B, C) picked leave it); -inf where the row is -1."""
    picked = scores.gather(1, rows.clamp(min=0).to(scores.device)).cpu()
    return picked.masked_fill(rows < 0, float("-inf"))


def choose_mix(parts: list[Candidates], targets: Tensor, ids: SemanticIDs,
               grid: tuple[float, ...] = MIX_GRID, k: int = 10) -> tuple[float, dict[str, float]]:  # fmt: skip
    """The weight of ``grid`` with the best NDCG@k on queries whose candidates are ``parts`` and
    whose answers are ``targets`` (Q,) (ties: the smallest weight), and NDCG@k of every weight."""
    (best, _), ndcg = choose_mixes(parts, targets, ids, grid, (0.0,), k)
    return best, {w.split(",")[0]: v for w, v in ndcg.items()}


def choose_mixes(parts: list[Candidates], targets: Tensor, ids: SemanticIDs,
                 grid: tuple[float, ...] = MIX_GRID, lexical_grid: tuple[float, ...] = LEXICAL_GRID,
                 k: int = 10) -> tuple[tuple[float, float], dict[str, float]]:  # fmt: skip
    """The (head, lexical) weights with the best NDCG@k (ties: the smallest sum of the two, the
    mix that moves least from plain beam search), and NDCG@k of every
    pair as ``"w,lexical"``; the lexical grid is (0,) when the candidates have no lexical scores."""
    if any(c.lexical is None for c in parts):
        lexical_grid = (0.0,)
    ndcg = {}
    for weight in grid:
        for lexical in lexical_grid:
            rows = torch.cat([c.top(weight, k, ids, lexical).rows for c in parts])
            ndcg[f"{weight},{lexical}"] = compute_metrics(rows, targets, ks=(k,), names=("ndcg",))[
                f"ndcg@{k}"
            ]
    pairs = [(w, x) for w in grid for x in lexical_grid]
    best = max(pairs, key=lambda p: (ndcg[f"{p[0]},{p[1]}"], -p[0] - p[1]))
    return best, ndcg
