"""The one search path: the top-k rows of an ID index for a batch of queries, from any model.

A *generator* is searched with trie-constrained beam search over the index's IDs; a *scorer*
(``score_rows(batch) -> (B, N)``) scores every row and keeps the top k. Both return a
:class:`Ranking`: index rows (B, k) best first (-1 where fewer than k answers exist), their
scores (B, k) (log-probabilities for generators, the model's scores otherwise) and the rows'
semantic IDs (B, k, L). ``seen`` (B, M) lists rows a query must not get back (PAD = -1 padded),
e.g. the items a user already interacted with.

Search-time knobs (``num_beams``, ``k``) are kept apart from what is built; ``num_beams`` is
clamped to at least ``k`` here and nowhere else.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from semid.defaults import DEFAULT_NUM_BEAMS
from semid.errors import SemidError
from semid.ids import SemanticIDs, codes_of_rows
from semid.models import is_generator
from semid.runs import check_vocabulary


@dataclass
class Ranking:
    """Top-k answers of a batch of queries, best first."""

    rows: Tensor  # (B, k) int64 index rows, -1 where none
    scores: Tensor  # (B, k) float, -inf where none
    codes: Tensor  # (B, k, L) int64 semantic IDs, -1 where none

    @classmethod
    def empty_like(cls, part: Ranking, n: int) -> Ranking:
        """An uninitialised ranking of ``n`` queries with ``part``'s k, levels, dtypes and device."""
        return cls(*(t.new_empty((n, *t.shape[1:])) for t in (part.rows, part.scores, part.codes)))

    def fill_(self, start: int, part: Ranking) -> None:
        """Copy ``part``'s queries into rows ``start, start + 1, ...`` of this ranking."""
        end = start + len(part.rows)
        self.rows[start:end], self.scores[start:end] = part.rows, part.scores
        self.codes[start:end] = part.codes

    @classmethod
    def concat(cls, parts: list[Ranking]) -> Ranking:
        """The rankings of consecutive batches as one."""
        return cls(
            *(torch.cat([getattr(p, f) for p in parts]) for f in ("rows", "scores", "codes"))
        )


class Ranker(Protocol):
    """Anything that ranks index rows for a batch of queries."""

    def rank(self, batch: Any, k: int, seen: Tensor | None = None) -> Ranking:
        """Top-k rows of the index for each query of ``batch``, never a row listed in ``seen``."""
        ...

    def to(self, device: torch.device | str) -> Ranker:
        """The ranker with its search structures on ``device``."""
        ...


def beams_for(num_beams: int | None, k: int) -> int:
    """The beam width for a top-k search: ``num_beams`` (default ``DEFAULT_NUM_BEAMS``), at least k."""
    if num_beams is not None and num_beams < 1:
        raise SemidError(f"num_beams must be >= 1, got {num_beams}")
    return max(num_beams or DEFAULT_NUM_BEAMS, k)


def seen_mask(seen: Tensor, num_items: int) -> Tensor:
    """bool (B, num_items): True at the rows listed in ``seen`` (B, M, PAD-padded)."""
    mask = torch.zeros(seen.shape[0], num_items + 1, dtype=torch.bool, device=seen.device)
    mask.scatter_(1, torch.where(seen >= 0, seen, num_items), True)  # PAD: the spare column
    return mask[:, :num_items]


def ranker_for(model: Any, ids: SemanticIDs, num_beams: int | None = None,
               item_mix: float | None = None, lexical_mix: float | None = None, **cold: Any) -> Ranker:  # fmt: skip
    """The ranker of a loaded model over the index ``ids``: beam search for generators (``cold``:
    see :class:`BeamRanker`), mixed with the item head's scores for generators that have one and
    a mixing weight > 0 (``item_mix``, default the model's ``config.item_mix``; ``lexical_mix``
    likewise for lexical scores in the batch; :class:`semid.hybrid.HybridRanker`), full scoring for
    scorers."""
    if is_generator(model):
        if item_mix is not None and not model.has_item_head():
            raise SemidError(
                "--item-mix needs a generator trained with an item head (item_loss > 0; "
                "PromptDSI: rank_loss > 0)"
            )
        if item_mix is not None and not (math.isfinite(item_mix) and item_mix >= 0):
            raise SemidError(f"--item-mix must be a finite number >= 0, got {item_mix}")
        mix = getattr(model.config, "item_mix", 0.0) if item_mix is None else item_mix
        lexical = getattr(model.config, "lexical_mix", 0.0) if lexical_mix is None else lexical_mix
        if model.has_item_head() and (mix > 0 or lexical > 0):
            from semid.hybrid import HybridRanker  # imports this module

            return HybridRanker(model, ids, num_beams, mix, lexical, **cold)
        return BeamRanker(model, ids, num_beams, **cold)
    if not hasattr(model, "score_rows"):
        raise SemidError(f"{type(model).__name__} neither generates IDs nor scores rows")
    return ScoreRanker(model, ids)


