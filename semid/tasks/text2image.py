"""Text-to-image retrieval (AVG): a text query -> the vokens (semantic ID) of matching images.

Protocol (docs/protocols.md): the training images train the CNN feature extractor, the voken
quantizer (aligned to the MiniLM embedding of each image's class text or caption) and the
generator; the test images are indexed; test queries use wordings never seen in training;
relevance = same class (a captions-only collection: each test caption is a query, its image the
one relevant answer); Precision@k, Recall@k, mAP@k. The index folder also holds the CNN
(``image_encoder/``) and the training images' target IDs (``train_targets.safetensors``).
"""

from __future__ import annotations

import dataclasses
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor

from semid.atomic import atomic_file, check_output_folder, read_json, restore_on_error, write_json
from semid.collisions import group_ids, rank_within_groups
from semid.data import load_dataset
from semid.data.image_files import load_image_collection, load_images
from semid.data.images import ImageDataset, ImageSplits, class_match_key, class_queries
from semid.data.registry import available_datasets
from semid.distributed import is_main_process, on_main_process
from semid.encoders import TextEncoder
from semid.errors import SemidError
from semid.ids import SemanticIDs
from semid.image_encoder import ImageEncoder, ImageEncoderConfig, load_image_features
from semid.indexing import (
    AUTO,
    IMAGE_TEXTS,
    add_items,
    auto_spec,
    build_ids,
    read_texts,
    texts_json,
)
from semid.metrics import compute_metrics, without_repeats
from semid.models import model_class
from semid.notes import note, tell
from semid.progress import batch_starts
from semid.ranking import Ranking
from semid.runs import (
    MANIFEST,
    RUN_CONFIG,
    Run,
    copy_index,
    load_run,
    moved_data,
    replacing_run,
    training_index,
    write_run,
)
from semid.saving import checked_tensor_bytes, load_checked_tensors, read_rows, write_rows
from semid.tasks.base import (
    EvalOptions,
    IndexSource,
    QueryPredictor,
    Task,
    added_summary,
    check_recommend_only_options,
    move,
    register_task,
    resolve_device,
    rows_to_add,
    subset_positions,
)
from semid.tasks.data import (
    check_fingerprint,
    data_paths,
    fingerprint,
    image_collection_files,
    trained_on,
)
from semid.tasks.specs import IMAGE_NUM_BEAMS, Text2ImageSpec
from semid.training.config import TrainConfig
from semid.wording import counted

VOKEN_OPTIONS = ",hidden=256-128,latent=32"  # the benchmark's voken network
IMAGE_ENCODER_DIR = "image_encoder"
TRAIN_TARGETS = "train_targets.safetensors"
IMAGE_FEATURES = "image_features.safetensors"  # features of the indexed images, row i = index row i
# an image whose centred CNN features are this close to an indexed image's is that image (the same
# file read and encoded again differs in the last bits; another picture differs by far more)
SAME_IMAGE_COSINE = 0.99
METRIC_NAMES = ("precision", "recall", "map")
# Step floors, so that a collection of 1k images trains as well as one of 60k: an epoch of 60k
# images is 235 batches of 256; one of 800 images would be 4 steps.
IMAGE_ENCODER_MIN_STEPS = 400


def class_metrics(ranked_rows: Tensor, image_labels: Tensor, query_labels: Tensor,
                  ks: Any = (10, 100)) -> dict[str, float]:  # fmt: skip
    """Precision/Recall/mAP@k with relevance = same class: ranked index rows (Q, K), -1 = none;
    image labels (N,) are -1 for images of no query's class (added later, or without a label).

    Recall@k divides by all relevant images of the class (so it is at most k / class size)."""
    no_class = int(query_labels.max()) + 1  # a label no query asks for; -1 stays "no image"
    image_labels = torch.where(image_labels >= 0, image_labels, no_class)
    ranked_rows = without_repeats(ranked_rows)  # an image ranked twice counts once
    ranked_labels = torch.where(ranked_rows >= 0, image_labels[ranked_rows.clamp(min=0)], -1)
    num_relevant = torch.bincount(image_labels, minlength=no_class + 1)[query_labels]
    # a label per distinct image: labels repeat by design
    return compute_metrics(ranked_labels, query_labels, ks, METRIC_NAMES, num_relevant=num_relevant,
                           repeats=True)  # fmt: skip


