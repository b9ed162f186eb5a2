"""Trie-constrained beam search, batched over queries and beams, generic over a step model.

The model encodes the batch of B queries once and scores the first level on B rows; only then
are the rows expanded to B * beams with ``select``, so encoder outputs and cross-attention keys
and values are never recomputed per beam.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor

from semid.errors import SemidError
from semid.json_values import is_integer
from semid.trie import PrefixTrie, holds_integers


def rows_grouped_by_query(query: Tensor, groups: int) -> bool:
    """Whether row queries (R,) are 0..groups-1, each repeated R / groups times in a block: rows a
    step model may serve from one copy per query of what depends only on the query (cross-attention
    K/V), as ``constrained_beam_search`` and ``Generator.score_codes`` lay them out."""
    if not len(query) or len(query) % groups:  # no rows: nothing to share (and nothing to copy)
        return False
    expected = torch.arange(groups, device=query.device).repeat_interleave(len(query) // groups)
    return torch.equal(query, expected)


class StepModel(Protocol):
    """What a generator exposes to the search: encode once, then score one code level per step."""

    def start(self, inputs: Any) -> tuple[Tensor, Any]:
        """Encode B queries once; return first-level logits (B, V_0) and a state with B rows."""
        ...

    def step(self, state: Any, codes: Tensor, level: int) -> tuple[Tensor, Any]:
        """Feed codes (R,) chosen at ``level - 1``; return logits (R, V_level) and the new state."""
        ...

    def select(self, state: Any, rows: Tensor) -> Any:
        """Reorder or expand state rows: new row i is old row ``rows[i]`` (R_new,)."""
        ...


@dataclass
class BeamSearchOutput:
    """Top-k IDs per query; padding (fewer valid IDs than k) is code -1 with log-prob -inf."""

    codes: Tensor  # (B, k, L) int64
    log_probs: Tensor  # (B, k) float32, sorted descending


def _masked_log_probs(logits: Tensor, trie: PrefixTrie, states: Tensor, level: int) -> Tensor:
    """log_softmax over the model's logits (R, V), disallowed codes set to -inf."""
    log_probs = torch.log_softmax(logits.float(), dim=-1)
    return log_probs.masked_fill(~trie.allowed_mask(states, level), float("-inf"))


def _check_logits(logits: Any, rows: int | None, vocab: int, method: str) -> None:
    """SemidError unless the model's ``method`` returned a tensor of logits (rows, vocab)."""
    if not isinstance(logits, Tensor):
        raise SemidError(
            f"model.{method} must return torch tensors of logits, got {type(logits).__name__}"
        )
    if (
        logits.ndim != 2
        or logits.shape[1] != vocab
        or (rows is not None and logits.shape[0] != rows)
    ):
        expected = f"({'B' if rows is None else rows}, {vocab})"
        raise SemidError(f"model.{method} returned logits of shape {tuple(logits.shape)}, expected "
                         f"{expected}; does the model's vocabulary match the trie?")  # fmt: skip


def _excluded_leaves(exclude: Tensor, num_ids: int) -> tuple[Tensor, Tensor]:
    """The distinct (query, leaf state) pairs of ``exclude`` (B, M) padded with -1, as flat
    arrays (F,) sorted by query, then leaf: a user's real count each, not the batch's longest."""
    valid = exclude >= 0
    queries = torch.arange(exclude.shape[0], device=exclude.device)[:, None].expand_as(exclude)
    pairs = torch.unique(queries[valid] * num_ids + exclude[valid])  # sorted
    return pairs // num_ids, pairs % num_ids


