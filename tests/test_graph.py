"""LightGCN propagation over the user-item graph (semid.graph): a hand-computed graph, and no leaks."""

from __future__ import annotations

import math

import pytest
import torch

import semid.graph
from semid.data import InteractionLog, leave_one_out
from semid.errors import SemidError
from semid.graph import normalized_adjacency, propagate, propagate_item_features, user_means

# 3 users, 4 items: u0 saw i0 and i1, u1 saw i1 and i2, u2 saw i1 twice; nobody saw i3.
USERS = torch.tensor([0, 0, 1, 1, 2, 2])
ITEMS = torch.tensor([0, 1, 1, 2, 1, 1])
X = torch.tensor([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0], [2.0, 3.0]])
R2, R3, R6 = math.sqrt(2), math.sqrt(3), math.sqrt(6)


def hand_adjacency() -> torch.Tensor:
    """D^-1/2 A D^-1/2 by hand; nodes u0 u1 u2 i0 i1 i2 i3; degrees u: 2 2 1, i: 1 3 1 0."""
    a = torch.zeros(7, 7)
    for u, i, w in [(0, 3, 1 / R2), (0, 4, 1 / R6), (1, 4, 1 / R6), (1, 5, 1 / R2), (2, 4, 1 / R3)]:
        a[u, i] = a[i, u] = w
    return a


def test_normalized_adjacency_matches_hand_computation():
    adj = normalized_adjacency(USERS, ITEMS, num_users=3, num_items=4)
    torch.testing.assert_close(adj.to_dense(), hand_adjacency())


def test_one_hop_matches_hand_computation():
    out = propagate_item_features(X, USERS, ITEMS, num_users=3, hops=1)
    # Users start as the mean of their items: u0 = (.5, .5), u1 = (.5, 1), u2 = (0, 1).
    hop = torch.tensor(
        [
            [0.5 / R2, 0.5 / R2],  # i0 <- u0
            [1.0 / R6, 1.5 / R6 + 1 / R3],  # i1 <- u0, u1, u2
            [0.5 / R2, 1.0 / R2],  # i2 <- u1
        ]
    )
    torch.testing.assert_close(out[:3], (X[:3] + hop) / 2)
    torch.testing.assert_close(out[3], X[3])  # no training interaction: content only


def test_two_hops_match_dense_powers_of_the_hand_matrix():
    a = hand_adjacency()
    h0 = torch.cat([torch.tensor([[0.5, 0.5], [0.5, 1.0], [0.0, 1.0]]), X])
    expected = ((h0 + a @ h0 + a @ a @ h0) / 3)[3:]
    out = propagate_item_features(X, USERS, ITEMS, num_users=3, hops=2)
    torch.testing.assert_close(out[:3], expected[:3])
    torch.testing.assert_close(out[3], X[3])


def test_zero_hops_is_identity():
    adj = normalized_adjacency(USERS, ITEMS, 3, 4)
    h = torch.randn(7, 5)
    torch.testing.assert_close(propagate(adj, h, 0), h)
    torch.testing.assert_close(propagate_item_features(X, USERS, ITEMS, 3, hops=0), X)


def test_user_means_in_chunks_of_edges_are_the_bits_of_one_sum(monkeypatch):
    """User means gather item features a chunk of edges at a time (all edges at once would hold
    E x D floats) and add them in edge order: the same bits as one index_add_ of every edge."""
    g = torch.Generator().manual_seed(0)
    users, items = (
        torch.randint(0, 50, (20_000,), generator=g),
        torch.randint(0, 300, (20_000,), generator=g),
    )
    x = torch.randn(300, 24, generator=g)
    whole = user_means(users, items, 50, x)
    monkeypatch.setattr(semid.graph, "_EDGE_CHUNK_FLOATS", 7 * 24)  # chunks of 7 edges
    assert torch.equal(user_means(users, items, 50, x), whole)
    counts = torch.bincount(users, minlength=50).clamp_min(1)[:, None]
    expected = torch.zeros(50, 24).index_add_(0, users, x[items]) / counts
    assert torch.equal(whole, expected)


def test_bad_ids_are_rejected():
    with pytest.raises(SemidError, match="item ids"):
        normalized_adjacency(USERS, ITEMS + 3, 3, 4)
    with pytest.raises(SemidError, match="user ids"):
        propagate_item_features(X, USERS + 1, ITEMS, num_users=3)
    with pytest.raises(SemidError, match="hops"):
        propagate_item_features(X, USERS, ITEMS, num_users=3, hops=-1)


def synthetic_log(
    seed: int, num_users: int = 12, num_items: int = 10, per_user: int = 6
) -> InteractionLog:
    """Each user rates `per_user` distinct random items at increasing times."""
    g = torch.Generator().manual_seed(seed)
    items = torch.cat([torch.randperm(num_items, generator=g)[:per_user] for _ in range(num_users)])
    users = torch.arange(num_users).repeat_interleave(per_user)
    times = torch.arange(len(users), dtype=torch.int64)
    return InteractionLog(users, items, times, num_users, num_items)


def test_valid_and_test_events_do_not_reach_the_graph():
    log = synthetic_log(0)
    split = leave_one_out(log)
    adj = normalized_adjacency(
        split.train.users, split.train.items, log.num_users, log.num_items
    ).to_dense()
    for held_out in (split.valid_items, split.test_items):
        assert (adj[split.test_users, held_out + log.num_users] == 0).all()
    # Rewriting every user's last two events leaves the propagated features unchanged.
    last_two = torch.zeros(len(log), dtype=torch.bool)
    last_two[5::6] = last_two[4::6] = True
    other = InteractionLog(
        log.users, torch.where(last_two, (log.items + 3) % 10, log.items), log.timestamps, 12, 10
    )
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(1))
    a = propagate_item_features(x, split.train.users, split.train.items, 12)
    b = propagate_item_features(
        x, leave_one_out(other).train.users, leave_one_out(other).train.items, 12
    )
    torch.testing.assert_close(a, b)
    full = propagate_item_features(x, log.users, log.items, 12)
    assert not torch.allclose(a, full), "the held-out events should matter when they are included"


@pytest.mark.slow
def test_ml100k_graph_holds_only_training_edges():
    from semid.data import load_dataset

    log = load_dataset("ml-100k").interactions
    split = leave_one_out(log)
    adj = normalized_adjacency(split.train.users, split.train.items, log.num_users, log.num_items)
    edges = set(zip(adj.indices()[0].tolist(), adj.indices()[1].tolist(), strict=True))
    train_pairs = set(zip(split.train.users.tolist(), split.train.items.tolist(), strict=True))
    for users, items in [
        (split.valid_users, split.valid_items),
        (split.test_users, split.test_items),
    ]:
        for u, i in zip(users.tolist(), items.tolist(), strict=True):
            assert ((u, i + log.num_users) in edges) == ((u, i) in train_pairs)
    assert len(edges) == 2 * len(train_pairs)
