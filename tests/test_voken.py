"""The ``voken`` quantizer: round trip, unique IDs, text alignment on a crafted case, save/load.

The family also runs through the shared contract tests in test_quantizers.py."""

from __future__ import annotations

import copy
import json

import pytest
import torch

from semid.errors import SemidError
from semid.ids import SemanticIDs
from semid.quantization import Quantizer, build_quantizer

FAST = {"batch_size": 32, "min_steps": 0, "progress": False}


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
    plain = build_quantizer("voken:2x8,hidden=32,latent=8,align=0,proj=0")
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


def test_a_fit_without_texts_after_one_with_texts_is_a_plain_rqvae():
    x, _, text, _ = crafted(64)
    plain = build_quantizer("rqvae:2x4,hidden=16,latent=4").fit(x, epochs=2, seed=0, **FAST)
    q = build_quantizer("voken:2x4,hidden=16,latent=4")
    broken = x.clone()
    broken[3, 0] = float("nan")
    with pytest.raises(SemidError, match="NaN"):  # refused before it changed the quantizer
        q.fit(broken, text_embeddings=text, epochs=2, seed=0, **FAST)
    assert q.text_dim is None
    q.fit(x, text_embeddings=text, epochs=2, seed=0, **FAST)
    q.fit(x, epochs=2, seed=0, **FAST)
    assert q.text_dim is None and not q.text_led
    assert torch.equal(q.encode(x), plain.encode(x))


def test_text_distance_checks_its_texts(aligned):
    x, _, text, _ = crafted(64)
    with pytest.raises(SemidError, match="dimension 4 but the quantizer expects 8"):
        aligned.text_distance(x, text[:, :4])
    with pytest.raises(SemidError, match="3 text embeddings for 64 images"):
        aligned.text_distance(x, text[:3])
    with pytest.raises(SemidError, match="NaN"):
        aligned.text_distance(x, torch.full_like(text, float("nan")))


def test_bad_text_embeddings_and_options():
    x = crafted(64)[0]
    with pytest.raises(SemidError, match="one row per image"):
        build_quantizer("voken:2x4").fit(x, text_embeddings=torch.zeros(10, 8), epochs=1, **FAST)
    with pytest.raises(SemidError, match="embeddings must be numbers of one shape"):
        build_quantizer("voken:2x4").fit(
            x, text_embeddings=["a caption"] * len(x), epochs=1, **FAST
        )
    with pytest.raises(SemidError, match="align"):
        build_quantizer("voken:2x4,align=-1")


