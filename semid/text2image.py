"""Text-to-image retrieval: image features, a voken index, a generative retriever, a dual encoder.

The pieces the CLI and the benchmark share:

- `image_features`: a small CNN trained here (saved next to the index), or precomputed ``.npy``.
- `build_voken_index`: fit a ``voken`` quantizer on the training images, aligned to the MiniLM
  embedding of each image's class text (or caption), and index the test images with unique IDs.
- `train_generator`: train a registered generator (``avg``) on (query, target ID) pairs with the
  shared `Trainer`; `generative_search` returns index rows through trie-constrained beam search.
- `DualEncoder` + `dense_search`: the baseline (frozen MiniLM + a text MLP, image features + an
  image MLP, contrastive; faiss exact inner product).
- `class_metrics`: Precision@k, Recall@k, mAP@k where relevance is "same class".
- `build_index`, `train_retriever`, `evaluate_run`: what ``semid index build``, ``semid train
  retriever`` and ``semid eval`` call for an image dataset.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from safetensors.torch import load_file
from torch import Tensor, nn

from semid.errors import SemidError

TASK = "text2image"
DEFAULT_SPEC = "voken:3x256,hidden=256-128,latent=32"  # the benchmark's index
IMAGE_ENCODER_DIR = "image_encoder"
TRAIN_TARGETS = "train_targets.safetensors"
METRIC_NAMES = ("precision", "recall", "map")


# --- losses and metrics ----------------------------------------------------------------------


def contrastive_loss(
    queries: Tensor, images: Tensor, positive: Tensor, temperature: float
) -> Tensor:
    """Multi-positive InfoNCE: unit queries (B, d) vs unit images (B, d); positive (B, B) bool.

    Per query, -log of the softmax mass on its positives (same class counts as positive, so
    in-batch images of the query's class are not pushed away)."""
    log_prob = (queries @ images.T / temperature).log_softmax(-1)
    return -(log_prob.masked_fill(~positive, float("-inf")).logsumexp(-1)).mean()


def class_metrics(
    ranked_rows: Tensor, image_labels: Tensor, query_labels: Tensor, ks: Sequence[int] = (10, 100)
) -> dict[str, float]:
    """Precision/Recall/mAP@k with relevance = same class: ranked index rows (Q, K), -1 = none.

    Recall@k divides by all relevant images of the class (so it is at most k / class size)."""
    from semid.metrics import compute_metrics

    ranked_labels = torch.where(ranked_rows >= 0, image_labels[ranked_rows.clamp(min=0)], -1)
    num_relevant = torch.bincount(image_labels, minlength=int(query_labels.max()) + 1)[query_labels]
    return compute_metrics(ranked_labels, query_labels, ks, METRIC_NAMES, num_relevant=num_relevant)


# --- text and image features ----------------------------------------------------------------


def embed_texts(texts: Sequence[str], encoder: str | os.PathLike | None = None) -> Tensor:
    """MiniLM (or the given sentence-transformers folder) embeddings (N, 384), cached on disk."""
    from semid.encoders import TextEncoder

    return TextEncoder(model=encoder).encode(list(texts), show_progress=False)


def train_image_encoder(images: Tensor, epochs: int = 1, seed: int = 0, progress: bool = True):
    """A fresh `ImageEncoder` fitted as an autoencoder on images (N, [C,] H, W) uint8."""
    from semid.image_encoder import ImageEncoder, ImageEncoderConfig

    images = torch.as_tensor(images)
    channels = 1 if images.ndim == 3 else images.shape[1]
    config = ImageEncoderConfig(in_channels=channels, image_size=images.shape[-1])
    return ImageEncoder(config).fit(images, epochs=epochs, seed=seed, progress=progress)


# --- the voken index --------------------------------------------------------------------------


@dataclass
class VokenIndex:
    """A fitted voken quantizer, the test images' unique IDs and the training images' targets."""

    quantizer: Any  # VokenQuantizer
    ids: Any  # SemanticIDs of the indexed (test) images
    train_codes: Tensor  # (N_train, L) targets for the generator, same levels as ids


def build_voken_index(
    spec: str,
    train_features: Tensor,
    train_text_embeddings: Tensor | None,
    index_features: Tensor,
    index_keys: Sequence[str],
    collisions: str = "extra-level",
    seed: int = 0,
    progress: bool = True,
    **fit_kwargs: Any,
) -> VokenIndex:
    """Fit `spec` (e.g. ``voken:3x256``) on train features (N, D) aligned to their text embeddings
    (N, T), then give each index image (M, D) a unique ID with the collision strategy."""
    from semid.ids import SemanticIDs
    from semid.quantization import build_quantizer

    quantizer = build_quantizer(spec)
    if train_text_embeddings is not None:
        if not hasattr(quantizer, "alignment_loss"):
            raise SemidError(
                f"{spec} does not align to text; use a voken:... quantizer or drop the texts"
            )
        fit_kwargs["text_embeddings"] = train_text_embeddings
    quantizer.fit(train_features, seed=seed, progress=progress, **fit_kwargs)
    raw = quantizer.encode(index_features)
    distances = quantizer.last_level_distances(index_features) if collisions == "reassign" else None
    ids = SemanticIDs.from_codes(
        list(index_keys),
        raw,
        quantizer.codebook_sizes,
        collisions,
        distances=distances,
        quantizer_spec=str(quantizer.spec),
    )
    return VokenIndex(quantizer, ids, training_targets(quantizer.encode(train_features), ids))


def training_targets(raw_codes: Tensor, ids: Any) -> Tensor:
    """Generator targets (N, L_ids) for training images from their raw codes (N, L).

    When the index has an extra disambiguation level, training images get their rank among the
    training images sharing their raw ID (capped to the index's extra level), as index items do."""
    if ids.levels == raw_codes.shape[1]:
        return raw_codes
    from semid.collisions import group_ids, rank_within_groups

    rank = rank_within_groups(group_ids(raw_codes)[0]).clamp(max=ids.codebook_sizes[-1] - 1)
    return torch.cat([raw_codes, rank[:, None]], dim=1)


# --- the generative retriever -----------------------------------------------------------------


class QueryTargetPairs(torch.utils.data.Dataset):
    """Training pairs: image i with a fixed wording of its class (so resumed runs see the same data)."""

    def __init__(
        self, query_embeddings: Tensor, query_labels: Tensor, target_codes: Tensor, labels: Tensor
    ) -> None:
        self.queries, self.codes, self.labels = (
            query_embeddings.float(),
            target_codes.long(),
            labels.long(),
        )
        by_class = [
            torch.nonzero(query_labels == c).squeeze(1) for c in range(int(labels.max()) + 1)
        ]
        missing = [c for c, rows in enumerate(by_class) if len(rows) == 0 and (labels == c).any()]
        if missing:
            raise SemidError(f"no training query for class {missing[0]}; every class needs one")
        # a multiplicative hash spreads the wordings of a class evenly over its images
        self.query_of = torch.stack(
            [
                by_class[c][(i * 2654435761) % max(len(by_class[c]), 1)]
                for i, c in enumerate(labels.tolist())
            ]
        )

    def __len__(self) -> int:
        return len(self.codes)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "query": self.queries[self.query_of[i]],
            "target_codes": self.codes[i],
            "labels": self.labels[i],
        }


