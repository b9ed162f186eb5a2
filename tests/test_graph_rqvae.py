"""graph_rqvae: content plus graph-propagated features, round trips, new items, multiple modalities."""

from __future__ import annotations

import pytest
import torch

from semid.data import InteractionLog, leave_one_out
from semid.errors import SemidError
from semid.graph import propagate_item_features
from semid.quantization import Quantizer, build_quantizer
from semid.quantizers.graph_rqvae import GraphRQVAE

NUM_USERS, NUM_ITEMS, D = 30, 40, 8
SPEC = "graph_rqvae:2x8,hidden=16,hops=2,latent=4"
FAST = {"epochs": 4, "progress": False}
COLD = 39  # an item nobody interacts with


def content(seed: int = 0, dim: int = D) -> torch.Tensor:
    """(NUM_ITEMS, dim) item content embeddings."""
    return torch.randn(NUM_ITEMS, dim, generator=torch.Generator().manual_seed(seed))


def log() -> InteractionLog:
    """Each user rates 8 random items (never the cold one) at increasing times."""
    g = torch.Generator().manual_seed(0)
    items = torch.cat([torch.randperm(COLD, generator=g)[:8] for _ in range(NUM_USERS)])
    users = torch.arange(NUM_USERS).repeat_interleave(8)
    return InteractionLog(users, items, torch.arange(len(users)), NUM_USERS, NUM_ITEMS)


@pytest.fixture(scope="module")
def train() -> InteractionLog:
    return leave_one_out(log()).train


@pytest.fixture(scope="module")
def fitted(train) -> GraphRQVAE:
    return build_quantizer(SPEC).fit(content(), interactions=train, **FAST)


def test_declares_that_it_needs_interactions():
    assert GraphRQVAE.needs_interactions is True


def test_interactions_that_are_no_log_are_named():
    with pytest.raises(SemidError, match="must be an interaction log .*; got a dict without users"):
        build_quantizer("graph_rqvae:2x4").fit(content(), interactions={"user": [0]})


def test_round_trip_shapes(fitted):
    codes = fitted.encode(content())
    assert codes.shape == (NUM_ITEMS, 2) and codes.dtype == torch.int64
    assert fitted.decode(codes).shape == (NUM_ITEMS, D)
    assert fitted.last_level_distances(content()).shape == (NUM_ITEMS, 8)


def test_graph_features_come_from_the_given_training_log_only(fitted, train):
    expected = propagate_item_features(content(), train.users, train.items, NUM_USERS, hops=2)
    torch.testing.assert_close(fitted.graph_features, expected)
    full = propagate_item_features(content(), log().users, log().items, NUM_USERS, hops=2)
    assert not torch.allclose(fitted.graph_features, full)


def test_save_load_gives_identical_codes(fitted, tmp_path):
    fitted.save_pretrained(tmp_path / "q")
    q2 = Quantizer.from_pretrained(tmp_path / "q")
    assert isinstance(q2, GraphRQVAE) and str(q2.spec) == SPEC
    codes = fitted.encode(content())
    assert torch.equal(q2.encode(content()), codes)
    torch.testing.assert_close(q2.decode(codes), fitted.decode(codes))


def test_fitted_items_are_found_in_any_order(fitted):
    perm = torch.randperm(NUM_ITEMS, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fitted.item_index(content()[perm]), perm)
    assert torch.equal(fitted.encode(content()[perm]), fitted.encode(content())[perm])


def test_twins_of_identical_content_keep_apart_in_any_order_or_subset(train):
    """Items 3, 7 and 11 share one content embedding (ml-100k lists 18 films twice): a lookup by
    content matched each to the first, so a batch in another order, or a subset, gave the later
    twins the first one's graph half and code. Now the twins of a batch take the fitted twins in
    batch order, so they keep apart; a content lookup cannot tell which twin is which."""
    x = content()
    x[[7, 11]] = x[3].clone()
    q = build_quantizer(SPEC).fit(x, interactions=train, **FAST)
    twins = [3, 7, 11]
    assert torch.equal(q.item_index(x), torch.arange(NUM_ITEMS))  # fit order: by position
    perm = torch.randperm(NUM_ITEMS, generator=torch.Generator().manual_seed(3))
    found = q.item_index(x[perm])
    assert sorted(found[torch.isin(perm, torch.tensor(twins))].tolist()) == twins
    others = ~torch.isin(perm, torch.tensor(twins))
    assert torch.equal(found[others], perm[others])
    assert q.item_index(x[[11, 0, 7]]).tolist() == [3, 0, 7]  # batch order, not key order
    one_at_a_time = torch.cat([q.item_index(x[i : i + 1]) for i in range(NUM_ITEMS)])
    assert one_at_a_time[twins].tolist() == [3, 3, 3]  # alone, each is the first twin
    assert torch.equal(q.encode(x[1:]), q.encode(x)[1:])  # a subset in fit order: same codes