def embed_texts(
    texts: list[str],
    encoder: str | os.PathLike | None = None,
    device: str = "cpu",
    cache: bool = True,
) -> Tensor:
    """MiniLM (or the given sentence-transformers folder) embeddings (N, 384) computed on
    ``device``, cached on disk unless ``cache`` is False. Each distinct text is embedded once:
    class wordings repeat over thousands of images (Fashion-MNIST's 60,000 training texts hold 10)."""
    texts = list(texts)
    distinct = list(dict.fromkeys(texts))
    x = TextEncoder(model=encoder, device=device).encode(distinct, show_progress=False, cache=cache)
    if len(distinct) == len(texts):
        return x
    row = {text: i for i, text in enumerate(distinct)}
    return x[torch.tensor([row[text] for text in texts], dtype=torch.long)]


def load_image_splits(dataset: str, seed: int = 0) -> ImageSplits:
    """Train and test images of a registered dataset (fashion-mnist, digits), of a folder with one
    subfolder per class, or of a table of ``path[, caption][, label]`` rows (seeded split)."""
    if dataset not in available_datasets():
        return load_image_collection(dataset, seed=seed)
    splits = load_dataset(dataset)
    if not isinstance(splits, ImageSplits):
        raise SemidError(
            f"{dataset} is not an image dataset; text-to-image needs one such as fashion-mnist or digits"
        )
    return splits


def image_queries(images: ImageDataset, split: str) -> tuple[list[str], Tensor]:
    """Query texts and their labels (Q,) for a split's images: wordings of the class names, or,
    for a collection with captions and no labels, every caption of each image labelled by its row."""
    if images.labels is None:
        return images.caption_queries()
    return class_queries(split, images.class_names)


def answerable_queries(texts: list[str], query_labels: Tensor,
                       image_labels: Tensor) -> tuple[list[str], Tensor]:  # fmt: skip
    """The queries with at least one indexed image of their class (``image_labels``, -1: of no
    query's class); a query of a class without one (a class whose only image trains) could only
    miss, so it is left out of the figures, with a note; SemidError if none is left."""
    indexed = set(image_labels[image_labels >= 0].tolist())
    keep = [i for i, label in enumerate(query_labels.tolist()) if label in indexed]
    if len(keep) == len(texts):
        return texts, query_labels
    if not keep:
        raise SemidError("no test query has an indexed image of its class: every class's images "
                         "are training images; give each class at least 2 images")  # fmt: skip
    kept = set(keep)
    left = next(i for i in range(len(texts)) if i not in kept)
    note(f"{counted(len(texts) - len(keep), 'test query', 'test queries')} of {len(texts)} ask for "
         f"a class no indexed image has (e.g. {texts[left]!r}; a class whose images all train) "
         "and are left out of the figures")  # fmt: skip
    return [texts[i] for i in keep], query_labels[keep]


def note_shared_captions(texts: list[str], query_labels: Tensor) -> None:
    """Tell how many caption queries caption several test images (``query_labels``: the row of
    each query's image): each counts only its own image as relevant, the usual protocol of caption
    retrieval, so another image of the same caption ranked first counts as a miss."""
    images_of: dict[str, set[int]] = {}
    for text, label in zip(texts, query_labels.tolist(), strict=True):
        images_of.setdefault(" ".join(text.casefold().split()), set()).add(label)
    shared = {t for t, images in images_of.items() if len(images) > 1}
    if not shared:
        return
    queries = [t for t in texts if " ".join(t.casefold().split()) in shared]
    note(f"{counted(len(queries), 'test query', 'test queries')} of {len(texts)} are captions of "
         f"several test images (e.g. {queries[0]!r}); each counts only the image it captions as "
         "relevant (the usual protocol), so another image of the same caption counts as a miss")  # fmt: skip


INDEX_RECIPE = "index_recipe.json"  # beside a training's own index: what it was built from


def _built_by_the_interrupted_run(train_dir: Path, recipe: dict[str, Any]) -> bool:
    """Whether ``train_dir`` holds the index and checkpoints of an interrupted training of the same
    ``recipe`` (data, quantizer, text encoder, seed), so resuming need not build the index again
    (minutes of image encoder and quantizer fitting; a rebuild on another device or thread count
    might differ, and the checkpoints would then not resume)."""
    from semid.training.checkpoints import complete_checkpoints  # loads accelerate
    from semid.training.trainer import TRAINED_ON_FILE

    index = train_dir / "index"
    files = (train_dir / INDEX_RECIPE, train_dir / TRAINED_ON_FILE, index / TRAIN_TARGETS,
             index / IMAGE_ENCODER_DIR)  # fmt: skip
    if not (all(f.exists() for f in files) and complete_checkpoints(train_dir / "checkpoints")):
        return False
    try:  # a record that does not read (a damaged disk) is no match: the index is built again
        recorded_recipe, trained_on = (read_json(f, "") for f in files[:2])
    except SemidError:
        return False
    return (recorded_recipe == recipe and isinstance(trained_on, dict)
            and trained_on.get("ids") == SemanticIDs.load(index).sha256())  # fmt: skip


