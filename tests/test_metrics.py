import math

import numpy as np
import pytest
import torch

from semid.errors import SemidError
from semid.metrics import (
    average_precision_at_k,
    compute_metrics,
    mrr_at_k,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    relevance,
)


def test_hand_made_single_target_case():
    ranked = torch.tensor([[7, 3, 5], [1, 2, 3], [4, -1, -1]])
    targets = torch.tensor([3, 9, 4])
    rel = relevance(ranked, targets)
    assert rel.tolist() == [[False, True, False], [False, False, False], [True, False, False]]
    assert recall_at_k(rel, 1).tolist() == [0, 0, 1]
    assert recall_at_k(rel, 3).tolist() == [1, 0, 1]
    assert ndcg_at_k(rel, 3).tolist() == pytest.approx([1 / math.log2(3), 0, 1])
    assert mrr_at_k(rel, 3).tolist() == pytest.approx([0.5, 0, 1])
    m = compute_metrics(ranked, targets, ks=(1, 3), names=("recall", "ndcg", "mrr"))
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["mrr@3"] == pytest.approx(0.5)
    assert m["invalid_id_rate"] == pytest.approx(2 / 9)


def test_several_relevant_items():
    ranked = torch.tensor([[1, 2, 3, 4]])
    targets = torch.tensor([[2, 4, 8]])
    rel = relevance(ranked, targets)
    n = torch.tensor([3])
    assert precision_at_k(rel, 4).item() == pytest.approx(0.5)
    assert recall_at_k(rel, 4, n).item() == pytest.approx(2 / 3)
    assert average_precision_at_k(rel, 4, n).item() == pytest.approx((1 / 2 + 2 / 4) / 3)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(rel, 4, n).item() == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / ideal
    )
    # more relevant items than k: the ideal list is k hits long
    assert ndcg_at_k(rel, 2, n).item() == pytest.approx((1 / math.log2(3)) / (1 + 1 / math.log2(3)))
    assert ndcg_at_k(relevance(torch.tensor([[2, 4]]), targets), 2, n).item() == pytest.approx(1.0)


def test_compute_metrics_counts_every_listed_target_as_relevant_by_default():
    """With targets (B, T) and no num_relevant, one relevant item was assumed: ranked [1, 5, 3]
    against targets [1, 5] gave NDCG@3 1.63 and MAP@3 2.0, and recall was a hit rate."""
    ranked, targets = torch.tensor([[1, 5, 3], [9, 8, 7]]), torch.tensor([[1, 5, 6], [7, -1, -1]])
    got = compute_metrics(ranked, targets, ks=(3,), names=("recall", "ndcg", "map"))
    given = compute_metrics(ranked, targets, ks=(3,), names=("recall", "ndcg", "map"),
                            num_relevant=torch.tensor([3, 1]))  # fmt: skip
    assert got == given and got["recall@3"] == pytest.approx((2 / 3 + 1) / 2)
    assert all(value <= 1 for value in got.values())
    # item 0 is an item like any other; a given num_relevant is kept (4 relevant, 2 found)
    first = compute_metrics(torch.tensor([[0, 7, 3]]), torch.tensor([[0, 5]]), ks=(3,),
                            names=("recall",))  # fmt: skip
    assert first["recall@3"] == 0.5
    kept = compute_metrics(torch.tensor([[1, 5, 3]]), torch.tensor([[1, 5]]), ks=(3,),
                           names=("recall",), num_relevant=torch.tensor([4]))  # fmt: skip
    assert kept["recall@3"] == 0.5


def test_a_target_listed_twice_is_one_relevant_item():
    """Targets [3, 3] (a qrels line given twice) with 3 ranked first gave recall 0.5: each listing
    counted as a relevant item."""
    got = compute_metrics(torch.tensor([[3, 5]]), torch.tensor([[3, 3]]), ks=(2,),
                          names=("recall", "ndcg", "map"))  # fmt: skip
    assert got == {"recall@2": 1.0, "ndcg@2": 1.0, "map@2": 1.0, "invalid_id_rate": 0.0}
    graded = compute_metrics(torch.tensor([[5, 3]]), torch.tensor([[3, 5, 3]]), ks=(2,),
                             names=("ndcg",), grades=torch.tensor([[2.0, 1.0, 2.0]]))  # fmt: skip
    once = compute_metrics(torch.tensor([[5, 3]]), torch.tensor([[3, 5]]), ks=(2,),
                           names=("ndcg",), grades=torch.tensor([[2.0, 1.0]]))  # fmt: skip
    assert graded == once