def train_generator(
    name: str,
    config: dict[str, Any],
    pairs: QueryTargetPairs,
    train_config: Any,
    out_dir: str | os.PathLike | None = None,
):
    """A registered generator (e.g. ``avg``) trained on `pairs` with the shared Trainer; returns it
    with its last weights, in eval mode. Checkpoints go to `out_dir` (a temporary folder if None)."""
    from semid.generator import build_generator, load_weights
    from semid.training import Trainer

    model = build_generator(name, config)
    with tempfile.TemporaryDirectory() as tmp:
        result = Trainer(model, pairs, train_config, out_dir or tmp).fit()
        load_weights(model, result.best_path)
    return model.eval()


@torch.no_grad()
def generative_search(
    model: Any,
    ids: Any,
    queries: Tensor,
    k: int,
    num_beams: int | None = None,
    batch_size: int = 64,
) -> Tensor:
    """Top-k index rows (Q, k) for query embeddings (Q, T) by constrained beam search; -1 = none."""
    trie = _trie_for(model, ids)
    out = []
    for chunk in queries.split(batch_size):
        codes, _ = model.generate(chunk, trie, num_beams=max(num_beams or k, k), top_k=k)
        out.append(ids.rows_of_codes(codes))
    return torch.cat(out)


def _trie_for(model: Any, ids: Any):
    from semid.trie import PrefixTrie

    if len(model.codebook_sizes) != ids.levels or any(
        i > m for i, m in zip(ids.codebook_sizes, model.codebook_sizes, strict=True)
    ):
        raise SemidError(
            f"the model writes IDs with codebook sizes {model.codebook_sizes}, the index needs {ids.codebook_sizes}; retrain on this index"
        )
    return PrefixTrie.from_codes(ids.codes, model.codebook_sizes)


# --- the dual-encoder baseline ----------------------------------------------------------------


