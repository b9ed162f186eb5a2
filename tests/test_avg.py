"""The ``avg`` generator and the text-to-image pipeline: losses, generation under the trie (only
indexed images, exact against exhaustive scoring), learning on a toy task, save/load, metrics."""

from __future__ import annotations

import math

import pytest
import torch

from semid.errors import SemidError
from semid.generator import Generator
from semid.generators.avg import Avg, AvgConfig, discriminative_loss
from semid.generators.dual_encoder import DualEncoder, DualEncoderConfig, dense_search
from semid.ids import SemanticIDs
from semid.models import build_model, load_model, save_model
from semid.ranking import ranker_for
from semid.tasks.text2image import (
    QueryTargetPairs,
    class_metrics,
    training_targets,
    with_min_steps,
)
from semid.training import TrainConfig, train_model
from semid.trie import PrefixTrie

SIZES = [4, 3, 2]
Q = 8


pytestmark = pytest.mark.usefixtures("one_thread")


def generative_search(m, ids: SemanticIDs, queries: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k index rows (Q, k) by trie-constrained beam search with k beams (-1 = none)."""
    return ranker_for(m, ids, k).rank(queries, k).rows


def model(**overrides) -> Generator:
    torch.manual_seed(0)
    return build_model("avg", {"codebook_sizes": SIZES, "query_dim": Q, "d_model": 16, **overrides})


def catalog() -> torch.Tensor:
    """Ten unique IDs (10, 3) within SIZES."""
    g = torch.Generator().manual_seed(0)
    every = torch.cartesian_prod(*[torch.arange(v) for v in SIZES])
    return every[torch.randperm(len(every), generator=g)[:10]]


def sequence_log_prob(m: Generator, query: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
    """Teacher-forced log p(codes (N, L) | query (Q,)) for every ID, the exhaustive oracle (N,)."""
    steps = m.step_model()
    logits, state = steps.start(query.expand(len(codes), -1))
    total = logits.log_softmax(-1).gather(1, codes[:, :1]).squeeze(1)
    for level in range(1, codes.shape[1]):
        logits, state = steps.step(state, codes[:, level - 1], level)
        total = total + logits.log_softmax(-1).gather(1, codes[:, level : level + 1]).squeeze(1)
    return total


def test_forward_shapes_and_gradients():
    m = model()
    batch = {
        "query": torch.randn(6, Q),
        "target_codes": catalog()[:6],
        "labels": torch.tensor([0, 0, 1, 1, 2, 2]),
    }
    loss, logits = m(batch)
    assert logits.shape == (6, 3, 4) and torch.isinf(logits[:, 2, 2:]).all()
    loss.backward()
    assert all(p.grad is not None for p in m.query_tower.parameters())
    with pytest.raises(SemidError, match="query embeddings"):
        m({**batch, "query": torch.randn(6, Q + 1)})


def test_generation_returns_only_indexed_ids_in_exhaustive_order():
    m = model().eval()
    codes = catalog()
    trie = PrefixTrie.from_codes(codes, SIZES)
    queries = torch.randn(3, Q, generator=torch.Generator().manual_seed(1))
    found, log_probs = m.generate(queries, trie, num_beams=10)
    index = {tuple(c) for c in codes.tolist()}
    assert all(tuple(c) in index for c in found.reshape(-1, 3).tolist())
    for b in range(3):  # with as many beams as IDs the search is exact
        oracle = sequence_log_prob(m, queries[b], codes)
        torch.testing.assert_close(log_probs[b], oracle.sort(descending=True).values)


def test_discriminative_loss_prefers_mass_on_relevant_codes():
    target = torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1]])
    labels = torch.tensor([0, 0, 1, 1])  # class 0 uses first code 0, class 1 uses first code 1
    right = [torch.tensor([[3.0, -3.0]] * 2 + [[-3.0, 3.0]] * 2), torch.zeros(4, 2)]
    wrong = [-right[0], torch.zeros(4, 2)]
    assert (
        discriminative_loss(right, target, labels)
        < 0.1
        < discriminative_loss(wrong, target, labels)
    )
    # at level 1 the candidates are only the targets sharing the prefix: both relevant here
    level1 = discriminative_loss([torch.zeros(4, 2), torch.randn(4, 2)], target, labels)
    assert level1 == pytest.approx(
        discriminative_loss([torch.zeros(4, 2), torch.zeros(4, 2)], target, labels)
    )


def toy_task(n: int = 256):
    """Two classes of queries; class c's images have IDs starting with code c (+ noise levels)."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    codes = torch.stack(
        [
            labels * 2 + torch.randint(0, 2, (n,), generator=g),
            torch.randint(0, 3, (n,), generator=g),
            torch.randint(0, 2, (n,), generator=g),
        ],
        1,
    )
    queries = torch.randn(2, Q, generator=g)[torch.tensor([0, 0, 1, 1])] + 0.1 * torch.randn(
        4, Q, generator=g
    )
    return queries, torch.tensor([0, 0, 1, 1]), codes, labels