def check_index_of(
    index: Path,
    keys: list[str],
    targets: dict[str, Tensor],
    splits: ImageSplits,
    spec: Text2ImageSpec,
) -> None:
    """SemidError unless the index was built from this collection and seed: its first IDs are the
    test split's images, its training targets one per training image (an index of other images
    would pair this collection's queries with that one's images)."""
    head = keys[: len(splits.test)]
    if head == splits.test.keys and len(targets["labels"]) == len(splits.train):
        return
    other = next((k for k, t in zip(head, splits.test.keys, strict=False) if k != t), None)
    example = f" (it indexes {other!r})" if other is not None else ""
    raise SemidError(
        f"{index} was built from other images than {spec.dataset} with seed {spec.seed}{example}; "
        f"build one from them: semid index build --dataset {spec.dataset} --seed {spec.seed} --out DIR"
    )


def relevance_labels(images: ImageDataset) -> Tensor:
    """Labels (N,) that `image_queries` relates to: the classes, else each image its own row."""
    return images.labels if images.labels is not None else torch.arange(len(images))


def train_image_encoder(images: Tensor, epochs: int = 1, seed: int = 0, progress: bool = True,
                        min_steps: int = IMAGE_ENCODER_MIN_STEPS) -> ImageEncoder:  # fmt: skip
    """A fresh `ImageEncoder` fitted as an autoencoder on images (N, [C,] H, W) uint8, for
    `epochs` or at least `min_steps` batches."""
    images = torch.as_tensor(images)
    channels = 1 if images.ndim == 3 else images.shape[1]
    config = ImageEncoderConfig(in_channels=channels, image_size=images.shape[-1])
    return ImageEncoder(config).fit(images, epochs=epochs, seed=seed, progress=progress,
                                    min_steps=min_steps)  # fmt: skip