class ScoreRanker:
    """A model that scores every index row: top-k of its scores, ``seen`` rows excluded.

    Rows added to the index after training (beyond what the model scores) get -inf."""

    def __init__(self, model: Any, ids: SemanticIDs) -> None:
        self.model, self.ids = model, ids

    def to(self, device: torch.device | str) -> ScoreRanker:
        """Nothing to move besides the model, which its owner moves."""
        return self

    @torch.no_grad()
    def rank(self, batch: Any, k: int, seen: Tensor | None = None) -> Ranking:
        """Top-k rows by score (B, k)."""
        scores = self.model.score_rows(batch)
        # half precision up to float32; float64 kept (most-popular's tie-break needs it)
        if scores.dtype != torch.float64:
            scores = scores.float()
        n = len(self.ids)
        if scores.shape[1] < n:  # rows the model has never seen score -inf
            pad = scores.new_full((scores.shape[0], n - scores.shape[1]), float("-inf"))
            scores = torch.cat([scores, pad], 1)
        scores = scores[:, :n]
        if seen is not None and seen.shape[1]:
            scores = scores.masked_fill(seen_mask(seen.to(scores.device), n), float("-inf"))
        # a model may rank by keys other than its scores (most-popular's tie-break), and still
        # answer its scores as they are
        keys = self.model.ranking_keys(scores) if hasattr(self.model, "ranking_keys") else scores
        rows = keys.topk(min(k, n), dim=1).indices
        top = scores.gather(1, rows)
        rows = torch.where(top > float("-inf"), rows, -1).cpu()
        rows, top = pad_to(rows, top.float().cpu(), k)  # scores float32 whatever ranked them
        return Ranking(rows, top, codes_of_rows(self.ids.codes, rows))