@dataclass
class DualEncoderConfig:
    """Towers of the dual encoder: an MLP over frozen text embeddings, an MLP over image features."""

    query_dim: int = 384
    image_dim: int = 64
    d_model: int = 128
    temperature: float = 0.1


class DualEncoder(nn.Module):
    """Text tower (frozen MiniLM embedding -> MLP) and image tower (features -> MLP), contrastive."""

    def __init__(self, config: DualEncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.text_tower = nn.Sequential(nn.Linear(config.query_dim, d), nn.GELU(), nn.Linear(d, d))
        self.image_tower = nn.Sequential(nn.Linear(config.image_dim, d), nn.GELU(), nn.Linear(d, d))

    def embed_queries(self, queries: Tensor) -> Tensor:
        """Unit vectors (B, d) of query embeddings (B, query_dim)."""
        return F.normalize(self.text_tower(queries.float()), dim=-1)

    def embed_images(self, features: Tensor) -> Tensor:
        """Unit vectors (N, d) of image features (N, image_dim)."""
        return F.normalize(self.image_tower(features.float()), dim=-1)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Contrastive loss over in-batch images (same class = positive) and the similarities (B, B)."""
        q, i = self.embed_queries(batch["query"]), self.embed_images(batch["image"])
        positive = batch["labels"][:, None] == batch["labels"][None, :]
        return contrastive_loss(q, i, positive, self.config.temperature), q @ i.T


class QueryImagePairs(QueryTargetPairs):
    """Like `QueryTargetPairs`, with the image's features instead of its ID."""

    def __init__(
        self, query_embeddings: Tensor, query_labels: Tensor, features: Tensor, labels: Tensor
    ) -> None:
        super().__init__(query_embeddings, query_labels, torch.zeros(len(features), 1), labels)
        self.features = features.float()

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        return {
            "query": self.queries[self.query_of[i]],
            "image": self.features[i],
            "labels": self.labels[i],
        }


def train_dual_encoder(
    config: DualEncoderConfig, pairs: QueryImagePairs, train_config: Any
) -> DualEncoder:
    """A `DualEncoder` trained on `pairs` with the shared Trainer (checkpoints in a temporary folder)."""
    from semid.generator import load_weights
    from semid.training import Trainer

    model = DualEncoder(config)
    with tempfile.TemporaryDirectory() as tmp:
        result = Trainer(model, pairs, train_config, tmp).fit()
        load_weights(model, result.best_path)
    return model.eval()


@torch.no_grad()
def dense_search(model: DualEncoder, queries: Tensor, image_features: Tensor, k: int) -> Tensor:
    """Top-k image rows (Q, k) by exact inner product (faiss IndexFlatIP)."""
    import faiss

    images = model.embed_images(image_features).numpy()
    index = faiss.IndexFlatIP(images.shape[1])
    index.add(images)
    _, rows = index.search(model.embed_queries(queries).numpy(), k)
    return torch.from_numpy(rows).long()


# --- CLI entry points -------------------------------------------------------------------------


def load_image_splits(dataset: str):
    """The registered image dataset `dataset` (train and test `ImageDataset`s)."""
    from semid.data import load_dataset
    from semid.data.images import ImageSplits

    splits = load_dataset(dataset)
    if not isinstance(splits, ImageSplits):
        raise SemidError(
            f"{dataset} is not an image dataset; text-to-image needs one such as fashion-mnist"
        )
    return splits


def image_features(
    splits: Any,
    features: tuple[str, str] | None = None,
    epochs: int = 1,
    seed: int = 0,
    progress: bool = True,
) -> tuple[Tensor, Tensor, Any]:
    """Train and test features (N, D), (M, D), and the CNN that made them (None for ``.npy`` files).

    `features` = (train.npy, test.npy) of precomputed embeddings, one row per image in order."""
    if features is not None:
        from semid.image_encoder import load_image_features

        return (
            load_image_features(features[0], len(splits.train)),
            load_image_features(features[1], len(splits.test)),
            None,
        )
    cnn = train_image_encoder(splits.train.images, epochs=epochs, seed=seed, progress=progress)
    return cnn.encode(splits.train.images), cnn.encode(splits.test.images), cnn


def build_index(
    dataset: str,
    spec: str,
    out: str | os.PathLike,
    collisions: str = "extra-level",
    seed: int = 0,
    features: tuple[str, str] | None = None,
    encoder_epochs: int = 1,
    text_encoder: str | None = None,
    progress: bool = True,
    **fit_kwargs: Any,
):
    """``semid index build --dataset fashion-mnist --quantizer voken:...``: writes the index of the
    test images (with its quantizer), the CNN in ``image_encoder/`` and the training targets."""
    from semid.atomic import atomic_file

    splits = load_image_splits(dataset)
    torch.manual_seed(seed)
    train_x, test_x, cnn = image_features(splits, features, encoder_epochs, seed, progress)
    texts = embed_texts(splits.train.texts(), text_encoder) if spec.startswith("voken") else None
    built = build_voken_index(
        spec, train_x, texts, test_x, splits.test.keys, collisions, seed, progress, **fit_kwargs
    )
    built.ids.metadata.update(
        {
            "task": TASK,
            "dataset": dataset,
            "seed": seed,
            "image_features": "cnn" if cnn else list(features),
        }
    )
    built.ids.save(out, quantizer=built.quantizer)
    if cnn is not None:
        cnn.save_pretrained(Path(out) / IMAGE_ENCODER_DIR)
    with atomic_file(Path(out) / TRAIN_TARGETS, "wb") as f:
        f.write(_safetensors_bytes({"codes": built.train_codes, "labels": splits.train.labels}))
    return built.ids


def _safetensors_bytes(tensors: dict[str, Tensor]) -> bytes:
    from safetensors.torch import save

    return save({k: v.contiguous() for k, v in tensors.items()})


def train_retriever(
    dataset: str,
    index: str | os.PathLike | None,
    out: str | os.PathLike,
    model: str = "avg",
    model_config: dict[str, Any] | None = None,
    train_config: Any = None,
    num_beams: int = 100,
    text_encoder: str | None = None,
) -> Path:
    """``semid train retriever --dataset fashion-mnist [--index IDX] --model avg --out RUN``.

    Without `index`, a ``DEFAULT_SPEC`` voken index is built into ``RUN/index`` first. The run
    gets ``index/`` (with the CNN), ``model/``, ``config.json`` (task ``text2image``)."""
    from semid.data.images import class_queries
    from semid.ids import SemanticIDs
    from semid.runs import copy_index, write_config
    from semid.training import TrainConfig

    splits = load_image_splits(dataset)
    out = Path(out)
    if index is None:
        index = out / "index"
        build_index(dataset, DEFAULT_SPEC, index, text_encoder=text_encoder)
    ids = SemanticIDs.load(index)
    targets_file = Path(index) / TRAIN_TARGETS
    if not targets_file.is_file():
        raise SemidError(
            f"{index} has no {TRAIN_TARGETS}; build it with `semid index build --dataset {dataset}`"
        )
    targets = load_file(str(targets_file))
    texts, labels = class_queries("train", splits.train.class_names)
    pairs = QueryTargetPairs(
        embed_texts(texts, text_encoder), labels, targets["codes"], targets["labels"]
    )
    config = {"codebook_sizes": list(ids.codebook_sizes), **(model_config or {})}
    train_config = train_config or TrainConfig(max_epochs=5, early_stopping_patience=None)
    trained = train_generator(model, config, pairs, train_config, out / "train")
    if Path(index).resolve() != (out / "index").resolve():
        copy_index(index, out)
    trained.save_pretrained(out / "model")
    write_config(
        out,
        {
            "task": TASK,
            "model": model,
            "dataset": dataset,
            "num_beams": num_beams,
            "text_encoder": text_encoder,
            "train_config": train_config.to_dict(),
        },
    )
    return out


def evaluate_run(run: Any, args: Any) -> dict[str, float]:
    """``semid eval RUN --k 10 100``: test queries (held-out wordings) against the indexed images."""
    from semid.data.images import class_queries

    cfg = run.config
    splits = load_image_splits(cfg["dataset"])
    label_of = dict(zip(splits.test.keys, splits.test.labels.tolist(), strict=True))
    image_labels = torch.tensor([label_of[k] for k in run.ids.keys])
    # images have no validation split: both --split values use the held-out test wordings
    texts, query_labels = class_queries("test", splits.test.class_names)
    queries = embed_texts(texts, cfg.get("text_encoder"))
    k = max(args.k)
    beams = max(getattr(args, "num_beams", None) or cfg.get("num_beams", 100), k)
    ranked = generative_search(
        run.model, run.ids, queries, k, beams, getattr(args, "batch_size", 64)
    )
    return class_metrics(ranked, image_labels, query_labels, args.k)


__all__ = [
    "DualEncoder",
    "DualEncoderConfig",
    "QueryImagePairs",
    "QueryTargetPairs",
    "VokenIndex",
    "build_index",
    "build_voken_index",
    "class_metrics",
    "contrastive_loss",
    "dense_search",
    "embed_texts",
    "evaluate_run",
    "generative_search",
    "image_features",
    "train_dual_encoder",
    "train_generator",
    "train_retriever",
    "training_targets",
]