@pytest.mark.parametrize("disc_weight", [0.0, 1.0])
def test_avg_learns_a_toy_task_and_saves(tmp_path, disc_weight):
    queries, query_labels, codes, labels = toy_task()
    pairs = QueryTargetPairs(queries, query_labels, codes, labels)
    assert all(int(query_labels[pairs.query_of[i]]) == int(labels[i]) for i in range(len(pairs)))
    cfg = TrainConfig(
        max_epochs=8, batch_size=32, lr=1e-2, early_stopping_patience=None, log_every=100
    )
    m = build_model(
        "avg", {"codebook_sizes": SIZES, "query_dim": Q, "d_model": 16, "disc_weight": disc_weight}
    )
    train_model(m, pairs, cfg, tmp_path / "train", device="cpu")
    m.eval()
    unique = torch.unique(codes, dim=0)  # index every distinct image ID once
    keys = [str(i) for i in range(len(unique))]
    ids = SemanticIDs.from_codes(
        keys, unique, SIZES, "reassign", distances=torch.zeros(len(unique), 2)
    )
    rows = generative_search(m, ids, queries, k=5)
    assert (rows >= 0).all()  # every result is an indexed image
    image_labels = ids.codes[:, 0] // 2
    assert class_metrics(rows, image_labels, query_labels, (5,))["precision@5"] == 1.0
    save_model(m, tmp_path / "m")
    again = load_model(tmp_path / "m")
    assert torch.equal(generative_search(again, ids, queries, k=5), rows)


def test_the_query_tower_is_sized_to_the_text_encoders_width():
    # the training queries' width (384 for MiniLM) sizes the tower, so another encoder works too
    ids = SemanticIDs.from_codes(["a", "b"], catalog()[:2], SIZES)
    config = Avg.sized_for(AvgConfig(d_model=16), ids, query_dim=128)
    assert config.query_dim == 128
    assert Avg.sized_for(AvgConfig(d_model=16), ids).query_dim == AvgConfig().query_dim
    m = Avg(config)
    targets = torch.cat(
        [catalog()[:2], torch.zeros(2, len(config.codebook_sizes) - 3, dtype=torch.long)], 1
    )
    batch = {"query": torch.randn(2, 128), "target_codes": targets, "labels": torch.tensor([0, 1])}
    loss, _ = m(batch)
    assert torch.isfinite(loss)


def test_index_sizes_must_fit_the_model():
    m = model()
    ids = SemanticIDs.from_codes(
        ["a", "b"], torch.tensor([[0, 0, 0], [0, 0, 0]]), SIZES
    )  # extra level
    with pytest.raises(SemidError, match="3-level IDs but its index has 4 levels"):
        generative_search(m, ids, torch.randn(1, Q), k=1)


def test_training_targets_follow_the_index_levels():
    raw = torch.tensor([[0, 1], [0, 1], [0, 1], [1, 0]])
    ids = SemanticIDs.from_codes(
        ["a", "b"], torch.tensor([[0, 1], [0, 1]]), [2, 2]
    )  # extra level of size 2
    assert training_targets(raw, ids).tolist() == [[0, 1, 0], [0, 1, 1], [0, 1, 1], [1, 0, 0]]
    flat = SemanticIDs.from_codes(
        ["a", "b"], torch.tensor([[0, 1], [1, 1]]), [2, 2], "reassign", distances=torch.zeros(2, 2)
    )
    assert torch.equal(training_targets(raw, flat), raw)


def test_class_metrics_against_hand_computed_values():
    image_labels = torch.tensor([0, 0, 0, 1, 1])
    ranked = torch.tensor([[0, 3, 1], [3, -1, 0]])  # query 0 wants class 0, query 1 class 1
    m = class_metrics(ranked, image_labels, torch.tensor([0, 1]), (1, 3))
    assert m["precision@1"] == 1.0
    assert m["precision@3"] == pytest.approx((2 / 3 + 1 / 3) / 2)
    assert m["recall@3"] == pytest.approx(
        (2 / 3 + 1 / 2) / 2
    )  # 3 relevant for query 0, 2 for query 1
    assert m["map@3"] == pytest.approx(((1 + 2 / 3) / 3 + 1 / 2) / 2)


