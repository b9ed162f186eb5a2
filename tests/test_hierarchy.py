"""Hierarchy helpers: closure, held-out edges, pair lookup, ranking loss, prefix agreement."""

import pytest
import torch

from semid.errors import SemidError
from semid.hierarchy import (
    ancestors_within,
    check_pairs,
    closure_reconstruction,
    is_pair,
    pair_keys,
    prefix_agreement,
    ranking_loss,
    split_edges,
    transitive_closure,
)

# A diamond under a root: 0 <- 1, 0 <- 2, 1 <- 3, 2 <- 3, 3 <- 4 (child, parent).
DIAMOND = torch.tensor([[1, 0], [2, 0], [3, 1], [3, 2], [4, 3]])


def test_transitive_closure_of_a_dag():
    pairs = transitive_closure(DIAMOND, 5)
    assert pairs.tolist() == [
        [1, 0],
        [2, 0],
        [3, 0],
        [3, 1],
        [3, 2],
        [4, 0],
        [4, 1],
        [4, 2],
        [4, 3],
    ]
    with pytest.raises(SemidError, match="cycle"):
        transitive_closure(torch.tensor([[0, 1], [1, 0]]), 2)


def test_ancestors_within_hops():
    near = ancestors_within(DIAMOND, 5, hops=1)
    assert near[4] == {4, 3} and near[3] == {3, 1, 2}
    assert ancestors_within(DIAMOND, 5, hops=3)[4] == {0, 1, 2, 3, 4}


def test_split_holds_out_every_edge_of_a_test_child():
    edges = torch.tensor([[i, (i - 1) // 2] for i in range(1, 40)] + [[5, 0], [7, 0]])
    split = split_edges(edges, 40, test_fraction=0.2, seed=1)
    assert len(split.test_children) == round(0.2 * 39)
    assert not torch.isin(split.train[:, 0], split.test_children).any()
    assert len(split.train) + int((split.test_parents >= 0).sum()) == len(edges)
    for child, parents in zip(
        split.test_children.tolist(), split.test_parents.tolist(), strict=True
    ):
        assert sorted(p for p in parents if p >= 0) == sorted(
            edges[edges[:, 0] == child, 1].tolist()
        )


def test_is_pair_matches_a_brute_force_lookup():
    g = torch.Generator().manual_seed(0)
    pairs = torch.randint(0, 30, (50, 2), generator=g)
    keys = pair_keys(pairs, 30)
    u, v = torch.randint(0, 30, (20, 1), generator=g), torch.randint(0, 30, (1, 25), generator=g)
    brute = torch.tensor(
        [
            [(a, b) in set(map(tuple, pairs.tolist())) for b in v[0].tolist()]
            for a in u[:, 0].tolist()
        ]
    )
    assert torch.equal(is_pair(keys, u, v, 30), brute)
    assert not is_pair(pair_keys(pairs[:0], 30), u, v, 30).any()


def test_pairs_must_be_integer_rows_in_range():
    assert check_pairs([[1, 0], [2, 1]], 3).dtype == torch.int64
    assert check_pairs(torch.tensor([[1.0, 0.0]]), 3).tolist() == [
        [1, 0]
    ]  # as np.loadtxt reads them
    for bad, words in (([[1.5, 0.0]], "pairs must be whole row indices, got fractions"),
                       ([[3, 0]], "pairs must be"), ([1, 0], "pairs must be")):  # fmt: skip
        with pytest.raises(SemidError, match=words):
            check_pairs(torch.tensor(bad), 3)


def test_ranking_loss_is_the_softmax_loss_without_invalid_negatives():
    pos, neg = torch.tensor([0.5, 1.0]), torch.tensor([[1.0, 2.0, 0.1], [0.3, 3.0, 2.0]])
    invalid = torch.tensor([[False, False, True], [False, False, False]])
    expected = torch.stack(
        [
            -torch.log_softmax(-torch.tensor([0.5, 1.0, 2.0]), 0)[0],
            -torch.log_softmax(-torch.tensor([1.0, 0.3, 3.0, 2.0]), 0)[0],
        ]
    ).mean()
    torch.testing.assert_close(ranking_loss(pos, neg, invalid), expected)


def test_prefix_agreement_sees_codes_that_follow_the_tree():
    # Root 0, branches 1..4, five leaves under each; hops=1 makes only siblings (and parents) related.
    edges = [[b, 0] for b in range(1, 5)]
    edges += [[5 + 5 * (b - 1) + i, b] for b in range(1, 5) for i in range(5)]
    edges = torch.tensor(edges)
    n = 25
    branch = torch.zeros(n, dtype=torch.long)
    branch[1:5] = torch.arange(1, 5)
    branch[5:] = torch.arange(1, 5).repeat_interleave(5)
    codes = torch.stack([branch, torch.arange(n)], 1)
    agree = prefix_agreement(codes, edges, prefix=1, hops=1, samples=2000, seed=0)
    assert agree["shared"] == 1.0 and agree["chance"] < 0.5 and agree["lift"] > 2
    shuffled = prefix_agreement(
        codes[torch.randperm(n, generator=torch.Generator().manual_seed(0))], edges, hops=1
    )
    assert shuffled["lift"] < agree["lift"]


# A tree: 0 <- 1 <- 3 and 0 <- 2 <- 4 (child, parent), on a line.
TREE = torch.tensor([[1, 0], [2, 0], [3, 1], [4, 2]])


def _line_distance(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return torch.cdist(a, b)


def test_closure_reconstruction_is_perfect_when_each_branch_keeps_its_side():
    points = torch.tensor([[0.0], [-1.0], [1.0], [-2.0], [2.0]])
    closure = transitive_closure(TREE, 5)
    scores = closure_reconstruction(points, closure, _line_distance)
    assert scores == {"mean_rank": 1.0, "map": 1.0, "nodes": 5}


def test_closure_reconstruction_of_one_node_by_hand():
    # Node 1 at -1: neighbours 0 (d=1.0) and 3 (d=3.3); non-neighbours 4 (1.2) and 2 (2.1).
    points = torch.tensor([[0.0], [-1.0], [1.1], [2.3], [-2.2]])
    closure = transitive_closure(TREE, 5)
    scores = closure_reconstruction(points, closure, _line_distance, nodes=torch.tensor([1]))
    assert scores["mean_rank"] == pytest.approx((1 + 3) / 2)
    assert scores["map"] == pytest.approx((1 / 1 + 2 / 4) / 2)


def test_closure_reconstruction_matches_brute_force():
    g = torch.Generator().manual_seed(0)
    edges = torch.tensor([[i, (i - 1) // 3] for i in range(1, 30)])
    closure = transitive_closure(edges, 30)
    points = torch.randn(30, 3, generator=g)
    scores = closure_reconstruction(points, closure, _line_distance, chunk=7)
    linked = {(a, b) for a, b in closure.tolist()} | {(b, a) for a, b in closure.tolist()}
    d = torch.cdist(points, points)
    ranks, aps = [], []
    for u in range(30):
        others = [v for v in range(30) if v != u]
        order = sorted(others, key=lambda v: float(d[u, v]))
        hits = [(u, v) in linked for v in order]
        found = 0
        precisions = []
        for pos, hit in enumerate(hits, 1):
            if hit:
                found += 1
                precisions.append(found / pos)
                ranks.append(1 + sum(1 for h in hits[:pos] if not h))
        aps.append(sum(precisions) / len(precisions))
    assert scores["mean_rank"] == pytest.approx(sum(ranks) / len(ranks))
    assert scores["map"] == pytest.approx(sum(aps) / len(aps))
