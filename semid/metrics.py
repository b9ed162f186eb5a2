"""Ranking metrics as pure functions on tensors.

Every metric takes a relevance matrix ``rel`` (B, K) bool — rel[b, j] says whether the j-th
result for query b is relevant — and returns one value per query (B,) float. Use
``relevance(ranked, targets)`` to build it from ranked item ids and ``compute_metrics`` for the
usual table of means.
"""

from __future__ import annotations

import numbers
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from semid.errors import SemidError


def _sequence(values: Iterable, name: str, example: str) -> tuple:
    """``values`` (a list, tuple, array, ...) as a tuple; SemidError for one value or a string
    (``ks=10``, ``names="recall"``)."""
    try:
        if isinstance(values, str | bytes):
            raise TypeError
        return tuple(values)
    except TypeError:
        raise SemidError(
            f"{name} must be a sequence, got {values!r}; write e.g. {name}={example}"
        ) from None


def cutoffs(ks: Iterable[int]) -> tuple[int, ...]:
    """The cut-offs ``ks`` as a non-empty tuple of ints >= 1; SemidError naming the first that
    is not one (``ks=10``, ``ks=()``, ``2.5``)."""
    ks = _sequence(ks, "ks", "(5, 10)")
    if not ks:
        raise SemidError("ks must hold at least one cut-off, e.g. ks=(5, 10)")
    for k in ks:
        _check_cutoff(k)
    return tuple(int(k) for k in ks)


def _check_cutoff(k: int) -> None:
    if isinstance(k, bool) or not isinstance(k, numbers.Integral):
        raise SemidError(f"k must be an integer, got {k!r}")
    if k < 1:
        raise SemidError(f"k must be >= 1, got {k}")


def _checked_num_relevant(num_relevant: Tensor, listed: Tensor | None, batch: int) -> Tensor:
    """``num_relevant`` (B,) as given; SemidError for another shape, a count that is no whole
    number or below 0, or one below the targets a query lists, ``listed`` (B,) of targets (B, T)
    (its recall, NDCG and MAP would pass 1). A count of 0 is a query none of whose relevant items
    the collection holds (it scores 0)."""
    if num_relevant.shape != (batch,):
        raise SemidError(f"num_relevant must be ({batch},), one count per query, got "
                         f"{tuple(num_relevant.shape)}")  # fmt: skip
    if num_relevant.dtype.is_floating_point and not (
        torch.isfinite(num_relevant).all() and torch.equal(num_relevant, num_relevant.round())
    ):
        raise SemidError("num_relevant must hold whole numbers of relevant items")
    if (num_relevant < 0).any():
        row = int((num_relevant < 0).nonzero()[0])
        raise SemidError(f"num_relevant must count relevant items (>= 0), got "
                         f"{num_relevant[row].item():g} for query {row}")  # fmt: skip
    if listed is not None and (num_relevant < listed).any():
        row = int((num_relevant < listed).nonzero()[0])
        raise SemidError(f"query {row} lists {int(listed[row])} relevant targets but num_relevant "
                         f"says {num_relevant[row].item():g}; count every target it lists")  # fmt: skip
    return num_relevant


def _check_repeated_hits(rel: Tensor, num_relevant: Tensor) -> None:
    """SemidError when a query ranks more relevant labels than ``num_relevant`` counts for it:
    with repeated labels, its recall, NDCG and MAP would pass 1."""
    hits = rel.sum(1)
    over = hits > num_relevant
    if over.any():
        row = int(over.nonzero()[0])
        raise SemidError(f"query {row} ranks {int(hits[row])} relevant results but num_relevant "
                         f"says {num_relevant[row].item():g}; with repeats=True it must count "
                         "every relevant result")  # fmt: skip


def _checked_grades(grades: Tensor, targets: Tensor) -> Tensor:
    """``grades`` (B, T) of ``targets`` (B, T); SemidError for another shape, or a listed target's
    grade that is not a number above 0."""
    if targets.ndim != 2 or grades.shape != targets.shape:
        raise SemidError(f"grades must have the shape of targets (B, T), got {tuple(grades.shape)} "
                         f"for targets {tuple(targets.shape)}")  # fmt: skip
    given = grades[targets >= 0].double()
    if not (torch.isfinite(given) & (given > 0)).all():
        raise SemidError("grades of listed targets must be numbers above 0 (leave out a target "
                         "that is not relevant)")  # fmt: skip
    return grades


