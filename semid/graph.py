"""Item features propagated over the user-item bipartite graph, LightGCN-style (He et al. 2020).

Pure functions on tensors. Build the graph from TRAINING interactions only (e.g.
``leave_one_out(log).train``): an edge from a validation or test event would leak the target
into the item representation.

Propagation: nodes are the users then the items. Layer 0 holds the item features and, for each
user, the mean of the features of the items it interacted with (users have no content of their
own). Layer k+1 = A_hat @ layer k with A_hat = D^-1/2 A D^-1/2 (no self-loops, repeated
interactions counted once). The output is the mean of layers 0..hops. An item with no training
interaction keeps its own features: it has no collaborative signal, so it is content only.
"""

from __future__ import annotations

import torch
from torch import Tensor

from semid.errors import SemidError


def check_edges(
    users: Tensor, items: Tensor, num_users: int, num_items: int
) -> tuple[Tensor, Tensor]:
    """Validate (E,) user and item ids against the graph size; returns them as int64."""
    users, items = torch.as_tensor(users).long(), torch.as_tensor(items).long()
    if users.shape != items.shape or users.ndim != 1:
        raise SemidError(
            f"users and items must be 1-d and of equal length, got {tuple(users.shape)} and {tuple(items.shape)}"
        )
    if users.numel() and (int(users.min()) < 0 or int(users.max()) >= num_users):
        raise SemidError(
            f"user ids must lie in [0, {num_users}); check the interaction log's num_users"
        )
    if items.numel() and (int(items.min()) < 0 or int(items.max()) >= num_items):
        raise SemidError(
            f"item ids must lie in [0, {num_items}); the interactions and the item embeddings disagree on the item count"
        )
    return users, items


def unique_edges(users: Tensor, items: Tensor, num_items: int) -> tuple[Tensor, Tensor]:
    """Distinct (user, item) pairs (E',) of the events (E,)."""
    pairs = torch.unique(users * num_items + items)
    return pairs // num_items, pairs % num_items


def normalized_adjacency(users: Tensor, items: Tensor, num_users: int, num_items: int) -> Tensor:
    """Sparse (U+I, U+I) D^-1/2 A D^-1/2 of the bipartite graph; nodes are users then items."""
    users, items = check_edges(users, items, num_users, num_items)
    users, items = unique_edges(users, items, num_items)
    n = num_users + num_items
    rows = torch.cat([users, items + num_users])
    cols = torch.cat([items + num_users, users])
    degree = torch.bincount(rows, minlength=n).double()
    inv_sqrt = degree.pow(-0.5)
    inv_sqrt[degree == 0] = 0.0
    values = (inv_sqrt[rows] * inv_sqrt[cols]).float()
    return torch.sparse_coo_tensor(
        torch.stack([rows, cols]), values, (n, n), check_invariants=True
    ).coalesce()


# Edges whose item features are gathered at once: the gather of every edge would take E x D floats
# (a million interactions of 384-d items: 1.5 GB), more than all else a fit holds.
_EDGE_CHUNK_FLOATS = 1 << 24


def user_means(users: Tensor, items: Tensor, num_users: int, x: Tensor) -> Tensor:
    """(U, D) mean of the item features x (I, D) over each user's distinct items; zero for none."""
    sums = torch.zeros(num_users, x.shape[1], dtype=x.dtype)
    edges = max(1, _EDGE_CHUNK_FLOATS // max(1, x.shape[1]))
    for start in range(0, len(users), edges):  # adds in edge order, as one index_add_ of all would
        sums.index_add_(0, users[start : start + edges], x[items[start : start + edges]])
    counts = torch.bincount(users, minlength=num_users).clamp_min(1).to(x.dtype)
    return sums / counts[:, None]


def propagate(adj: Tensor, h0: Tensor, hops: int) -> Tensor:
    """Mean (n, D) of the layers h0, A h0, ..., A^hops h0 for a sparse adjacency adj (n, n)."""
    if hops < 0:
        raise SemidError(f"hops must be >= 0, got {hops}")
    layers, h = [h0], h0
    for _ in range(hops):
        h = torch.sparse.mm(adj, h)
        layers.append(h)
    return torch.stack(layers).mean(0)


def propagate_item_features(
    x: Tensor, users: Tensor, items: Tensor, num_users: int, hops: int = 2
) -> Tensor:
    """Item features (I, D) after LightGCN propagation of x (I, D) over the training edges (E,)."""
    num_items = x.shape[0]
    users, items = check_edges(users, items, num_users, num_items)
    users, items = unique_edges(users, items, num_items)
    x = x.float()
    adj = normalized_adjacency(users, items, num_users, num_items)
    h0 = torch.cat([user_means(users, items, num_users, x), x])
    out = propagate(adj, h0, hops)[num_users:]
    cold = torch.bincount(items, minlength=num_items) == 0
    out[cold] = x[cold]
    return out
