import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from semid.collisions import collision_rate, rank_within_groups, resolve_collisions
from semid.errors import SemidError


@st.composite
def crowded_codes(draw):
    """Random codes (N, L) from tiny codebooks, so collisions are frequent."""
    levels = draw(st.integers(1, 3))
    size = draw(st.integers(2, 4))
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 10_000))
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, size, (n, levels), generator=g), [size] * levels, seed


@settings(max_examples=60, deadline=None)
@given(crowded_codes(), st.sampled_from(["extra-level", "popularity", "reassign"]))
def test_every_strategy_gives_unique_ids(case, strategy):
    codes, sizes, seed = case
    g = torch.Generator().manual_seed(seed + 1)
    distances = torch.rand(len(codes), sizes[-1], generator=g)
    popularity = torch.randint(0, 5, (len(codes),), generator=g)
    new, new_sizes, report = resolve_collisions(
        codes, sizes, strategy, distances=distances, popularity=popularity
    )
    assert collision_rate(new) == 0.0
    assert report.collision_rate_after == 0.0
    assert report.collision_rate_before == pytest.approx(collision_rate(codes))
    assert new.shape[1] == len(new_sizes)
    assert (new < torch.tensor(new_sizes)).all() and (new >= 0).all()
    if strategy != "reassign" or report.extra_level:
        # Disambiguation keeps every item's leading codes (reassign may change only the last one).
        keep = codes.shape[1] if strategy != "reassign" else codes.shape[1] - 1
        assert torch.equal(new[:, :keep], codes[:, :keep])


def test_extra_level_numbers_items_in_file_order():
    codes = torch.tensor([[1, 1], [0, 0], [1, 1], [1, 1]])
    new, sizes, report = resolve_collisions(codes, [2, 2], "extra-level")
    assert new[:, 2].tolist() == [0, 0, 1, 2]
    assert sizes == [2, 2, 3]
    assert report.max_items_per_id_before == 3 and report.extra_level


def test_popularity_gives_the_most_popular_item_token_zero():
    codes = torch.tensor([[1, 1], [1, 1], [1, 1]])
    new, _, _ = resolve_collisions(codes, [2, 2], "popularity", popularity=torch.tensor([3, 10, 3]))
    assert new[:, 2].tolist() == [1, 0, 2]  # ties keep item order


def test_reassign_moves_the_farther_item_to_its_nearest_free_code():
    codes = torch.tensor([[0, 2], [0, 2], [0, 0], [1, 2]])
    distances = torch.tensor(
        [
            [0.5, 0.9, 0.3, 0.1],  # item 0 is farther from code 2 than item 1: it moves
            [0.0, 0.0, 0.1, 0.0],
            [0.0, 0.0, 0.0, 0.0],
            [0.0, 0.0, 0.0, 0.0],
        ]
    )
    new, sizes, report = resolve_collisions(codes, [2, 4], "reassign", distances=distances)
    # Code 0 is taken by item 2 in prefix (0,); of the free codes 1 and 3, code 3 is nearest.
    assert new.tolist() == [[0, 3], [0, 2], [0, 0], [1, 2]]
    assert sizes == [2, 4] and not report.extra_level and report.items_moved == 1


def test_reassign_falls_back_to_an_extra_level_when_a_prefix_is_full():
    codes = torch.tensor([[0, 1]] * 3)
    new, sizes, report = resolve_collisions(codes, [1, 2], "reassign", distances=torch.rand(3, 2))
    assert collision_rate(new) == 0 and report.extra_level and len(sizes) == 3


def test_rank_within_groups_respects_priority():
    group = torch.tensor([0, 1, 0, 0, 1])
    assert rank_within_groups(group).tolist() == [0, 0, 1, 2, 1]
    assert rank_within_groups(group, torch.tensor([1, 0, 5, 2, 9])).tolist() == [2, 1, 0, 1, 0]


@pytest.mark.parametrize(
    "strategy, kwargs, message",
    [
        ("nope", {}, "unknown collision strategy"),
        ("reassign", {}, "needs the quantizer's last-level distances"),
        ("popularity", {}, "needs item interaction counts"),
        ("reassign", {"distances": torch.rand(2, 3)}, "last-level distances have shape"),
        # were an AttributeError, scipy's ValueError, or (popularity) an item-order ranking
        ("reassign", {"distances": torch.full((2, 2), float("nan"))}, "must be finite numbers"),
        ("reassign", {"distances": torch.ones(2, 2, dtype=torch.long)}, "must be finite numbers"),
        (
            "popularity",
            {"popularity": torch.full((2,), float("nan"))},
            r"must hold counts \(finite",
        ),
        ("popularity", {"popularity": torch.tensor([3, -1])}, r"must hold counts \(finite, >= 0\)"),
    ],
)
def test_bad_arguments_raise_clear_errors(strategy, kwargs, message):
    with pytest.raises(SemidError, match=message):
        resolve_collisions(torch.zeros(2, 2, dtype=torch.long), [2, 2], strategy, **kwargs)


def test_reassign_takes_numpy_distances_as_a_tensor():
    codes = torch.tensor([[0, 1], [0, 1]])
    distances = torch.tensor([[2.0, 0.0], [1.0, 0.5]])
    new, _, report = resolve_collisions(codes, [2, 2], "reassign", distances=distances.numpy())
    assert report.items_moved == 1 and new.tolist() == [[0, 1], [0, 0]]


def test_collision_rate_is_the_share_of_items_that_lost_their_id_to_the_digit():
    """19 of 100 items sharing IDs read 0.19 in stats and stats.json, not 0.18999999999999995."""
    codes = torch.cat([torch.arange(81)[:, None], torch.zeros(19, 1, dtype=torch.long)])
    assert collision_rate(codes) == 0.19 and collision_rate(codes[:0]) == 0.0