def relevance(ranked: Tensor, targets: Tensor) -> Tensor:
    """rel (B, K) bool from ranked ids (B, K) and targets (B,) or (B, T) padded with -1.

    Ranked ids of -1 (padding, or an invalid ID) are never relevant."""
    if targets.ndim == 1:
        targets = targets[:, None]
    rel = (ranked[:, :, None] == targets[:, None, :]) & (targets[:, None, :] >= 0)
    return rel.any(-1) & (ranked >= 0)


def without_repeats(ranked: Tensor) -> Tensor:
    """ranked ids (B, K) with every repeat of an id within its row (after its first place) set to
    -1, the mark of an invalid entry."""
    order = ranked.sort(dim=1, stable=True)  # equal ids side by side, the first place first
    repeat = torch.zeros_like(ranked, dtype=torch.bool)
    repeat[:, 1:] = order.values[:, 1:] == order.values[:, :-1]
    at_place = torch.zeros_like(repeat).scatter_(1, order.indices, repeat)
    return ranked.masked_fill(at_place & (ranked >= 0), -1)


def _check_k(rel: Tensor, k: int) -> None:
    _check_cutoff(k)
    if rel.ndim != 2:
        raise SemidError(f"rel must be (B, K), got shape {tuple(rel.shape)}")


def _num_relevant(rel: Tensor, num_relevant: Tensor | None) -> Tensor:
    if num_relevant is None:
        return torch.ones(rel.shape[0], dtype=torch.float64)
    return num_relevant.double().clamp(min=1)


def hit_rate_at_k(rel: Tensor, k: int) -> Tensor:
    """1 if any of the top-k is relevant, else 0; (B,)."""
    _check_k(rel, k)
    return rel[:, :k].any(1).double()


def precision_at_k(rel: Tensor, k: int) -> Tensor:
    """Share of the top-k that is relevant; (B,). Missing results count as not relevant."""
    _check_k(rel, k)
    return rel[:, :k].sum(1).double() / k


def recall_at_k(rel: Tensor, k: int, num_relevant: Tensor | None = None) -> Tensor:
    """Share of the relevant items found in the top-k; (B,). num_relevant (B,) defaults to 1."""
    _check_k(rel, k)
    found = rel[:, :k].sum(1).double()
    return torch.minimum(found / _num_relevant(rel, num_relevant), torch.ones(()))


def ndcg_at_k(rel: Tensor, k: int, num_relevant: Tensor | None = None) -> Tensor:
    """Normalised discounted cumulative gain with binary gains; (B,)."""
    _check_k(rel, k)
    top = rel[:, :k].double()
    discounts = 1.0 / torch.log2(torch.arange(2, top.shape[1] + 2, dtype=torch.float64))
    dcg = (top * discounts).sum(1)
    ideal_hits = _num_relevant(rel, num_relevant).clamp(max=k).long()
    ideal = torch.cumsum(1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64)), 0)[
        ideal_hits - 1
    ]
    return dcg / ideal


def graded_ndcg_at_k(ranked: Tensor, targets: Tensor, grades: Tensor, k: int) -> Tensor:
    """NDCG@k with graded gains, as trec_eval's ndcg_cut (BEIR's NDCG@10): a result's gain is the
    grade of the relevant item it is, 0 for the others; ranked (B, K) ids, targets (B, T) padded
    with -1 and their grades (B, T) > 0. With every grade 1 it equals `ndcg_at_k`; (B,)."""
    if targets.shape != grades.shape:
        raise SemidError(f"targets {tuple(targets.shape)} and grades {tuple(grades.shape)} differ")
    _check_k(ranked, k)
    top = ranked[:, :k]
    match = (
        (top[:, :, None] == targets[:, None, :])
        & (targets[:, None, :] >= 0)
        & (top[:, :, None] >= 0)
    )
    gains = (match.double() * grades[:, None, :].double()).amax(-1)  # (B, <= k)
    discounts = 1.0 / torch.log2(torch.arange(2, k + 2, dtype=torch.float64))
    dcg = (gains * discounts[: gains.shape[1]]).sum(1)
    best = torch.where(targets >= 0, grades.double(), 0.0).sort(1, descending=True).values[:, :k]
    ideal = (best * discounts[: best.shape[1]]).sum(1)
    return torch.where(
        ideal > 0, dcg / ideal.clamp(min=1e-12), torch.zeros((), dtype=torch.float64)
    )


def mrr_at_k(rel: Tensor, k: int) -> Tensor:
    """Reciprocal rank of the first relevant result within the top-k (0 if none); (B,)."""
    _check_k(rel, k)
    top = rel[:, :k]
    first = top.double().argmax(1)
    return torch.where(top.any(1), 1.0 / (first + 1).double(), torch.zeros((), dtype=torch.float64))