def test_twins_are_found_by_the_lookups_tolerance_not_bit_equality():
    """A matrix product may give identical rows fingerprints a few ulps apart (MKL did, for small
    catalogues): such twins were not grouped, and took one code again."""
    from semid.quantizers.graph_rqvae import _spread_over_twins, twin_groups

    fingerprints = torch.tensor([[1.0, 0.5], [2.0, 0.0], [1.0 + 1e-7, 0.5], [5.0, 1.0]])
    groups = twin_groups(fingerprints, tol=1e-10)
    assert groups.tolist() == [0, 1, 0, 3]
    assert _spread_over_twins(torch.tensor([2, 0, 3, -1]), groups).tolist() == [0, 2, 3, -1]
    # items of one first coordinate between twins (7 and 5 of them here) do not hide them
    many = torch.stack([torch.full((20,), 0.5), torch.arange(20.0)], 1)
    many[[3, 11, 17], 1] = 100.0
    assert twin_groups(many, tol=1e-10).tolist() == [*range(11), 3, *range(12, 17), 3, 18, 19]


def test_a_list_of_rows_is_one_matrix_as_numpy_reads_it(fitted):
    """A list of lists of floats was read as one modality per row ("expected (N, D) per
    modality"); the other families take it as numpy does."""
    assert torch.equal(fitted.encode(content()[:5].tolist()), fitted.encode(content()[:5]))


def test_new_item_is_encoded_from_content_only(fitted):
    new = torch.randn(3, D, generator=torch.Generator().manual_seed(9))
    assert (fitted.item_index(new) == -1).all()
    inputs = fitted._model_inputs(new)
    expected = (torch.cat([new, new], 1) - fitted.mean) / fitted.scale
    torch.testing.assert_close(inputs, expected)
    # A fitted item with no training interaction is treated the same way.
    torch.testing.assert_close(fitted.graph_features[COLD], content()[COLD])


def test_fitted_items_re_embedded_a_little_off_are_still_found(fitted):
    x = content()
    in_fit_order = fitted.item_index(x.bfloat16().float())
    assert in_fit_order.tolist() == list(range(NUM_ITEMS))
    perm = torch.randperm(NUM_ITEMS, generator=torch.Generator().manual_seed(3))
    assert torch.equal(fitted.item_index(x[perm].bfloat16().float()), perm)  # and in any other
    # a near variant of an item (2% of the items' spread away: a cosine similarity of about
    # 0.9999 for MiniLM vectors) is another item
    spread = (x - x.mean(0)).pow(2).sum(-1).mean().sqrt()
    away = x[:4] + 0.02 * spread * torch.nn.functional.normalize(content(seed=5)[:4], dim=1)
    assert (fitted.item_index(away) == -1).all()


def test_the_match_tolerance_is_a_share_of_the_fitted_items_spread(train):
    """Rows a rounding's width off (0.5% of the spread) are the items; the tolerance follows a
    refit of the same quantizer, and is of the spread about the mean, so items far from the
    origin (as sentence embeddings sit) keep a near variant apart."""
    x = content()
    spread = (x - x.mean(0)).pow(2).sum(-1).mean().sqrt()
    direction = torch.nn.functional.normalize(content(seed=5), dim=1)
    q = build_quantizer(SPEC).fit(x, interactions=train, **FAST)
    assert q.item_index(x + 0.005 * spread * direction).tolist() == list(range(NUM_ITEMS))
    q.fit(10 * x, interactions=train, **FAST)  # the same object: no tolerance of the old fit
    found = q.item_index(10 * x + 0.05 * spread * direction)
    assert found.tolist() == list(range(NUM_ITEMS))
    far = build_quantizer(SPEC).fit(x + 5, interactions=train, **FAST)
    assert (far.item_index(x + 5 + 0.02 * spread * direction) == -1).all()


