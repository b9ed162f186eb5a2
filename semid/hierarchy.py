"""Hierarchies and semantic IDs: ranking loss, held-out edges, prefix agreement, reconstruction.

Used by ``hrq`` (the loss) and by ``benchmarks/hierarchy.py`` (the parent-prediction task and the
check of how well shared ID prefixes follow the tree). Items are rows 0..N-1; a hierarchy is a
(E, 2) int64 tensor of (child, parent) rows.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from semid.errors import SemidError
from semid.trie import holds_integers


def ranking_loss(pos: Tensor, neg: Tensor, invalid: Tensor | None = None) -> Tensor:
    """Nickel & Kiela (2017) loss: -log softmax of -d(u, ancestor) against -d(u, negatives).

    pos (B,) distances to an ancestor; neg (B, M) distances to negatives; invalid (B, M) bool
    marks negatives that are not (the item itself, or one of its ancestors)."""
    neg_logits = -neg if invalid is None else (-neg).masked_fill(invalid, float("-inf"))
    logits = torch.cat([-pos[:, None], neg_logits], 1)
    return F.cross_entropy(logits, torch.zeros(len(pos), dtype=torch.long, device=pos.device))


def check_pairs(pairs: Tensor | None, n: int) -> Tensor | None:
    """`pairs` as a (P, 2) int64 tensor of rows < n, or None; SemidError if malformed."""
    if pairs is None:
        return None
    pairs = torch.as_tensor(pairs)
    if pairs.dtype.is_floating_point and not torch.equal(
        pairs, pairs.round()
    ):  # np.loadtxt: whole floats
        raise SemidError("pairs must be whole row indices, got fractions; fix the pairs file")
    if not pairs.dtype.is_floating_point and not holds_integers(pairs):
        raise SemidError(f"pairs must be integer row indices, got {pairs.dtype}")
    pairs = pairs.long()
    if (
        pairs.ndim != 2
        or pairs.shape[1] != 2
        or (pairs.numel() and (pairs.min() < 0 or pairs.max() >= n))
    ):
        raise SemidError(f"pairs must be (P, 2) row indices into x's {n} rows")
    return pairs


def pair_keys(pairs: Tensor, n: int) -> Tensor:
    """Sorted unique int64 keys u * n + v (P',) of pairs (P, 2), for fast membership tests."""
    return torch.unique(pairs[:, 0] * n + pairs[:, 1])


def is_pair(keys: Tensor, u: Tensor, v: Tensor, n: int) -> Tensor:
    """Whether each (u, v) (broadcast) is among the pairs whose `pair_keys` are `keys`."""
    query = u * n + v
    if len(keys) == 0:
        return torch.zeros_like(query, dtype=torch.bool)
    # Binary search in the sorted keys: much cheaper than isin for many queries per step.
    pos = torch.searchsorted(keys, query).clamp_max(len(keys) - 1)
    return keys[pos] == query


def transitive_closure(edges: Tensor, n: int) -> Tensor:
    """Every (descendant, ancestor) pair (P, 2) int64 of a DAG given as (child, parent) rows."""
    parents: list[list[int]] = [[] for _ in range(n)]
    children: list[list[int]] = [[] for _ in range(n)]
    for child, parent in edges.tolist():
        parents[child].append(parent)
        children[parent].append(child)
    pending = [len(p) for p in parents]
    queue = deque(i for i in range(n) if pending[i] == 0)
    ancestors: list[set[int]] = [set() for _ in range(n)]
    done = 0
    while queue:
        node = queue.popleft()
        done += 1
        for p in parents[node]:
            ancestors[node].add(p)
            ancestors[node] |= ancestors[p]
        for c in children[node]:
            pending[c] -= 1
            if pending[c] == 0:
                queue.append(c)
    if done < n:
        raise SemidError("the hierarchy has a cycle; pass (child, parent) edges of a DAG")
    pairs = [(i, a) for i in range(n) for a in sorted(ancestors[i])]
    return torch.tensor(pairs, dtype=torch.long).view(-1, 2)


@dataclass
class EdgeSplit:
    """Hypernym edges split by child: all parents of a test child are held out together."""

    train: Tensor  # (E_train, 2) (child, parent) rows
    test_children: Tensor  # (T,) item rows
    test_parents: Tensor  # (T, P_max) parent rows, padded with -1


def split_edges(edges: Tensor, n: int, test_fraction: float = 0.1, seed: int = 0) -> EdgeSplit:
    """Hold out `test_fraction` of the items that have parents, with all their parent edges."""
    if not 0 < test_fraction < 1:
        raise SemidError(f"test_fraction must be in (0, 1), got {test_fraction}")
    children = torch.unique(edges[:, 0])
    g = torch.Generator().manual_seed(seed)
    test = children[
        torch.randperm(len(children), generator=g)[: max(1, round(test_fraction * len(children)))]
    ]
    test = test.sort().values
    held = torch.isin(edges[:, 0], test)
    return EdgeSplit(
        train=edges[~held], test_children=test, test_parents=_padded_parents(edges[held], test)
    )


def _padded_parents(edges: Tensor, children: Tensor) -> Tensor:
    lists: dict[int, list[int]] = {int(c): [] for c in children}
    for child, parent in edges.tolist():
        lists[child].append(parent)
    width = max(len(v) for v in lists.values())
    return torch.tensor(
        [lists[int(c)] + [-1] * (width - len(lists[int(c)])) for c in children], dtype=torch.long
    )


def ancestors_within(edges: Tensor, n: int, hops: int) -> list[set[int]]:
    """For each item, itself and its ancestors at most `hops` edges up (N sets)."""
    parents: list[list[int]] = [[] for _ in range(n)]
    for child, parent in edges.tolist():
        parents[child].append(parent)
    out = []
    for i in range(n):
        seen, frontier = {i}, [i]
        for _ in range(hops):
            frontier = [p for f in frontier for p in parents[f] if p not in seen]
            seen.update(frontier)
        out.append(seen)
    return out


def _related(near: list[set[int]], pairs: Tensor) -> Tensor:
    return torch.tensor(
        [not near[a].isdisjoint(near[b]) for a, b in pairs.tolist()], dtype=torch.bool
    )


def prefix_agreement(
    codes: Tensor,
    edges: Tensor,
    prefix: int = 1,
    hops: int = 3,
    samples: int = 20000,
    seed: int = 0,
) -> dict[str, float]:
    """How often two items sharing their first `prefix` codes have a common ancestor within `hops`.

    codes (N, L); edges (E, 2) (child, parent). Returns the rate among random pairs that share the
    prefix (``shared``), among random pairs (``chance``) and their ratio (``lift``)."""
    n = codes.shape[0]
    near = ancestors_within(edges, n, hops)
    g = torch.Generator().manual_seed(seed)
    random_pairs = torch.randint(n, (samples, 2), generator=g)
    random_pairs = random_pairs[random_pairs[:, 0] != random_pairs[:, 1]]
    # Pairs sharing a prefix: pick an item, then another item of its prefix group.
    key = torch.unique(codes[:, :prefix], dim=0, return_inverse=True)[1]
    order = torch.argsort(key, stable=True)
    counts = torch.bincount(key)
    starts = torch.cumsum(counts, 0) - counts
    first = torch.randint(n, (samples,), generator=g)
    group = key[first]
    first, group = first[counts[group] > 1], group[counts[group] > 1]
    other = order[
        starts[group]
        + (torch.rand(len(group), generator=g) * counts[group]).long().clamp_max(counts[group] - 1)
    ]
    shared_pairs = torch.stack([first, other], 1)[first != other]
    shared = (
        float(_related(near, shared_pairs).float().mean()) if len(shared_pairs) else float("nan")
    )
    chance = float(_related(near, random_pairs).float().mean())
    return {
        "shared": shared,
        "chance": chance,
        "lift": shared / chance if chance > 0 else float("nan"),
    }


def _neighbour_index(closure: Tensor, n: int) -> tuple[Tensor, Tensor, Tensor]:
    """The closure made symmetric, sorted by first node, with per-node counts and start offsets."""
    sym = torch.unique(torch.cat([closure, closure.flip(1)]), dim=0)
    counts = torch.bincount(sym[:, 0], minlength=n)
    return sym[:, 1], counts, torch.cumsum(counts, 0) - counts


def closure_reconstruction(
    points: Tensor,
    closure: Tensor,
    distance: Callable[[Tensor, Tensor], Tensor],
    nodes: Tensor | None = None,
    chunk: int = 256,
) -> dict[str, float]:
    """Mean rank and MAP of a transitive closure from embeddings (Nickel & Kiela 2017).

    points (N, d); closure (P, 2) (descendant, ancestor) rows, taken as undirected; `distance`
    maps (B, d), (N, d) to (B, N). For each node u in `nodes` (default: all) with a neighbour,
    every neighbour v is ranked by distance among the nodes not connected to u (u itself is left
    out): rank 1 means no non-neighbour is nearer. Mean rank is over all (u, v); MAP is the mean
    over u of the average precision of u's neighbours in the distance order."""
    n = points.shape[0]
    targets, counts, starts = _neighbour_index(closure, n)
    nodes = torch.arange(n) if nodes is None else nodes
    nodes = nodes[counts[nodes] > 0]
    rank_sum, rank_count, ap_sum = 0.0, 0, 0.0
    for rows in nodes.split(chunk):
        d = distance(points[rows], points).float()
        d[torch.arange(len(rows)), rows] = float("inf")  # u sorts last and is never counted
        c = counts[rows]
        owner = torch.repeat_interleave(torch.arange(len(rows)), c)
        offset = torch.arange(int(c.sum())) - torch.repeat_interleave(torch.cumsum(c, 0) - c, c)
        mask = torch.zeros_like(d, dtype=torch.bool)
        mask[owner, targets[torch.repeat_interleave(starts[rows], c) + offset]] = True
        hits = mask.gather(1, d.argsort(1))  # (B, N) neighbour flags in distance order
        position = torch.arange(1, n + 1).expand_as(hits)  # 1-based
        found = hits.cumsum(1)  # neighbours up to and including each position
        ranks = (position - found + 1)[hits]  # 1 + non-neighbours before each neighbour
        rank_sum, rank_count = rank_sum + float(ranks.sum()), rank_count + len(ranks)
        precision = torch.where(hits, found / position, torch.zeros(()))
        ap_sum += float((precision.sum(1) / c).sum())
    return {
        "mean_rank": rank_sum / max(rank_count, 1),
        "map": ap_sum / max(len(nodes), 1),
        "nodes": len(nodes),
    }