def test_dual_encoder_learns_the_toy_task(tmp_path):
    queries, query_labels, _, labels = toy_task(128)
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 6, generator=g)[labels] + 0.1 * torch.randn(128, 6, generator=g)
    cfg = TrainConfig(
        max_epochs=5, batch_size=32, lr=1e-2, early_stopping_patience=None, log_every=100
    )
    model = DualEncoder(DualEncoderConfig(query_dim=Q, image_dim=6, d_model=8))
    pairs = QueryTargetPairs(queries, query_labels, features, labels, "image")
    train_model(model, pairs, cfg, tmp_path / "train", device="cpu")
    model.eval()
    rows = dense_search(model, queries, features, k=10)
    assert class_metrics(rows, labels, query_labels, (10,))["precision@10"] == 1.0


def test_image_head_learns_the_toy_task_and_ranks_with_the_beams(tmp_path):
    """With image features, AVG trains a text/image head beside the generator; the mixed ranker
    (beams + head) answers with indexed images, and without the features set it searches beams."""
    from semid.hybrid import HybridRanker

    queries, query_labels, codes, labels = toy_task(128)
    g = torch.Generator().manual_seed(1)
    features = torch.randn(2, 6, generator=g)[labels] + 0.1 * torch.randn(128, 6, generator=g)
    pairs = QueryTargetPairs(queries, query_labels, codes, labels, images=features)
    assert pairs[0]["image"].shape == (6,)
    m = model(image_dim=6)
    with pytest.raises(SemidError, match="image features"):
        m({"query": queries[:4], "target_codes": codes[:4], "labels": labels[:4]})
    cfg = TrainConfig(
        max_epochs=5, batch_size=32, lr=1e-2, early_stopping_patience=None, log_every=100
    )
    train_model(m, pairs, cfg, tmp_path / "train", device="cpu")
    m.eval()
    unique, first = torch.unique(codes, dim=0, return_inverse=True)
    rows_of = [int(torch.nonzero(first == r)[0]) for r in range(len(unique))]
    ids = SemanticIDs.from_codes([str(i) for i in range(len(unique))], unique, SIZES, "reassign",
                                 distances=torch.zeros(len(unique), 2))  # fmt: skip
    assert not m.has_item_head() and not isinstance(ranker_for(m, ids, 5), HybridRanker)
    m.set_items_(features[rows_of])
    assert m.has_item_head()
    log_p = m.item_log_probs(queries[:3])
    assert log_p.shape == (3, len(unique)) and torch.allclose(log_p.exp().sum(1), torch.ones(3))
    ranker = ranker_for(m, ids, 5)
    assert isinstance(ranker, HybridRanker)
    rows = ranker.rank(queries, 5).rows
    image_labels = labels[rows_of]
    assert (rows >= 0).all()
    assert class_metrics(rows, image_labels, query_labels, (5,))["precision@5"] == 1.0
    with pytest.raises(SemidError, match=r"\(N, 6\)"):
        m.set_items_(torch.zeros(3, 5))
    assert (
        build_model("avg", {"codebook_sizes": SIZES, "image_dim": 6, "item_loss": 0}).image_head
        is None
    )


@pytest.mark.slow
def test_min_steps_adds_epochs_to_small_collections_only():
    cfg = TrainConfig(max_epochs=3, batch_size=256)
    assert with_min_steps(cfg, 60_000, 700).max_epochs == 3  # 235 steps an epoch: 705 already
    assert with_min_steps(cfg, 797, 700).max_epochs == 175  # 4 steps an epoch
    assert with_min_steps(cfg, 797, 0).max_epochs == 3
    assert (
        with_min_steps(TrainConfig(batch_size=100, grad_accum_steps=2), 1000, 50).max_epochs == 10
    )