def test_padding_targets_never_match_padding_results():
    rel = relevance(torch.tensor([[-1, 2]]), torch.tensor([[-1, 2]]))
    assert rel.tolist() == [[False, True]]


def test_k_validation():
    with pytest.raises(SemidError, match="k must be"):
        recall_at_k(torch.zeros(1, 2, dtype=torch.bool), 0)
    with pytest.raises(SemidError, match="unknown metrics"):
        compute_metrics(
            torch.zeros(1, 2, dtype=torch.long), torch.zeros(1, dtype=torch.long), names=("auc",)
        )


def test_graded_ndcg_matches_hand_computed_values_and_binary_ndcg():
    from semid.metrics import graded_ndcg_at_k, ndcg_at_k, relevance

    # relevant: item 0 (grade 2) and item 1 (grade 1); ranked 1, 5, 0
    ranked = torch.tensor([[1, 5, 0], [7, 8, 9]])
    targets, grades = torch.tensor([[0, 1], [3, -1]]), torch.tensor([[2.0, 1.0], [1.0, 0.0]])
    dcg, ideal = 1 / math.log2(2) + 2 / math.log2(4), 2 / math.log2(2) + 1 / math.log2(3)
    got = graded_ndcg_at_k(ranked, targets, grades, 3)
    assert got.tolist() == pytest.approx([dcg / ideal, 0.0])
    assert graded_ndcg_at_k(ranked, targets, grades, 1).tolist() == pytest.approx([1 / 2, 0.0])
    # every grade 1: the binary NDCG, with padding and invalid (-1) results
    g = torch.Generator().manual_seed(0)
    ranked = torch.randint(-1, 12, (50, 10), generator=g)
    targets = torch.randint(0, 12, (50, 3), generator=g)
    targets[::3, 2] = -1
    for k in (1, 5, 10):
        binary = ndcg_at_k(relevance(ranked, targets), k, (targets >= 0).sum(1))
        graded = graded_ndcg_at_k(ranked, targets, torch.ones(targets.shape), k)
        torch.testing.assert_close(graded, binary)


def test_an_id_ranked_twice_counts_once_and_bad_shapes_are_named():
    """A repeated id counts at its first place only (it is an invalid entry after that), so no
    metric exceeds 1; lists and shapes that do not fit are one clear error."""
    metrics = compute_metrics(torch.tensor([[2, 2, 2]]), torch.tensor([2]), ks=(3,),
                              names=("recall", "ndcg", "map", "mrr"))  # fmt: skip
    assert metrics == {"recall@3": 1.0, "ndcg@3": 1.0, "map@3": 1.0, "mrr@3": 1.0,
                       "invalid_id_rate": pytest.approx(2 / 3)}  # fmt: skip
    graded = compute_metrics(torch.tensor([[2, 2]]), torch.tensor([[2]]), ks=(2,), names=("ndcg",),
                             grades=torch.tensor([[3.0]]))  # fmt: skip
    assert graded["ndcg@2"] == 1.0
    assert compute_metrics([[1, 2]], [2], ks=(2,))["recall@2"] == 1.0  # lists are taken
    with pytest.raises(SemidError, match=r"ranked must be \(B, K\) and targets"):
        compute_metrics(torch.tensor([[1, 2]]), torch.tensor([2, 3]), ks=(2,))