class BeamRanker:
    """A generator plus the index: top-k rows from trie-constrained beam search (beams >= k).

    Cold start (TIGER, Rajput et al. 2023, section 4.3): items added after training (rows >=
    ``trained_items``) were never a training target, so the decoder rarely writes their last code.
    With ``cold_share`` > 0, up to ``floor(cold_share * k)`` of the k slots go to new items whose ID
    shares its first ``cold_prefix`` codes with a generated ID, placed right after the first
    generated ID with that prefix (with its score), each new item once; the lowest ranked generated
    IDs make room."""

    def __init__(
        self,
        model: Any,
        ids: SemanticIDs,
        num_beams: int | None = None,
        trained_items: int | None = None,
        cold_share: float = 0.0,
        cold_prefix: int = 1,
    ) -> None:
        if not 0.0 <= cold_share <= 1.0:
            raise SemidError(f"--cold-share must be in [0, 1], got {cold_share}")
        levels = len(model.codebook_sizes)
        if not 1 <= cold_prefix < max(levels, 2):
            raise SemidError(f"--cold-prefix must be in [1, {levels - 1}], got {cold_prefix}")
        check_vocabulary(model, ids, "this run")
        # a beam per ID already searches every ID: a wider one (any integer a user may give) is
        # searched as that, without allocating beams that can never fill
        self.num_beams = num_beams if num_beams is None else min(num_beams, max(len(ids), 1))
        self.model, self.ids = model, ids
        self.cold_share, self.cold_prefix = cold_share, cold_prefix
        self.trie = ids.trie(model.codebook_sizes)
        self.leaf_of_row = self.trie.leaf_states(ids.codes)  # (N,) -1 for rows outside the trie
        first_new = len(ids) if trained_items is None else trained_items
        cold_rows = torch.arange(first_new, len(ids))  # (C,) rows added after training
        self.cold_keys, order = self._prefix_keys(ids.codes[cold_rows]).sort(stable=True)
        self.cold_rows = cold_rows[order]

    def to(self, device: torch.device | str) -> BeamRanker:
        """Move the trie to ``device`` (the model is moved by its owner)."""
        self.trie = self.trie.to(device)
        self.leaf_of_row = self.leaf_of_row.to(device)
        return self

    def rank(self, batch: Any, k: int, seen: Tensor | None = None) -> Ranking:
        """Top-k rows (B, k) via beam search with ``beams_for(num_beams, k)`` beams, ``seen`` excluded."""
        exclude = None
        if seen is not None:
            seen = seen.to(self.leaf_of_row.device)
            exclude = torch.where(seen >= 0, self.leaf_of_row[seen.clamp(min=0)], -1)
        codes, scores = self.model.generate(
            batch, self.trie, num_beams=beams_for(self.num_beams, k), top_k=k, exclude=exclude
        )
        codes, scores = codes.cpu(), scores.cpu().float()
        rows = self.ids.rows_of_codes(codes)  # -1 for padding and for any ID outside the index
        slots = int(self.cold_share * k)
        if slots and len(self.cold_rows):
            rows, scores = self._mix_cold(rows, scores, self._prefix_keys(codes), seen, slots)
        rows, scores = pad_to(rows, scores, k)
        return Ranking(rows, scores, codes_of_rows(self.ids.codes, rows))

    def _prefix_keys(self, codes: Tensor) -> Tensor:
        """One int64 per ID (..., L) for its first ``cold_prefix`` codes (mixed radix); -1 for padding."""
        key = torch.zeros(codes.shape[:-1], dtype=torch.int64)
        for level, size in enumerate(self.model.codebook_sizes[: self.cold_prefix]):
            key = key * size + codes[..., level].clamp(min=0)
        return torch.where(codes[..., 0] >= 0, key, -1)

    def _mix_cold(
        self, rows: Tensor, scores: Tensor, keys: Tensor, seen: Tensor | None, slots: int
    ) -> tuple[Tensor, Tensor]:
        """Rows and scores (B, k) with up to ``slots`` new items sharing a generated ID's prefix
        moved in, each once: new items that are seen or generated are passed over for the next ones
        under their prefix, and a prefix that several generated IDs share offers its new items after
        the first of them only."""
        b, k = rows.shape
        # rows a query cannot take: its seen ones and those beam search generated
        if seen is not None and seen.numel():
            excluded = seen_mask(seen.cpu(), len(self.ids))
        else:
            excluded = torch.zeros(b, len(self.ids), dtype=torch.bool)
        generated = rows >= 0
        excluded[torch.arange(b)[:, None].expand(b, k)[generated], rows[generated]] = True
        # how far past a prefix's first new item to look: `slots`, plus the new items a query
        # passes over
        first_new = len(self.ids) - len(self.cold_rows)
        width = slots + (int(excluded[:, first_new:].sum(1).max()) if b else 0)
        lo = torch.searchsorted(self.cold_keys, keys)  # (B, k) first new item under each prefix
        take = lo[..., None] + torch.arange(width)  # (B, k, width)
        hit = take < len(self.cold_keys)
        take = take.clamp(max=len(self.cold_keys) - 1)
        offered_before = (keys[:, :, None] == keys[:, None, :]).tril(-1).any(-1)  # (B, k)
        hit &= (self.cold_keys[take] == keys[..., None]) & (keys >= 0)[..., None]
        hit &= ~offered_before[..., None]
        cold = torch.where(hit, self.cold_rows[take], -1).view(b, k * width)
        cold = cold.masked_fill(excluded.gather(1, cold.clamp(min=0)), -1)
        cold_scores = scores.repeat_interleave(width, dim=1)  # the score of the ID it follows
        after = (torch.arange(k)[:, None] + 0.5).expand(k, width).reshape(-1).expand(b, -1)
        # the first `slots` valid candidates of each row, in beam order
        rank = torch.where(cold >= 0, (cold >= 0).cumsum(1), slots + 1)
        keep = rank <= slots
        used = keep.sum(1, keepdim=True)  # (B, 1) new items moved in
        warm_pos = torch.arange(k, dtype=torch.float).expand(b, -1)
        warm_pos = torch.where(torch.arange(k) < k - used, warm_pos, float("inf"))
        cold_pos = torch.where(keep, after, float("inf"))
        order = torch.cat([warm_pos, cold_pos], 1).argsort(dim=1, stable=True)[:, :k]
        return (
            torch.cat([rows, cold], 1).gather(1, order),
            torch.cat([scores, cold_scores], 1).gather(1, order),
        )


def pad_to(rows: Tensor, scores: Tensor, k: int) -> tuple[Tensor, Tensor]:
    """Rows/scores (B, k' <= k) padded to k columns with -1 / -inf."""
    missing = k - rows.shape[1]
    if missing <= 0:
        return rows, scores
    b = rows.shape[0]
    return (
        torch.cat([rows, rows.new_full((b, missing), -1)], 1),
        torch.cat([scores, scores.new_full((b, missing), float("-inf"))], 1),
    )