def test_cli_pipeline_on_a_tiny_image_dataset(tmp_path):
    """build_index -> train -> load_run -> evaluate, as the CLI wires them."""
    from semid.data import register_dataset
    from semid.data.images import ImageDataset, ImageSplits
    from semid.runs import load_run
    from semid.tasks import EvalOptions, IndexSource, get_task
    from semid.tasks.text2image import Text2ImageSpec

    def split(n: int, prefix: str) -> ImageDataset:
        g = torch.Generator().manual_seed(len(prefix))
        labels = torch.arange(n) % 2
        images = torch.randint(0, 60, (n, 8, 8), dtype=torch.uint8, generator=g)
        images[labels == 0, :4] += 180  # sneakers bright on top, bags at the bottom
        images[labels == 1, 4:] += 180
        return ImageDataset(images, [f"{prefix}{i}" for i in range(n)], labels, ["Sneaker", "Bag"])

    register_dataset(
        "tiny-images",
        lambda: ImageSplits(split(128, "train/"), split(32, "test/"), "tiny"),
        "test only",
        kind="images",
    )
    task = get_task("text2image")
    ids, _ = task.build_index(
        IndexSource(dataset="tiny-images"),
        "voken:2x4,hidden=16,latent=4",
        tmp_path / "idx",
        progress=False,
        epochs=5,
    )
    assert len(ids) == 32 and len(torch.unique(ids.codes, dim=0)) == 32
    assert (tmp_path / "idx" / "image_encoder" / "model.safetensors").is_file()
    cfg = TrainConfig(max_epochs=3, batch_size=32, early_stopping_patience=None, log_every=100)
    run_dir = tmp_path / "run"
    spec = Text2ImageSpec(dataset="tiny-images", train=cfg, min_steps=0)  # 3 epochs as given
    task.train(spec, run_dir, tmp_path / "idx", device="cpu")
    run = load_run(run_dir)
    assert run.task == "text2image" and run.spec["model"] == "avg"
    metrics = task.evaluate(run, EvalOptions(ks=(5, 10), split="test", batch_size=8))
    assert metrics["invalid_id_rate"] == 0.0 and 0.0 <= metrics["precision@10"] <= 1.0
    # the index keeps the indexed images' features, so the trained image head ranks them
    from semid.hybrid import HybridRanker
    from semid.saving import read_rows
    from semid.tasks.text2image import IMAGE_FEATURES

    assert read_rows(run.index_path / IMAGE_FEATURES).shape == (32, run.model.config.image_dim)
    predictor = task.predictor(run)
    assert run.model.has_item_head() and isinstance(predictor.ranker(None), HybridRanker)
    beams_only = task.evaluate(
        run, EvalOptions(ks=(5, 10), split="test", batch_size=8, item_mix=0.0)
    )
    assert beams_only["invalid_id_rate"] == 0.0
    for option in ({"keep_seen": True}, {"cold_share": 0.1}):  # ignored, and saved under its name
        with pytest.raises(
            SemidError, match="is for recommendation runs; .* is a text-to-image run"
        ):
            task.evaluate(run, EvalOptions(ks=(5,), split="test", **option))
    for bad in (-1.0, math.nan, math.inf):  # nan would rank by nan and report its metrics
        with pytest.raises(SemidError, match="item-mix must be a finite number >= 0"):
            task.evaluate(run, EvalOptions(ks=(5,), split="test", item_mix=bad))


def test_indexed_image_embeddings_are_cached_until_the_weights_or_images_change():
    config = AvgConfig(query_dim=8, codebook_sizes=[4, 4], d_model=16, image_dim=6, item_loss=1.0)
    model = Avg(config)
    model.set_items_(torch.randn(10, 6))
    queries = torch.randn(3, 8)
    first = model.item_log_probs(queries)
    assert model._indexed_images() is model._indexed_images()  # computed once
    with torch.no_grad():  # an in-place update of the image tower, as an optimizer step makes
        model.image_head.image_tower[0].weight.add_(0.5)
    moved = model.item_log_probs(queries)
    assert not torch.allclose(first, moved)
    model.eval()
    with torch.no_grad():
        expected = model.image_head.embed_images(model.items)
    assert torch.allclose(model._indexed_images(), expected)
    model.set_items_(torch.randn(12, 6))
    assert model.item_log_probs(queries).shape == (3, 12)


def test_class_metrics_count_images_of_no_query_class_as_irrelevant_not_invalid():
    ranked = torch.tensor([[2, 0], [1, 2]])
    m = class_metrics(ranked, torch.tensor([0, 1, -1]), torch.tensor([0, 1]), (1, 2))
    assert m["precision@1"] == 0.5 and m["recall@2"] == 1.0 and m["invalid_id_rate"] == 0.0