def clustered(n: int = 480, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Features (N, 16) of 3 classes whose visual variance is dominated by 6 class-unrelated
    clusters, and one text embedding (N, 12) per image: its class text (near-identical texts,
    as MiniLM gives class descriptions that share most of their words). With a larger n, rows
    past the first 480 are unseen images of the same distribution."""
    g = torch.Generator().manual_seed(seed)
    visual, classes = 4 * torch.randn(6, 16, generator=g), torch.randn(3, 16, generator=g)
    texts = torch.randn(12, generator=g) + 0.2 * torch.randn(3, 12, generator=g)
    nuisance, label = torch.randint(0, 6, (n,), generator=g), torch.arange(n) % 3
    x = visual[nuisance] + classes[label] + 0.3 * torch.randn(n, 16, generator=g)
    return x, label, texts[label]


SMALL = {"batch_size": 64, "epochs": 3, "progress": False}


@pytest.fixture(scope="module")
def text_led() -> tuple[Quantizer, Quantizer]:
    """The default voken (text-led latent) and the alignment-only one, fitted on `clustered`."""
    x, _, text = clustered()
    led = build_quantizer("voken:2x6,hidden=32,latent=8").fit(
        x, text_embeddings=text, seed=0, **SMALL
    )
    old = build_quantizer("voken:2x6,hidden=32,latent=8,proj=0")
    return led, old.fit(x, text_embeddings=text, seed=0, **SMALL)


def test_text_led_first_level_follows_the_classes(text_led):
    led, old = text_led
    x, label, _ = clustered()
    assert led.text_led and not old.text_led
    # 6 first-level codes over 6 visual clusters x 3 classes: only the text side makes them pure
    assert purity(led.encode(x)[:, 0], label) > 0.95
    assert purity(old.encode(x)[:, 0], label) < 0.8
    # unseen images of the same distribution: encoding needs only their features
    x_new, label_new, _ = clustered(600)
    assert purity(led.encode(x_new[480:])[:, 0], label_new[480:]) > 0.9


def test_text_projection_separates_the_classes(text_led):
    led, _ = text_led
    x, label, _ = clustered()
    p = led.text_projection(x)
    torch.testing.assert_close(p.norm(dim=-1), torch.ones(len(x)))
    centroids = torch.stack([p[label == c].mean(0) for c in range(3)])
    nearest = (p @ centroids.T).argmax(-1)
    assert (nearest == label).float().mean() > 0.95
    with pytest.raises(SemidError, match="no text-side projection"):
        text_led[1].text_projection(x)


def test_text_led_save_load_round_trips_codes(text_led, tmp_path):
    led, _ = text_led
    x, _, text = clustered()
    led.save_pretrained(tmp_path / "q")
    q2 = Quantizer.from_pretrained(tmp_path / "q")
    assert q2.text_led and str(q2.spec) == str(led.spec)
    fresh = torch.randn(50, 16, generator=torch.Generator().manual_seed(3)) * 4
    assert torch.equal(q2.encode(x), led.encode(x)) and torch.equal(
        q2.encode(fresh), led.encode(fresh)
    )
    torch.testing.assert_close(q2.text_projection(x), led.text_projection(x))
    torch.testing.assert_close(q2.decode(q2.encode(x)), led.decode(led.encode(x)))


def test_text_led_same_seed_same_codes(text_led):
    led, _ = text_led
    x, _, text = clustered()
    again = build_quantizer("voken:2x6,hidden=32,latent=8").fit(
        x, text_embeddings=text, seed=0, **SMALL
    )
    assert torch.equal(again.encode(x), led.encode(x))
    other = build_quantizer("voken:2x6,hidden=32,latent=8").fit(
        x, text_embeddings=text, seed=1, **SMALL
    )
    assert not torch.equal(other.text_projection(x), led.text_projection(x))


def test_min_steps_lengthens_training_on_small_data():
    x, _, text = clustered(64)
    q = build_quantizer("voken:2x4,hidden=16,latent=4")

    def fit(min_steps: int) -> int:
        q.fit(x, text_embeddings=text, seed=0, batch_size=64, epochs=2, patience=1,
              min_steps=min_steps, progress=False)  # fmt: skip
        return q.fit_summary["epochs"]

    assert fit(25) >= 25  # one batch per epoch: 25 epochs for 25 steps
    assert fit(0) <= 2


def test_bad_proj_option():
    with pytest.raises(SemidError, match="proj"):
        build_quantizer("voken:2x4,proj=-1")


def test_a_voken_saved_before_the_text_led_latent_still_loads(tmp_path):
    x, _, text = clustered(64)
    old = build_quantizer("voken:2x4,hidden=16,latent=4,proj=0")
    old.fit(x, text_embeddings=text, seed=0, batch_size=64, epochs=2, min_steps=0, progress=False)
    old.save_pretrained(tmp_path / "q")
    config = json.loads((tmp_path / "q" / "config.json").read_text())
    config["config"]["spec"] = "voken:2x4,hidden=16,latent=4"  # as written then: no proj option
    del config["config"]["text_led"]
    (tmp_path / "q" / "config.json").write_text(json.dumps(config))
    loaded = Quantizer.from_pretrained(tmp_path / "q")
    assert not loaded.text_led and torch.equal(loaded.encode(x), old.encode(x))


def test_text_embeddings_with_nan_are_refused_before_training():
    x, texts = torch.randn(40, 8), torch.randn(40, 4)
    texts[3, 1] = float("nan")
    with pytest.raises(SemidError, match="text_embeddings hold NaN or infinity"):
        build_quantizer("voken:2x4").fit(x, text_embeddings=texts, progress=False)
