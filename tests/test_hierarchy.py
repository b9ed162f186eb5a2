"""Hierarchy helpers: closure, held-out edges, pair lookup, ranking loss, prefix agreement."""

import pytest
import torch

from semid.errors import SemidError
from semid.hierarchy import (
    ancestors_within,
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