def test_fitted_items_a_little_apart_are_no_twins(train):
    """Two fitted items 0.3% of the spread apart (inside the match tolerance, outside the twins'
    rounding) stay two items: each row alone is found as itself, not as the other."""
    x = content()
    spread = (x - x.mean(0)).pow(2).sum(-1).mean().sqrt()
    x[1] = x[0] + 0.003 * spread * torch.nn.functional.normalize(content(seed=5)[0], dim=0)
    q = build_quantizer(SPEC).fit(x, interactions=train, **FAST)
    assert q.item_index(x[[1]]).tolist() == [1] and q.item_index(x[[0]]).tolist() == [0]
    assert q.item_index(x[[1, 0]]).tolist() == [1, 0]


def test_distinct_items_far_from_the_origin_are_no_twins(train):
    """Items that share a large offset (1e3, their spread about 1) have a large norm: a twin
    tolerance of the norm alone grouped about half of them, and their codes then followed the
    batch order. The spread bounds it; identical items are twins still."""
    x = content() + 1e3
    q = build_quantizer(SPEC).fit(x, interactions=train, **FAST)
    assert q._twin_groups(q._tolerances()[0]).tolist() == list(range(NUM_ITEMS))
    perm = torch.randperm(NUM_ITEMS, generator=torch.Generator().manual_seed(0))
    assert torch.equal(q.encode(x[perm]), q.encode(x)[perm])
    same = build_quantizer(SPEC).fit(x[:1].expand(NUM_ITEMS, -1), interactions=train, **FAST)
    assert same._twin_groups(same._tolerances()[0]).unique().tolist() == [0]
    # identical items whose fingerprints a projection's rounding left a few ulps apart (their
    # spread is that rounding alone) are twins still: the tolerance keeps a floor of the norm
    g = torch.Generator().manual_seed(0)
    rounded = same.fingerprints[:1] * (1 + 3e-7 * torch.randn(NUM_ITEMS, 1, generator=g))
    same.fingerprints.copy_(rounded)
    assert same._twin_groups(same._tolerances()[0]).unique().tolist() == [0]


def test_known_items_carry_a_graph_half_unlike_their_content(fitted):
    x = fitted._model_inputs(content())  # (N, 2D): content half, then graph half
    assert not torch.allclose(x[:-1, :D], x[:-1, D:], atol=1e-2)


def test_same_seed_same_codes(train):
    a = build_quantizer(SPEC).fit(content(), interactions=train, seed=2, **FAST)
    b = build_quantizer(SPEC).fit(content(), interactions=train, seed=2, **FAST)
    assert torch.equal(a.encode(content()), b.encode(content()))


def test_several_modalities(train, tmp_path):
    text, image = content(0, 6), content(1, 4)
    q = build_quantizer(SPEC).fit([text, image], interactions=train, **FAST)
    assert q.modality_dims == [6, 4] and q.dim == 10
    codes = q.encode([text, image])
    assert codes.shape == (NUM_ITEMS, 2)
    assert q.decode(codes).shape == (NUM_ITEMS, 10)
    q.save_pretrained(tmp_path / "q")
    assert torch.equal(Quantizer.from_pretrained(tmp_path / "q").encode([text, image]), codes)
    with pytest.raises(SemidError, match="dimensions"):
        q.encode([image, text])


def test_missing_or_mismatched_interactions_are_rejected(train):
    with pytest.raises(SemidError, match="interactions"):
        build_quantizer(SPEC).fit(content(), **FAST)
    with pytest.raises(SemidError, match="items"):
        build_quantizer(SPEC).fit(content()[:-1], interactions=train, **FAST)
    with pytest.raises(SemidError, match="hops"):
        build_quantizer(SPEC + ",hops=-1")


@pytest.mark.slow
def test_ml100k_titles_with_training_graph():
    from semid.collisions import collision_rate
    from semid.data import load_dataset
    from semid.encoders import TextEncoder
    from semid.ids import level_perplexity

    ds = load_dataset("ml-100k")
    x = TextEncoder().encode(ds.item_texts, show_progress=False)
    q = build_quantizer("graph_rqvae:3x64").fit(
        x, interactions=leave_one_out(ds.interactions).train, progress=False
    )
    codes = q.encode(x)
    assert collision_rate(codes) < 0.05
    assert all(level_perplexity(codes[:, level], 64) >= 32 for level in range(3))
