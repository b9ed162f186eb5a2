"""Collision strategies: make every item's semantic ID unique.

Quantizers map similar items to the same code tuple. A strategy, chosen by name, turns the raw
codes (N, L) into unique codes and reports what it did:

- ``extra-level`` (TIGER): append one level numbering the items that share an ID (0, 1, ...).
- ``popularity`` (MMGRec): the same extra level, but the most popular item of a group gets 0.
- ``reassign`` (LC-Rec style): move colliding items to free codes of the last level within their
  prefix, by minimum-cost assignment on the quantizer's last-level distances. If a prefix holds
  more items than the last level has codes, the overflow is resolved with ``extra-level``.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np
import torch
from torch import Tensor

from semid.defaults import COLLISION_STRATEGIES
from semid.errors import SemidError
from semid.wording import did_you_mean


@dataclass
class CollisionReport:
    """What a strategy found and did."""

    strategy: str
    collision_rate_before: float  # 1 - unique IDs / N on the raw codes
    collision_rate_after: float
    max_items_per_id_before: int
    items_moved: int  # items whose code changed (reassign) or got a non-zero extra token
    extra_level: bool  # whether a disambiguation level was appended

    def to_dict(self) -> dict:
        """Plain dict for JSON."""
        return asdict(self)


def group_ids(codes: Tensor) -> tuple[Tensor, Tensor]:
    """Group index (N,) of each row of codes (N, L) and the size of each group (G,)."""
    _, inverse, counts = torch.unique(codes, dim=0, return_inverse=True, return_counts=True)
    return inverse, counts


def collision_rate(codes: Tensor) -> float:
    """1 - (number of distinct rows) / N: the share of items that lost their own ID (as
    (N - distinct) / N, which gives 0.19 for 19 of 100, not 1 - 0.81's 0.18999999999999995)."""
    if len(codes) == 0:
        return 0.0
    return (len(codes) - len(torch.unique(codes, dim=0))) / len(codes)


def rank_within_groups(group: Tensor, priority: Tensor | None = None) -> Tensor:
    """Rank (N,) of each item inside its group: 0 for the first (or highest-priority) item."""
    n = len(group)
    order = torch.arange(n)
    if priority is not None:
        # Higher priority first; stable sorts keep item order among equal priorities.
        order = torch.sort(-priority.double(), stable=True).indices
    order = order[torch.sort(group[order], stable=True).indices]
    sorted_groups = group[order]
    is_start = torch.ones(n, dtype=torch.bool)
    is_start[1:] = sorted_groups[1:] != sorted_groups[:-1]
    start_pos = torch.cummax(
        torch.where(is_start, torch.arange(n), torch.zeros(n, dtype=torch.long)), 0
    ).values
    rank = torch.empty(n, dtype=torch.long)
    rank[order] = torch.arange(n) - start_pos
    return rank


def _append_rank(
    codes: Tensor, rank: Tensor, codebook_sizes: list[int]
) -> tuple[Tensor, list[int]]:
    extra_size = max(int(rank.max()) + 1, 1)
    return torch.cat([codes, rank[:, None]], 1), [*codebook_sizes, extra_size]


def _extra_level(
    codes: Tensor, codebook_sizes: list[int], **_: object
) -> tuple[Tensor, list[int], int]:
    group, _counts = group_ids(codes)
    rank = rank_within_groups(group)
    new, sizes = _append_rank(codes, rank, codebook_sizes)
    return new, sizes, int((rank > 0).sum())


def checked_popularity(popularity: Tensor | None, items: int) -> Tensor:
    """``popularity`` (N,), each item's interaction count, as a tensor; SemidError when it is
    missing, of another length than the ``items``, or holds anything but counts (>= 0, finite)."""
    if popularity is None:
        raise SemidError(
            "collision strategy 'popularity' needs item interaction counts; use extra-level otherwise"
        )
    popularity = torch.as_tensor(popularity)
    if popularity.ndim != 1 or len(popularity) != items:
        raise SemidError(f"popularity must hold one count per item, {items} in all; got shape "
                         f"{tuple(popularity.shape)}")  # fmt: skip
    if (
        popularity.is_complex()
        or not bool(torch.isfinite(popularity.double()).all())
        or bool((popularity < 0).any())
    ):
        raise SemidError("popularity must hold counts (finite, >= 0): each item's interactions")
    return popularity


def check_collision_strategy(strategy: str) -> None:
    """SemidError naming the strategies when ``strategy`` is none of them."""
    if strategy not in _STRATEGIES:
        raise SemidError(
            f"unknown collision strategy {strategy!r}{did_you_mean(strategy, collision_strategies())}; "
            f"choose one of {', '.join(collision_strategies())}"
        )


def _popularity(
    codes: Tensor, codebook_sizes: list[int], *, popularity: Tensor | None = None, **_: object
) -> tuple[Tensor, list[int], int]:
    popularity = checked_popularity(popularity, len(codes))
    group, _counts = group_ids(codes)
    rank = rank_within_groups(group, priority=popularity)
    new, sizes = _append_rank(codes, rank, codebook_sizes)
    return new, sizes, int((rank > 0).sum())


def check_last_level_distances(distances: Tensor, n: int, k_last: int) -> Tensor:
    """``distances`` as a float tensor, checked to be (n, k_last) finite values: each item's
    distance to each last-level code (SemidError otherwise)."""
    distances = torch.as_tensor(distances)
    if tuple(distances.shape) != (n, k_last):
        raise SemidError(
            f"last-level distances have shape {tuple(distances.shape)}, expected ({n}, {k_last})"
        )
    if not distances.is_floating_point() or not bool(torch.isfinite(distances).all()):
        raise SemidError("last-level distances must be finite numbers (the quantizer's "
                         "last_level_distances of the same embeddings)")  # fmt: skip
    return distances


def _reassign(
    codes: Tensor, codebook_sizes: list[int], *, distances: Tensor | None = None, **_: object
) -> tuple[Tensor, list[int], int]:
    from scipy.optimize import (
        linear_sum_assignment,
    )  # imported here: scipy.optimize is slow to import

    if distances is None:
        raise SemidError("collision strategy 'reassign' needs the quantizer's last-level distances")
    k_last = codebook_sizes[-1]
    distances = check_last_level_distances(distances, len(codes), k_last)
    codes = codes.clone()
    group, counts = group_ids(codes)
    own_cost = distances.gather(1, codes[:, -1:]).squeeze(1)
    # The closest item keeps each collided ID; the others move.
    winner_rank = rank_within_groups(group, priority=-own_cost)
    movers = (counts[group] > 1) & (winner_rank > 0)
    prefix_group, _ = (
        group_ids(codes[:, :-1])
        if codes.shape[1] > 1
        else (torch.zeros(len(codes), dtype=torch.long), None)
    )
    dist = distances.double().numpy()
    moved = 0
    overflow = torch.zeros(len(codes), dtype=torch.bool)
    for g in torch.unique(prefix_group[movers]).tolist():
        members = (prefix_group == g).nonzero().squeeze(1)
        moving = members[movers[members]]
        taken = torch.zeros(k_last, dtype=torch.bool)
        taken[codes[members[~movers[members]], -1]] = True
        free = (~taken).nonzero().squeeze(1)
        if len(moving) > len(free):
            overflow[moving] = True  # cannot fit in this prefix: left for the extra level
            continue
        rows, cols = linear_sum_assignment(dist[np.ix_(moving.numpy(), free.numpy())])
        codes[moving[rows], -1] = free[cols]
        moved += len(rows)
    if overflow.any():
        new, sizes, extra_moved = _extra_level(codes, codebook_sizes)
        return new, sizes, moved + extra_moved
    return codes, list(codebook_sizes), moved


_STRATEGIES: dict[str, Callable[..., tuple[Tensor, list[int], int]]] = {
    "extra-level": _extra_level,
    "popularity": _popularity,
    "reassign": _reassign,
}


assert sorted(_STRATEGIES) == sorted(COLLISION_STRATEGIES), "semid.defaults lists every strategy"


def collision_strategies() -> list[str]:
    """Names accepted by resolve_collisions."""
    return sorted(_STRATEGIES)


def resolve_collisions(
    codes: Tensor,
    codebook_sizes: list[int],
    strategy: str = "extra-level",
    *,
    distances: Tensor | None = None,
    popularity: Tensor | None = None,
) -> tuple[Tensor, list[int], CollisionReport]:
    """Unique codes (N, L or L+1), their per-level codebook sizes, and a report.

    distances (N, K_last) are needed by ``reassign``; popularity (N,) by ``popularity``."""
    check_collision_strategy(strategy)
    codes = torch.as_tensor(codes, dtype=torch.long)
    before = collision_rate(codes)
    _, counts = group_ids(codes)
    new, sizes, moved = _STRATEGIES[strategy](
        codes, list(codebook_sizes), distances=distances, popularity=popularity
    )
    after = collision_rate(new)
    assert after == 0.0, "collision resolution must give unique IDs"
    report = CollisionReport(
        strategy=strategy,
        collision_rate_before=before,
        collision_rate_after=after,
        max_items_per_id_before=int(counts.max()) if len(counts) else 0,
        items_moved=moved,
        extra_level=len(sizes) > len(codebook_sizes),
    )
    return new, sizes, report
