"""The ``voken`` quantizer: round trip, unique IDs, text alignment on a crafted case, save/load.

The family also runs through the shared contract tests in test_quantizers.py."""

from __future__ import annotations

import copy

import pytest
import torch

from semid.errors import SemidError
from semid.ids import SemanticIDs
from semid.quantization import Quantizer, build_quantizer

FAST = {"batch_size": 32, "progress": False}


pytestmark = pytest.mark.usefixtures("one_thread")


def crafted(
    n: int = 256, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (N, 16) dominated by 4 class-unrelated clusters, with a weak 2-class signal; the
    class labels (N,); and text targets (N, 8) of each item's class and of the other class."""
    g = torch.Generator().manual_seed(seed)
    nuisance, label = torch.randint(0, 4, (n,), generator=g), torch.randint(0, 2, (n,), generator=g)
    x = (
        3 * torch.randn(4, 16, generator=g)[nuisance]
        + 0.5 * torch.randn(2, 16, generator=g)[label]
        + 0.3 * torch.randn(n, 16, generator=g)
    )
    texts = torch.randn(2, 8, generator=g)
    return x, label, texts[label], texts[1 - label]


def purity(codes: torch.Tensor, label: torch.Tensor) -> float:
    """Share of items whose first-level code's majority class is their own."""
    hits = sum(int(torch.bincount(label[codes == c]).max()) for c in codes.unique())
    return hits / len(label)


@pytest.fixture(scope="module")
def aligned() -> Quantizer:
    x, _, text, _ = crafted()
    q = build_quantizer("voken:2x8,hidden=32,latent=8,align=5")
    return q.fit(x, text_embeddings=text, epochs=30, seed=0, **FAST)


def test_round_trip_beats_a_random_codebook(aligned):
    x = crafted()[0]
    error = (aligned.decode(aligned.encode(x)) - x).pow(2).mean()
    scrambled = copy.deepcopy(aligned)
    book = scrambled.codebooks.codebooks
    with torch.no_grad():
        book.copy_(torch.randn(book.shape, generator=torch.Generator().manual_seed(1)) * book.std())
    random_error = (scrambled.decode(scrambled.encode(x)) - x).pow(2).mean()
    assert error < 0.5 * random_error


def test_alignment_lowers_text_image_distance(aligned):
    x, label, text, other = crafted()
    plain = build_quantizer("voken:2x8,hidden=32,latent=8,align=0")
    plain.fit(x, text_embeddings=text, epochs=30, seed=0, **FAST)
    own = aligned.text_distance(x, text).mean()
    assert own < 0.5 * plain.text_distance(x, text).mean()
    # the head does not just map every image to the average text: its own class is closer
    assert own < 0.5 * aligned.text_distance(x, other).mean()
    # and the first-level vokens follow the class rather than the dominant nuisance clusters
    assert purity(aligned.encode(x)[:, 0], label) > purity(plain.encode(x)[:, 0], label) + 0.1


def test_unique_ids_through_a_collision_strategy(aligned):
    x = crafted()[0]
    raw = aligned.encode(x)
    assert len(torch.unique(raw, dim=0)) < len(raw)  # 256 items, 64 raw IDs: collisions are certain
    # extra-level keeps every raw code and appends a level; reassign keeps each item's prefix
    for strategy, kept in (("extra-level", 2), ("reassign", 1)):
        ids = SemanticIDs.from_codes(
            [str(i) for i in range(len(x))],
            raw,
            aligned.codebook_sizes,
            strategy,
            distances=aligned.last_level_distances(x),
        )
        assert len(torch.unique(ids.codes, dim=0)) == len(x)
        assert torch.equal(ids.codes[:, :kept], raw[:, :kept])


def test_save_and_load_keep_the_text_head(aligned, tmp_path):
    x, _, text, _ = crafted()
    aligned.save_pretrained(tmp_path / "q")
    q2 = Quantizer.from_pretrained(tmp_path / "q")
    assert q2.text_dim == 8 and str(q2.spec) == str(aligned.spec)
    assert torch.equal(q2.encode(x), aligned.encode(x))
    torch.testing.assert_close(q2.text_distance(x, text), aligned.text_distance(x, text))


def test_without_texts_it_is_an_rqvae():
    x = crafted(64)[0]
    q = build_quantizer("voken:2x4,hidden=16,latent=4").fit(x, epochs=2, seed=0, **FAST)
    assert q.encode(x).shape == (64, 2) and q.text_dim is None
    with pytest.raises(SemidError, match="without text"):
        q.text_distance(x, torch.zeros(64, 8))


def test_bad_text_embeddings_and_options():
    x = crafted(64)[0]
    with pytest.raises(SemidError, match="one row per image"):
        build_quantizer("voken:2x4").fit(x, text_embeddings=torch.zeros(10, 8), epochs=1, **FAST)
    with pytest.raises(SemidError, match="align"):
        build_quantizer("voken:2x4,align=-1")