def with_min_steps(train: TrainConfig, num_pairs: int, min_steps: int) -> TrainConfig:
    """`train` with enough epochs for at least `min_steps` optimizer steps over `num_pairs` pairs."""
    per_epoch = max(-(-num_pairs // (train.batch_size * train.grad_accum_steps)), 1)
    return dataclasses.replace(train, max_epochs=max(train.max_epochs, -(-min_steps // per_epoch)))


def training_targets(raw_codes: Tensor, ids: SemanticIDs) -> Tensor:
    """Generator targets (N, L_ids) for training images from their raw codes (N, L).

    When the index has an extra disambiguation level, training images get their rank among the
    training images sharing their raw ID (capped to the index's extra level), as index items do."""
    if ids.levels == raw_codes.shape[1]:
        return raw_codes
    rank = rank_within_groups(group_ids(raw_codes)[0]).clamp(max=ids.codebook_sizes[-1] - 1)
    return torch.cat([raw_codes, rank[:, None]], dim=1)


def build_voken_index(spec: str, train_features: Tensor, train_texts: Tensor | None,
                      index_features: Tensor, index_keys: list[str], collisions: str = "extra-level",
                      seed: int = 0, progress: bool = True, **fit_kwargs: Any) -> tuple[SemanticIDs, Any, Tensor]:  # fmt: skip
    """Fit ``spec`` on train features (N, D) aligned to their text embeddings (N, T) and give each
    index image (M, D) a unique ID -> (index, quantizer, training targets (N, L))."""
    if train_texts is not None:
        if not spec.startswith("voken"):
            raise SemidError(
                f"{spec} does not align to text; use a voken:... quantizer or drop the texts"
            )
        fit_kwargs["text_embeddings"] = train_texts
    ids, quantizer = build_ids(list(index_keys), train_features, spec, collisions, seed,
                               encode_x=index_features, progress=progress, **fit_kwargs)  # fmt: skip
    return ids, quantizer, training_targets(quantizer.encode(train_features), ids)


class QueryTargetPairs(torch.utils.data.Dataset):
    """Training pairs: image i with a fixed wording of its class (so resumed runs see the same data)."""

    def __init__(self, query_embeddings: Tensor, query_labels: Tensor, targets: Tensor, labels: Tensor,
                 target_key: str = "target_codes", images: Tensor | None = None) -> None:  # fmt: skip
        """``images``: features (N, D) of the target images, given as ``image`` (an image head)."""
        self.queries, self.targets, self.labels = query_embeddings.float(), targets, labels.long()
        self.target_key, self.images = target_key, None if images is None else images.float()
        by_class = [
            torch.nonzero(query_labels == c).squeeze(1) for c in range(int(labels.max()) + 1)
        ]
        missing = [c for c, rows in enumerate(by_class) if len(rows) == 0 and (labels == c).any()]
        if missing:
            raise SemidError(f"no training query for class {missing[0]}; every class needs one")
        # a multiplicative hash spreads the wordings of a class evenly over its images
        self.query_of = torch.stack([by_class[c][(i * 2654435761) % max(len(by_class[c]), 1)]
                                     for i, c in enumerate(labels.tolist())])  # fmt: skip

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        item = {"query": self.queries[self.query_of[i]], self.target_key: self.targets[i],
                "labels": self.labels[i]}  # fmt: skip
        if self.images is not None:
            item["image"] = self.images[i]
        return item


class Text2ImageTask(Task):
    """AVG over an image collection: vokens aligned to text, a generator from query to vokens."""

    name = "text2image"
    entry = "image"
    spec_class = Text2ImageSpec

    def _build_index(self, source: IndexSource, quantizer: str, out: Path, collisions: str, seed: int,
                    features: tuple[str, str] | None = None, progress: bool = True,
                    splits: ImageSplits | None = None,
                    **fit_kwargs: Any) -> tuple[SemanticIDs, list[str]]:  # fmt: skip
        """Index the test images: CNN features (trained here, or ``.npy`` files), a voken quantizer
        fitted on the training images; saves the CNN and the training targets beside the index.
        ``splits``: the collection, when the caller has read it already."""
        if source.embeddings is not None or source.interactions is not None:
            raise SemidError(
                "an image dataset brings its own features; drop --embeddings/--interactions"
            )
        if splits is None:
            splits = load_image_splits(source.dataset, seed)
        torch.manual_seed(seed)
        if features is not None:
            train_x = load_image_features(features[0], len(splits.train))
            test_x, cnn = load_image_features(features[1], len(splits.test)), None
        else:
            cnn = train_image_encoder(splits.train.images, seed=seed, progress=progress)
            train_x = cnn.encode(splits.train.images, device=source.device)
            test_x = cnn.encode(splits.test.images, device=source.device)
        if quantizer == AUTO:
            quantizer = auto_spec(len(splits.train), family="voken", options=VOKEN_OPTIONS)
        texts = None
        if quantizer.startswith("voken"):
            train_texts = splits.train.texts()
            if progress:
                tell(f"embedding {len(set(train_texts)):,} distinct texts of "
                     f"{len(train_texts):,} training images")  # fmt: skip
            texts = embed_texts(train_texts, source.encoder, source.device)
        ids, fitted, targets = build_voken_index(quantizer, train_x, texts, test_x, splits.test.keys,
                                                 collisions, seed, progress, **fit_kwargs)  # fmt: skip
        ids.metadata.update({"task": self.name, "dataset": source.dataset,
                             "image_features": "cnn" if cnn else list(features)})  # fmt: skip
        if splits.train.class_names:  # what `index add` compares an added image's class with
            ids.metadata["classes"] = list(splits.train.class_names)
        shown = dict(zip(splits.test.keys, splits.test.shown_texts(), strict=True))
        ids.save(out, quantizer=fitted, extra_files={IMAGE_TEXTS: texts_json(shown)})
        if cnn is not None:
            cnn.save_pretrained(out / IMAGE_ENCODER_DIR)
        with atomic_file(out / TRAIN_TARGETS, "wb") as f:
            f.write(checked_tensor_bytes({"codes": targets.contiguous(), "features": train_x.float().contiguous(),
                                          "labels": relevance_labels(splits.train).contiguous()}))  # fmt: skip
        write_rows(out / IMAGE_FEATURES, test_x)
        size = splits.train.images.shape[-1]
        lines = [f"quantizer {quantizer} for {len(splits.train):,} training images",
                 f"images at {size}x{size} px (the working size of the image encoder)"]  # fmt: skip
        if source.dataset not in available_datasets():  # a user's own images: say what is searched
            lines.append(f"indexed the {counted(len(ids), 'test image')} of its split; a run "
                         "trained on this index searches the training images too once `semid index "
                         f"add RUN --items {source.dataset} --skip-indexed` adds them")  # fmt: skip
        return ids, lines

    def _train(self, spec: Text2ImageSpec, out: Path, index: Path | None = None,
              resume: bool = True, device: str = 'auto') -> dict:  # fmt: skip
        """Train the generator on (query wording, training image ID) pairs; without ``index`` a
        ``spec.quantizer`` index is built into ``out/train/index`` first."""
        check_output_folder(out)
        device = resolve_device(device)  # the text encoder embeds the training queries there too
        splits = load_image_splits(spec.dataset, spec.seed)
        data_sha256 = fingerprint(spec.dataset, files_of=image_collection_files)
        built = index is None
        if built:  # built beside the checkpoints; the run's index is replaced at the end, with the
            # model, so the earlier run stays whole until then (and is never built over)
            index = out / "train" / "index"
            recipe = {"dataset": spec.dataset, "data": data_sha256, "quantizer": spec.quantizer,
                      "text_encoder": spec.text_encoder, "seed": spec.seed}  # fmt: skip
            source = IndexSource(dataset=spec.dataset, encoder=spec.text_encoder, device=device)
            on_main_process(lambda: self._training_index(source, spec, index, recipe, splits, resume),
                            device)  # decided and built once, by rank 0 of a launched job  # fmt: skip
        ids = SemanticIDs.load(index)
        if not (Path(index) / TRAIN_TARGETS).is_file():
            raise SemidError(f"--index {index} is not an index of images (it has no {TRAIN_TARGETS}); "
                             f"build one of the images: semid index build --dataset "
                             f"{spec.dataset} --out INDEX")  # fmt: skip
        targets = load_checked_tensors(Path(index) / TRAIN_TARGETS)
        check_index_of(index, ids.keys, targets, splits, spec)
        if not built:  # learnt from a copy: a rebuild of --index meanwhile changes neither the
            # model nor its run's index
            index = training_index(index, out, ids.sha256(), device)
        texts, labels = image_queries(splits.train, "train")
        has_features = (Path(index) / IMAGE_FEATURES).is_file()  # older indexes keep none
        features = targets.get("features") if has_features else None
        queries = embed_texts(texts, spec.text_encoder, device)
        pairs = QueryTargetPairs(queries, labels, targets["codes"].long(), targets["labels"],
                                 images=features)  # fmt: skip
        cls = model_class(spec.model)
        image_dim = 0 if features is None else features.shape[1]
        torch.manual_seed(
            spec.train.seed
        )  # the same weights whether the index was built here or not
        model = cls(cls.sized_for(spec.model_config, ids, extra_codes=spec.extra_codes,
                                  image_dim=image_dim, query_dim=queries.shape[1]))  # fmt: skip
        train = with_min_steps(spec.train, len(pairs), spec.min_steps)
        started = time.perf_counter()
        stamp = trained_on(data_sha256, spec.dataset, ids.sha256(), spec, ("seed",))
        from semid.training import train_model  # here: accelerate loads only to train

        result = train_model(model, pairs, train, out / "train", resume=resume, device=device,
                             trained_on=stamp)  # fmt: skip
        summary = {"train_images": len(splits.train), "indexed_images": len(ids),
                   "image_size": splits.train.images.shape[-1]}  # fmt: skip
        if splits.train.class_names:  # a captions-only collection has none
            summary["classes"] = len(splits.train.class_names)
        summary |= {"query_wordings" if splits.train.labels is not None else "captions": len(texts),
                    "steps": result.steps, "epochs": result.epochs,
                    "train_seconds": round(result.resumed_after_s + time.perf_counter() - started, 2)}  # fmt: skip
        if not is_main_process():
            return summary
        with replacing_run(out):
            copy_index(index, out, trained_sha256=stamp["ids"])
            model.save_pretrained(out / "model")
            write_run(
                out,
                self.name,
                spec,
                {
                    "train_steps": result.steps,
                    "data_sha256": data_sha256,
                    "trained_items": len(ids),
                    "train_images": len(splits.train),  # searched once an add indexes them
                },
            )
        if built:  # the run holds its copy now; a rerun builds it again (the recipe goes first:
            # a removal stopped half way leaves no index that a resume would take for whole)
            (out / "train" / INDEX_RECIPE).unlink(missing_ok=True)
            shutil.rmtree(index)
        return summary

    def _training_index(self, source: IndexSource, spec: Text2ImageSpec, index: Path,
                        recipe: dict[str, Any], splits: ImageSplits, resume: bool) -> None:  # fmt: skip
        """The index a training without ``--index`` learns from: the one an interrupted training of
        the same ``recipe`` built, when resuming, else built now and its recipe recorded beside it
        once it is whole."""
        if resume and _built_by_the_interrupted_run(index.parent, recipe):
            note(f"resuming with the index the interrupted training built ({index})")
            return
        (index.parent / INDEX_RECIPE).unlink(missing_ok=True)  # of an index about to be replaced
        self.build_index(source, spec.quantizer, index, "extra-level", spec.seed, splits=splits)
        write_json(index.parent / INDEX_RECIPE, recipe)

    def _evaluate(self, run: Run, options: EvalOptions) -> dict[str, float]:
        """Test queries (held-out wordings) against the indexed images."""
        if options.split != "test":
            raise SemidError(f"{run.path} is a text-to-image run: it is evaluated on its test split "
                             "only (it has no validation split); leave out --split valid")  # fmt: skip
        check_recommend_only_options(run, options, "text-to-image")
        spec = self.spec_of(run)
        check_fingerprint(run, spec.dataset, files_of=image_collection_files,
                          fix="restore it or retrain the run; new images go in a folder of their "
                              f"own, indexed with `semid index add {run.path} --items FOLDER`")  # fmt: skip
        splits = load_image_splits(spec.dataset, spec.seed)
        label_of = dict(zip(splits.test.keys, relevance_labels(splits.test).tolist(), strict=True))
        # images added later: their class if the test split has it (as class texts read it:
        # class_match_key: case, spaces, "_" and "-" aside), else relevant to no query
        class_index = {class_match_key(c): i for i, c in enumerate(splits.test.class_names or [])}
        label_of |= {
            k: class_index.get(class_match_key(c), -1) if c is not None else -1
            for k, c in run.state.get("added_labels", {}).items()
        }
        unknown = [k for k in run.ids.keys if k not in label_of]
        if unknown:
            raise SemidError(
                f"indexed image {unknown[0]!r} is not in {run.spec['dataset']}'s test split"
            )
        image_labels = torch.tensor([label_of[k] for k in run.ids.keys])
        added = len(run.state.get("added_labels", {}))
        if added:
            note(f"the index holds {counted(added, 'image')} added with `semid index add` beside "
                 f"the {counted(len(splits.test), 'test image')}: the figures rank them all (more "
                 "images of a class make its precision easier), so they are not comparable with "
                 "those before the adds")  # fmt: skip
        texts, query_labels = answerable_queries(*image_queries(splits.test, "test"), image_labels)
        if splits.test.labels is None:  # caption queries: relevant is the image captioned
            note_shared_captions(texts, query_labels)
        kept = subset_positions(len(texts), options.max_queries)
        texts, query_labels = [texts[i] for i in kept.tolist()], query_labels[kept]
        predictor = self.predictor(run, options.device)
        ranking = predictor.rank_embeddings(predictor.embed(texts, cache=True), max(options.ks), options.num_beams,
                                            batch_size=options.batch_size, item_mix=options.item_mix)  # fmt: skip
        metrics = class_metrics(ranking.rows, image_labels, query_labels, options.ks)
        return metrics | {"num_queries": len(texts)}

    def _add(self, run_path: Path, source: Path, device: str = "cpu",
             skip_indexed: bool = False) -> dict:  # fmt: skip
        """New images (a class-folder tree or a table of paths) get vokens from the saved CNN
        (run on ``device``) and quantizer; queries find them at once. Their classes are kept for
        `evaluate`. Images already indexed are refused, or left out with ``skip_indexed``
        (``added`` 0 when none is new)."""
        run = load_run(run_path, self.name)
        encoder_dir = run.index_path / IMAGE_ENCODER_DIR
        if not encoder_dir.is_dir() and run.ids.metadata.get("image_features") == "cnn":
            raise SemidError(f"{encoder_dir} is missing (an earlier `semid index add` dropped it); "
                             "copy image_encoder/ from the index the run was trained with")  # fmt: skip
        if not encoder_dir.is_dir():
            raise SemidError(f"{run_path} was indexed from precomputed features; add their features with "
                             "`semid index add INDEX --items new.npy --keys new.txt` instead")  # fmt: skip
        cnn = ImageEncoder.from_pretrained(encoder_dir)
        known = read_rows(run.index_path / IMAGE_FEATURES)
        if known is not None and len(known) != len(run.ids):
            raise SemidError(f"{run.index_path / IMAGE_FEATURES} has {len(known)} rows for {len(run.ids)} "
                             "indexed images; rebuild the index")  # fmt: skip

        def same_as_indexed(left_out: ImageDataset) -> None:
            if known is not None:  # an index that keeps no features cannot tell
                features = cnn.encode(left_out.images, device=device)
                check_left_out_are_indexed(left_out, features, run.ids, known, source)

        images = added_images(source, cnn.config.image_size, run.ids.keys, skip_indexed,
                              training_folder=self.spec_of(run).dataset,
                              check_left_out=same_as_indexed)  # fmt: skip
        if not len(images):
            return added_summary(run.ids, [])
        features = cnn.encode(images.images, device=device)
        state = dict(run.state)
        classes = (
            [images.class_names[int(c)] for c in images.labels]
            if images.labels is not None and images.class_names is not None
            else [None] * len(images)  # no label: the image is relevant to no test query
        )
        state.setdefault("added_labels", {}).update(zip(images.keys, classes, strict=True))
        # the codes, the features and the labels go in as one change (or not at all)
        with restore_on_error([run.index_path, run_path / RUN_CONFIG, run_path / MANIFEST]):
            ids, codes = add_items(run.index_path, images.keys, features, run.model,
                                   texts=images.shown_texts())  # fmt: skip
            if known is not None:
                write_rows(run.index_path / IMAGE_FEATURES, torch.cat([known, features.float()]))
            write_run(run_path, self.name, self.spec_of(run), state, added_from=source)
        _note_unknown_classes(classes, run.ids.metadata.get("classes"))
        return added_summary(ids, images.keys, codes)

    def predictor(self, run: Run, device: str = "cpu") -> Text2ImagePredictor:
        """Top-k images for query texts."""
        return Text2ImagePredictor(run, device)


def _note_unknown_classes(added: list[str | None], trained: object) -> None:
    """Tell which classes of added images the run was not trained on, and how many have no class
    (``trained``: the index's list of classes; None for an index of captions, or one built before
    it recorded them)."""
    if not isinstance(trained, list):
        return
    known = {class_match_key(str(c)) for c in trained}
    unknown = Counter(c for c in added if c is not None and class_match_key(c) not in known)
    if unknown:
        shown = ", ".join(f"{c!r} ({counted(n, 'image')})" for c, n in sorted(unknown.items()))
        note(f"added images of classes the run was not trained on: {shown}; they are indexed, but "
             "its model has not learned to find them for their class name and `semid eval` counts "
             "them relevant to no query; train a run on a collection with the class to learn it")  # fmt: skip
    unlabelled = sum(c is None for c in added)
    if unlabelled:
        them = "it" if unlabelled == 1 else "them"
        note(f"added {counted(unlabelled, 'image')} without a class to a run of classes: "
             f"`semid eval` counts {them} relevant to no query (images added with a class, from "
             "class subfolders or a table with a label column, count)")  # fmt: skip


def added_images(source: Path, image_size: int, indexed: list[str], skip_indexed: bool = False,
                 training_folder: str | None = None,
                 check_left_out: Callable[[ImageDataset], None] | None = None) -> ImageDataset:  # fmt: skip
    """Images to add from a folder or a table; a folder's keys start with its name
    (``more/Sneaker/IMG_0000.png``), so two folders of the same layout do not clash, except the
    run's own ``training_folder``, keyed as training keyed it (its indexed images keep their keys).
    Images already indexed are refused, or left out with ``skip_indexed`` (so that none may be
    left), after ``check_left_out`` of them (it raises for those that are not the indexed images;
    the training folder's are, by construction)."""
    images = load_images(source, image_size=image_size)
    own = _same_folder(source, training_folder)
    if Path(source).is_dir() and not own:
        folder = Path(source).resolve().name
        images = dataclasses.replace(images, keys=[f"{folder}/{k}" for k in images.keys])
    taken = {os.path.normpath(k) for k in indexed}  # ./a.png and a.png name one image

    def is_taken(key: str) -> bool:
        return os.path.normpath(key) in taken

    if own:
        label, fix = (
            f"{source} (the folder the run was trained on)",
            "add the new images from a folder of their own",
        )
    else:
        label = str(source)
        fix = ("rename those files or the folder (an added folder's keys are its name and the paths "
               "below it; a table's keys are its paths)")  # fmt: skip
    if skip_indexed and not own and check_left_out is not None:
        left_out = [i for i, key in enumerate(images.keys) if is_taken(key)]
        if left_out:
            check_left_out(images.subset(left_out))
    rows = rows_to_add(images.keys, is_taken, "image", label, skip_indexed, fix)
    return images if len(rows) == len(images.keys) else images.subset(rows)


def check_left_out_are_indexed(left_out: ImageDataset, features: Tensor, ids: Any,
                               known: Tensor, source: Path) -> None:  # fmt: skip
    """SemidError when an image left out as indexed already is another picture than the one
    indexed under its key (its CNN ``features`` (M, D) against the index's ``known`` rows, both
    centred on the indexed images' mean): two folders of one name, or two tables of the same
    relative paths, key different files alike."""
    row_of = {os.path.normpath(k): i for i, k in enumerate(ids.keys)}
    rows = torch.tensor([row_of[os.path.normpath(k)] for k in left_out.keys], dtype=torch.long)
    centre = known.float().mean(0)
    similarity = F.cosine_similarity(features.float() - centre, known[rows].float() - centre, dim=1)
    other = (similarity < SAME_IMAGE_COSINE).nonzero().flatten().tolist()
    if other:
        key = left_out.keys[other[0]]
        raise SemidError(f"{counted(len(other), 'image')} of {source} {'has' if len(other) == 1 else 'have'} "
                         f"the key of an indexed image but other pixels (e.g. {key!r}): a folder of "
                         "the same name, or a table of the same paths, as one added before; add them "
                         "from a folder of another name, or a table of other paths (an added folder's "
                         "keys are its name and the paths below it; a table's, its paths)")  # fmt: skip


def _same_folder(source: Path, training_folder: str | None) -> bool:
    """Whether ``source`` is the folder a run was trained on (not a registered dataset's name)."""
    if not data_paths(training_folder) or not Path(training_folder).is_dir():
        return False
    return Path(source).resolve() == Path(training_folder).resolve()


class Text2ImagePredictor(QueryPredictor):
    """Answers ``{"query": TEXT}`` with the top-k image keys."""

    task = "text2image"
    serves = "retrieves images for queries"

    def __init__(self, run: Run, device: str = "cpu") -> None:
        features = read_rows(run.index_path / IMAGE_FEATURES)
        if features is not None and getattr(run.model, "image_head", None) is not None:
            run.model.set_items_(features)
        super().__init__(run, device)

    def unsearched_note(self) -> str | None:
        """The training images of a user's own collection (not a registered dataset, whose
        protocol searches its test images) until `semid index add` of the collection adds them."""
        dataset, trained = self.run.spec.get("dataset"), self.run.state.get("train_images")
        if not isinstance(dataset, str) or not trained or dataset in available_datasets():
            return None
        folder = str(
            Path(moved_data(self.run.config, self.run.path).get("dataset", dataset)).resolve()
        )
        if any(add.get("source") == folder for add in self.run.config.get("adds", [])):
            return None
        return (f"{self.run.path} searches the test images of {dataset}, not its "
                f"{counted(trained, 'training image')}; `semid index add {self.run.path} --items "
                f"{dataset} --skip-indexed` adds them")  # fmt: skip

    def data_texts(self) -> dict[str, str]:
        """The indexed images' captions or class names, kept in the index when it was built."""
        return read_texts(self.run.index_path / IMAGE_TEXTS, "the images indexed at its build")

    def embed(self, texts: list[str], cache: bool = False) -> Tensor:
        """Query embeddings (Q, T) with the run's text encoder; cached on disk with ``cache``
        (eval's test queries, which come back), not otherwise: a query asked of a run seldom
        comes again, and each would add a file to the cache."""
        return embed_texts(texts, self.run.spec.get("text_encoder"), str(self.device), cache)

    def rank(self, inputs: list[dict[str, Any]], k: int, num_beams: int | None) -> Ranking:
        """Embed the queries (not cached) and search them."""
        return self.rank_embeddings(self.embed([x["query"] for x in inputs]), k, num_beams)

    @property
    def default_num_beams(self) -> int:
        """The run's beams (``train retriever --num-beams``)."""
        return self.run.spec.get("num_beams", IMAGE_NUM_BEAMS)

    def rank_embeddings(self, queries: Tensor, k: int, num_beams: int | None,
                        batch_size: int = 64, item_mix: float | None = None) -> Ranking:  # fmt: skip
        """Top-k image rows for query embeddings (Q, T), in batches."""
        ranker = self.mixed_ranker(num_beams, item_mix)
        return Ranking.concat(
            [
                ranker.rank(move(queries[lo : lo + batch_size], self.device), k)
                for lo in batch_starts(len(queries), batch_size, "search queries")
            ]  # fmt: skip
        )


TASK = register_task(Text2ImageTask())