def _checked_exclude(exclude: Any, batch: int, trie: PrefixTrie, device: torch.device) -> Tensor:
    """``exclude`` as an int64 (B, M) tensor on ``device``; SemidError for another shape or type, or
    a state that is no leaf of ``trie`` (one of another trie would drop other IDs)."""
    if not isinstance(exclude, Tensor):
        exclude = torch.as_tensor(exclude)
    if not holds_integers(exclude):
        raise SemidError(f"exclude must be an integer tensor of leaf states, got {exclude.dtype}")
    if exclude.ndim != 2 or exclude.shape[0] != batch:
        raise SemidError(f"exclude must have shape ({batch}, M), one row of leaf states per query "
                         f"padded with -1, got {tuple(exclude.shape)}")  # fmt: skip
    exclude = exclude.to(device=device, dtype=torch.int64)
    bad = (exclude < -1) | (exclude >= trie.num_ids)
    if bad.any():
        raise SemidError(
            f"exclude holds {int(exclude[bad][0])}, which is no leaf state of this trie (0.."
            f"{trie.num_ids - 1}, -1 pads); take them from this trie's leaf_states"
        )
    return exclude


def _excluded_children(
    trie: PrefixTrie, queries: Tensor, leaves: Tensor, level: int
) -> tuple[Tensor, Tensor, Tensor]:
    """The prefixes reached at ``level`` whose IDs are all excluded, as (query, the state they
    branch from, the code that reaches them) arrays, one entry per excluded leaf under them.

    ``queries`` and ``leaves`` (F,) are sorted by query, then leaf (`_excluded_leaves`), so the
    excluded leaves under one prefix of a query are one run of equal (query, prefix) keys: the
    prefix is fully excluded when that run is as long as its leaf range [lo, hi)."""
    nodes = trie.prefix_state(leaves, level)
    lo, hi = trie.leaf_range(nodes, level)
    key = queries * (trie.num_ids + 1) + nodes  # a level has at most num_ids states
    _, inverse, counts = torch.unique_consecutive(key, return_inverse=True, return_counts=True)
    full = counts[inverse] >= hi - lo
    nodes, where = nodes[full], leaves[full]
    parents = torch.zeros_like(nodes) if level == 0 else trie.prefix_state(where, level - 1)
    return queries[full], parents, trie.edge_codes[level][nodes].long()


def _mask_excluded(log_probs: Tensor, states: Tensor, queries: Tensor, parents: Tensor,
                   codes: Tensor, batch: int, num_ids: int) -> Tensor:  # fmt: skip
    """Set log-probs (B * W, V) of fully excluded children (from ``_excluded_children``) to -inf.

    A query's beams hold distinct prefixes, hence distinct states (fewer than ``num_ids`` at any
    level), so a binary search among the sorted (query, state) keys of the beams finds the one
    row (if any) that each excluded child branches from."""
    v = log_probs.shape[1]
    width = states.numel() // batch
    span = num_ids + 2  # states and -1 (a beam that found nothing), shifted by one
    beam_queries = torch.arange(batch, device=states.device).repeat_interleave(width)
    beam_keys, order = (beam_queries * span + states + 1).sort()
    wanted = queries * span + parents + 1
    pos = torch.searchsorted(beam_keys, wanted).clamp(max=beam_keys.numel() - 1)
    hit = beam_keys[pos] == wanted
    flat = (order[pos] * v + codes)[hit]
    return log_probs.reshape(-1).index_fill(0, flat, float("-inf")).view(-1, v)