R, T, T2 = (
    torch.tensor([[3, 1, 2], [0, 2, 1]]),
    torch.tensor([1, 5]),
    torch.tensor([[1, 2], [5, -1]]),
)


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (
            {"num_relevant": torch.tensor([1, 1])},
            "query 0 lists 2 relevant targets but num_relevant says 1",
        ),
        (
            {"num_relevant": torch.tensor([0, 1])},
            "query 0 lists 2 relevant targets but num_relevant says 0",
        ),
        ({"num_relevant": torch.tensor([2.5, 1.0])}, "num_relevant must hold whole numbers"),
        (
            {"targets": T, "num_relevant": [1, -2]},
            r"num_relevant must count relevant items \(>= 0\), got -2",
        ),
        (
            {"targets": T.double()},
            r"targets must hold integer ids \(-1 for none\), got torch.float64",
        ),
        ({"ranked": R == 1}, r"ranked must hold integer ids \(-1 for none\), got torch.bool"),
        (
            {"num_relevant": [2, 2, 2]},
            r"num_relevant must be \(2,\), one count per query, got \(3,\)",
        ),
        (
            {"grades": torch.tensor([[float("nan"), 1.0], [1.0, 0.0]])},
            "grades of listed targets must be numbers above 0",
        ),
        (
            {"grades": torch.tensor([[-3.0, 1.0], [1.0, 0.0]])},
            "grades of listed targets must be numbers above 0",
        ),
        ({"grades": [[2.0, 1.0]]}, r"grades must have the shape of targets \(B, T\), got \(1, 2\)"),
        ({"ks": 3}, r"ks must be a sequence, got 3; write e.g. ks=\(5, 10\)"),
        ({"ks": (2.5,)}, "k must be an integer, got 2.5"),
        ({"names": "recall"}, "names must be a sequence, got 'recall'"),
        ({"num_relevant": torch.tensor([float("inf"), 2.0])}, "must hold whole numbers"),
    ],
)
def test_inputs_that_would_give_metrics_above_one_or_nan_are_refused(kwargs, words):
    """NDCG 1.63 and MAP 2.0 came back for a num_relevant below the listed targets; NaN or
    negative grades gave NDCG 0; one k or one name failed deep inside, or was read letter by letter."""
    inputs = {"ranked": R, "targets": T2, "ks": (3,), "names": ("recall", "ndcg", "map"), **kwargs}
    with pytest.raises(SemidError, match=words):
        compute_metrics(**inputs)


def test_no_queries_and_lists_of_counts_and_grades():
    with pytest.raises(SemidError, match=r"no queries to score \(B = 0\)"):
        compute_metrics(torch.zeros(0, 3, dtype=torch.long), torch.zeros(0, dtype=torch.long))
    listed = compute_metrics(R, T2, ks=(3,), names=("recall", "ndcg"), num_relevant=[2, 3],
                             grades=[[2.0, 1.0], [1.0, 0.0]])  # fmt: skip
    assert listed["recall@3"] == pytest.approx(0.5) and 0 < listed["ndcg@3"] < 1
    assert compute_metrics(R, T, ks=(np.int64(2),))["recall@2"] == 0.5  # numpy integers are ks
    arrays = compute_metrics(R, T, ks=np.array([2]), names=np.array(["recall"]))
    assert arrays == {"recall@2": 0.5, "invalid_id_rate": 0.0}


def test_repeated_labels_need_every_relevant_result_counted():
    """``repeats=True`` ranks labels (a class per image): without num_relevant, or with a count
    below the labels ranked, NDCG came back as 2.13 and MAP as 3.0; with the class sizes the
    figures are a share."""
    ranked, targets = torch.tensor([[1, 1, 1], [2, 0, 2]]), torch.tensor([1, 2])
    with pytest.raises(SemidError, match="repeats=True ranks labels .* pass num_relevant"):
        compute_metrics(ranked, targets, ks=(3,), names=("ndcg", "map"), repeats=True)
    with pytest.raises(
        SemidError, match="query 0 ranks 3 relevant results but num_relevant says 1"
    ):
        compute_metrics(
            ranked, targets, ks=(3,), names=("ndcg",), num_relevant=[1, 5], repeats=True
        )
    got = compute_metrics(ranked, targets, ks=(3,), names=("recall", "ndcg", "map"),
                          num_relevant=[3, 4], repeats=True)  # fmt: skip
    assert got["recall@3"] == pytest.approx((1 + 2 / 4) / 2)
    assert got["ndcg@3"] == pytest.approx((1 + (1 + 1 / 2) / (1 + 1 / 1.5849625 + 1 / 2)) / 2)
    assert got["map@3"] == pytest.approx((1 + (1 + 2 / 3) / 3) / 2)