def average_precision_at_k(rel: Tensor, k: int, num_relevant: Tensor | None = None) -> Tensor:
    """Average precision over the top-k, normalised by min(num_relevant, k); (B,)."""
    _check_k(rel, k)
    top = rel[:, :k].double()
    precision = torch.cumsum(top, 1) / torch.arange(1, top.shape[1] + 1, dtype=torch.float64)
    denom = _num_relevant(rel, num_relevant).clamp(max=k)
    return (precision * top).sum(1) / denom


def invalid_id_rate(valid: Tensor) -> Tensor:
    """Share of returned IDs that are not in the index, per query; valid (B, K) bool -> (B,)."""
    return 1.0 - valid.double().mean(1)


_BY_NAME = {
    "recall": recall_at_k,
    "ndcg": ndcg_at_k,
    "mrr": mrr_at_k,
    "hit": hit_rate_at_k,
    "precision": precision_at_k,
    "map": average_precision_at_k,
}
_TAKES_NUM_RELEVANT = {"recall", "ndcg", "map"}


def compute_metrics(
    ranked: Tensor,
    targets: Tensor,
    ks: Sequence[int] = (5, 10),
    names: Sequence[str] = ("recall", "ndcg"),
    num_relevant: Tensor | None = None,
    grades: Tensor | None = None,
    repeats: bool = False,
) -> dict[str, float]:
    """Mean of each metric at each k, keyed like ``recall@10``; also ``invalid_id_rate``
    (share of -1 entries in ranked, i.e. padding or IDs outside the index, and repeats: an id
    ranked twice counts at its first place only, so no metric exceeds 1). ``repeats``: ranked
    holds labels of distinct results (a class per image), which repeat by design.
    ``num_relevant`` (B,): relevant items per query, of which recall and NDCG take a share; by
    default 1 for targets (B,) and the distinct non-negative entries of targets (B, T) (a target
    listed twice is one relevant item, with the grade of its first listing). With ``grades``
    (B, T), the relevance grades of ``targets`` (B, T), NDCG takes them as gains
    (`graded_ndcg_at_k`)."""
    ks, names = cutoffs(ks), _sequence(names, "names", '("recall", "ndcg")')
    unknown = set(names) - set(_BY_NAME)
    if unknown:
        raise SemidError(f"unknown metrics {sorted(unknown)}; known: {sorted(_BY_NAME)}")
    ranked, targets = torch.as_tensor(ranked), torch.as_tensor(targets)
    if ranked.ndim != 2 or targets.ndim not in (1, 2) or len(targets) != len(ranked):
        raise SemidError(f"ranked must be (B, K) and targets (B,) or (B, T), got "
                         f"{tuple(ranked.shape)} and {tuple(targets.shape)}")  # fmt: skip
    if len(ranked) == 0:
        raise SemidError("no queries to score (B = 0): every mean would be NaN")
    for name, ids in (("ranked", ranked), ("targets", targets)):
        if ids.dtype.is_floating_point or ids.dtype.is_complex or ids.dtype == torch.bool:
            raise SemidError(f"{name} must hold integer ids (-1 for none), got {ids.dtype}; "
                             "convert it with .long()")  # fmt: skip
    if not repeats:
        ranked = without_repeats(ranked)
    elif num_relevant is None:
        raise SemidError("repeats=True ranks labels that repeat by design (a class per image), so "
                         "how many results are relevant cannot be told from targets: pass "
                         "num_relevant (B,), such as the images of each query's class")  # fmt: skip
    if targets.ndim == 2:
        targets = without_repeats(targets)
    listed = (targets >= 0).sum(1) if targets.ndim == 2 else None
    if num_relevant is not None:
        num_relevant = _checked_num_relevant(torch.as_tensor(num_relevant), listed, len(ranked))
    elif listed is not None:  # every listed target is relevant
        num_relevant = listed
    if grades is not None:
        grades = _checked_grades(torch.as_tensor(grades), targets)
    rel = relevance(ranked, targets)
    if repeats:
        _check_repeated_hits(rel, num_relevant)
    out: dict[str, float] = {}
    for name in names:
        for k in ks:
            fn = _BY_NAME[name]
            if name == "ndcg" and grades is not None:
                values = graded_ndcg_at_k(ranked, targets, grades, k)
            else:
                values = fn(rel, k, num_relevant) if name in _TAKES_NUM_RELEVANT else fn(rel, k)
            out[f"{name}@{k}"] = float(values.mean())
    out["invalid_id_rate"] = float(invalid_id_rate(ranked >= 0).mean())
    return out