def constrained_beam_search(
    model: StepModel,
    inputs: Any,
    trie: PrefixTrie,
    num_beams: int,
    top_k: int | None = None,
    exclude: Tensor | None = None,
) -> BeamSearchOutput:
    """Top-``top_k`` (default ``num_beams``) IDs in ``trie`` per query, scored by summed log-probs.

    ``exclude`` (B, M) int64: per query, leaf states (``trie.leaf_states``) of IDs that must not be
    returned (e.g. items the user has already seen), padded with -1. At every level a prefix whose
    IDs are all excluded is masked out before the level's top-k, so ``num_beams`` beams survive
    whenever the trie still has that many allowed IDs."""
    top_k = num_beams if top_k is None else top_k
    if not (is_integer(num_beams) and is_integer(top_k)):
        raise SemidError(f"num_beams and top_k must be whole numbers, got num_beams={num_beams!r}, "
                         f"top_k={top_k!r}")  # fmt: skip
    if num_beams < 1 or not 1 <= top_k <= num_beams:
        raise SemidError(f"need num_beams >= top_k >= 1, got num_beams={num_beams}, top_k={top_k}")
    logits, state = model.start(inputs)
    _check_logits(logits, None, trie.codebook_sizes[0], "start")
    device = logits.device
    if trie.device != device:
        raise SemidError(
            f"trie is on {trie.device} but the model's logits are on {device}; pass trie.to({str(device)!r})"
        )
    batch = logits.shape[0]
    if batch == 0:  # no queries: no answers, in the promised shape
        return BeamSearchOutput(codes=torch.full((0, top_k, trie.levels), -1, device=device),
                                log_probs=torch.zeros(0, top_k, device=device))  # fmt: skip
    excluded = []  # per level: (queries, parent states, codes) of the prefixes to drop
    if exclude is not None:
        leaves = _excluded_leaves(_checked_exclude(exclude, batch, trie, device), trie.num_ids)
        excluded = [_excluded_children(trie, *leaves, lvl) for lvl in range(trie.levels)]
    trie_states = torch.zeros(batch, dtype=torch.int64, device=device)  # root, one row per query
    scores = torch.zeros(batch, 1, device=device)  # (B, W): W = 1 before the first expansion
    prefixes = torch.zeros(batch, 1, 0, dtype=torch.int64, device=device)  # (B, W, level)
    for level in range(trie.levels):
        if level > 0:
            logits, state = model.step(state, prefixes[:, :, -1].reshape(-1), level)
            _check_logits(
                logits, prefixes.shape[0] * prefixes.shape[1], trie.codebook_sizes[level], "step"
            )
        v = trie.codebook_sizes[level]
        log_probs = _masked_log_probs(logits, trie, trie_states, level)  # (B * W, V)
        if excluded:
            log_probs = _mask_excluded(
                log_probs, trie_states, *excluded[level], batch, trie.num_ids
            )
        width = scores.shape[1]
        total = (scores[:, :, None] + log_probs.view(batch, width, v)).view(batch, width * v)
        scores, flat = total.topk(min(num_beams, width * v), dim=1)  # (B, W'), sorted
        parent, codes = flat // v, flat % v
        flat_parent = (parent + torch.arange(batch, device=device)[:, None] * width).view(-1)
        next_states = trie.advance(trie_states[flat_parent], level, codes.view(-1)).view(batch, -1)
        rows = (parent + torch.arange(batch, device=device)[:, None] * width).view(-1)  # (B * W',)
        prefixes = torch.cat([prefixes.view(batch * width, -1)[rows], codes.view(-1, 1)], dim=1)
        prefixes = prefixes.view(batch, -1, level + 1)
        trie_states = next_states.view(-1)
        if level + 1 < trie.levels:
            state = model.select(state, rows)
    # NaN outranks every score: a query whose logits hold NaN gets no answer (not invalid ones),
    # and one whose every query does is an error, not a silent empty result
    failed = torch.isnan(scores).any(1)
    if bool(failed.all()):
        raise SemidError("the model's logits hold NaN for every query; check its weights and inputs "
                         "(a diverged training, or NaN in the input features)")  # fmt: skip
    scores = scores.masked_fill(failed[:, None], float("-inf"))
    found = torch.isfinite(scores)
    codes = prefixes.masked_fill(~found[:, :, None], -1)
    k = min(top_k, scores.shape[1])
    codes, scores = codes[:, :k].contiguous(), scores[:, :k].contiguous()
    if k < top_k:  # fewer candidates than k (tiny codebooks): pad to the promised shape
        pad = top_k - k
        codes = torch.cat([codes, codes.new_full((batch, pad, trie.levels), -1)], dim=1)
        scores = torch.cat([scores, scores.new_full((batch, pad), float("-inf"))], dim=1)
    return BeamSearchOutput(codes=codes, log_probs=scores)
