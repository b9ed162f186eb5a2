"""Text-to-image retrieval (Fashion-MNIST, digits, or any labelled image collection): AVG (voken IDs, generative) vs a dual encoder.

Protocol (issue 7): the training images (Fashion-MNIST 60k, digits 797) train everything; the
test images (10k, 1,000) are indexed;
test queries use wordings never seen in training; relevance = same class. Same image features
for every method (a small CNN autoencoder trained here, no labels). Methods:

(a) dual encoder: frozen MiniLM + text MLP, CNN features + image MLP, contrastive, faiss search;
(b) AVG without the discriminative loss (generative loss only);
(c) full AVG (generative + discriminative loss + the image head, ranked by log p(ID) + item_mix *
    log p(image)); also reported ranked by its beams alone (item_mix 0), and with ``--mixes``
    at other weights (for ``--validate``).

The shared steps (CNN, features, voken index) run once; (a)-(c) are trained ``--repeats`` times
with different seeds and the table reports medians (and min-max). Budgets are epochs with a
floor in optimizer steps (``--min-steps``; the CNN's and the quantizer's floors are the library
defaults), so one set of defaults serves a 60k and a 1k collection.

``--validate`` is for choosing settings without the test split: a seeded quarter of the training
images (per class) is indexed, the rest train, and the queries are the training wordings (so it
measures the image side, not generalisation over wording). Defaults were chosen there.

    python -m benchmarks.text2image                     # Fashion-MNIST (~15 min, one thread of a busy 2-core CPU)
    python -m benchmarks.text2image --dataset digits    # scikit-learn's digits (a few minutes)
    python -m benchmarks.text2image --quick             # tiny smoke run, results not written
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import torch

from benchmarks.results_files import command_line, cpu_description, write_result
from semid.data.image_files import split_indices
from semid.data.images import ImageDataset, class_queries, describe_class
from semid.generators.avg import Avg, AvgConfig
from semid.generators.dual_encoder import DualEncoder, DualEncoderConfig, dense_search
from semid.hybrid import HybridRanker
from semid.ids import SemanticIDs
from semid.indexing import AUTO, auto_spec
from semid.models import build_model
from semid.ranking import BeamRanker, Ranking
from semid.tasks.specs import GENERATOR_MIN_STEPS
from semid.tasks.text2image import (
    IMAGE_ENCODER_MIN_STEPS,
    VOKEN_OPTIONS,
    QueryTargetPairs,
    build_voken_index,
    class_metrics,
    embed_texts,
    load_image_splits,
    train_image_encoder,
    with_min_steps,
)
from semid.training import TrainConfig, train_model

RESULTS = Path(__file__).parent / "results"
VALIDATION_FRACTION = 0.25
SETTINGS_NOTE = ("Tried on validation images (text2image-validation-sweep.md): the voken weight proj 2/4/8/16, "
                 "generator step floors 100-700, AVG discriminative weight 1/2/4, label smoothing, 2 vs 3 epochs; "
                 "kept proj=4, 100 steps, weight 4, 3 epochs. The image head's item_mix 0-8 on both collections' "
                 "validation images (text2image-validation.md, text2image-digits-validation.md): kept 2.")  # fmt: skip
METRICS = ("precision@10", "precision@100", "recall@100", "map@100")
BEAMS = 100  # the beam width of the generators, and the dense search's depth
T = TypeVar("T")


@dataclass
class Timings:
    """Wall time per step, summed over its calls, and the highest 1-minute load average at the end
    of any of its calls (the load beside each timing)."""

    seconds: dict[str, float] = field(default_factory=dict)
    load: dict[str, float] = field(default_factory=dict)


def timed(timings: Timings, name: str, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
    """Run fn, record its wall time and the load average under `name`, return its result."""
    start = time.perf_counter()
    out = fn(*args, **kwargs)
    seconds, load = time.perf_counter() - start, os.getloadavg()[0]
    timings.seconds[name] = timings.seconds.get(name, 0.0) + seconds
    timings.load[name] = max(timings.load.get(name, 0.0), load)
    print(f"[{name}] {seconds:.1f} s (load {load:.1f})", flush=True)
    return out


@dataclass
class _Features:
    """What every method of the benchmark sees: image features and MiniLM query embeddings."""

    train_x: torch.Tensor  # training images' features
    train_labels: torch.Tensor
    test_x: torch.Tensor  # the indexed images' features
    test: ImageDataset
    train_q: torch.Tensor  # training queries' embeddings
    train_q_labels: torch.Tensor
    test_q: torch.Tensor
    test_q_labels: torch.Tensor
    class_emb: torch.Tensor  # each class description's embedding
    counts: dict[str, int]  # sizes for the protocol


def run(args: argparse.Namespace) -> dict:
    """The whole benchmark; returns the results dict."""
    torch.manual_seed(0)
    timings = Timings()
    features = _features(args, timings)
    indexes, index_stats = _voken_indexes(args, features, timings)
    methods: dict[str, list[dict[str, float]]] = {"dual": []}
    for rep in range(args.repeats):
        _repeat(args, features, indexes, rep, methods, timings)
        print({m: {x: round(v[-1][x], 4) for x in METRICS} for m, v in methods.items()}, flush=True)
    return {
        "protocol": _protocol(args, features),
        "indexes": index_stats,
        "runs": methods,
        "median": {
            m: {x: statistics.median(r[x] for r in runs) for x in runs[0]}
            for m, runs in methods.items()
        },
        "timings_s": {name: round(v, 1) for name, v in timings.seconds.items()},
        "timings_load_1min": {name: round(v, 2) for name, v in timings.load.items()},
    }


def _features(args: argparse.Namespace, timings: Timings) -> _Features:
    """Load the images, train the CNN image encoder and embed the class queries."""
    splits = timed(timings, "load data", load_image_splits, args.dataset, 0)
    train, test = splits.train, splits.test
    if args.validate:  # model selection without the test split (module docstring)
        train, test = validation_split(train)
    if args.max_train:  # --quick: a stratified-enough random subset
        pick = torch.randperm(len(train), generator=torch.Generator().manual_seed(0))[
            : args.max_train
        ]
        train_images, train_labels = train.images[pick], train.labels[pick]
    else:
        train_images, train_labels = train.images, train.labels
    enc_images = train_images[: args.encoder_images] if args.encoder_images else train_images
    cnn = timed(
        timings,
        "image encoder (CNN autoencoder)",
        train_image_encoder,
        enc_images,
        args.encoder_epochs,
        0,
        False,
    )
    train_x = timed(timings, "image features", cnn.encode, train_images)
    test_x = timed(timings, "image features", cnn.encode, test.images)

    train_texts, train_q_labels = class_queries("train", train.class_names)
    split = "train" if args.validate else "test"
    test_texts, test_q_labels = class_queries(split, train.class_names)
    class_texts = [describe_class(c) for c in train.class_names]
    emb = timed(
        timings, "MiniLM text embeddings", embed_texts, train_texts + test_texts + class_texts
    )
    n_train, n_test = len(train_texts), len(test_texts)
    counts = {"train_images": len(train_images), "encoder_images": len(enc_images),
              "train_queries": n_train, "test_queries": n_test}  # fmt: skip
    return _Features(train_x, train_labels, test_x, test, emb[:n_train], train_q_labels,
                     emb[n_train : n_train + n_test], test_q_labels, emb[n_train + n_test :],
                     counts)  # fmt: skip


def _voken_indexes(args: argparse.Namespace, f: _Features,
                   timings: Timings) -> tuple[dict[str, Any], dict[str, dict]]:  # fmt: skip
    """Each --quantizer's voken index of the test images, and its codebook statistics."""
    indexes, index_stats = {}, {}
    # "auto" or "auto,OPTION=..": the voken sized to the collection, with these options added
    args.quantizer = [auto_spec(len(f.train_x), family="voken", options=VOKEN_OPTIONS + q[len(AUTO):])
                      if q.split(",")[0] == AUTO else q for q in args.quantizer]  # fmt: skip
    for spec in args.quantizer:
        indexes[spec] = timed(
            timings,
            f"voken index {spec}",
            build_voken_index,
            spec,
            f.train_x,
            f.class_emb[f.train_labels],
            f.test_x,
            f.test.keys,
            args.collisions,
            0,
            False,
            epochs=args.voken_epochs,
            batch_size=512,
            patience=3,
        )
        ids, _, train_codes = indexes[spec]
        stats = ids.stats()
        index_stats[spec] = {
            "codebook_sizes": ids.codebook_sizes,
            "collision_rate_before": round(stats["collision_rate_before"], 4),
            "first_level_class_purity": round(purity(ids.codes[:, 0], f.test.labels), 4),
            "first_level_class_purity_train": round(purity(train_codes[:, 0], f.train_labels), 4),
        }
        print(f"index {spec}: {index_stats[spec]}", flush=True)
    return indexes, index_stats


def _repeat(args: argparse.Namespace, f: _Features, indexes: dict[str, Any], seed: int,
            methods: dict[str, list[dict[str, float]]], timings: Timings) -> None:  # fmt: skip
    """One repeat: train and search the dual encoder and, on each index, AVG without and with its
    discriminative loss; append each method's metrics to ``methods``."""
    k = BEAMS
    cfg = TrainConfig(max_epochs=args.epochs, batch_size=256, lr=2e-3, seed=seed,
                      early_stopping_patience=None, log_every=50)  # fmt: skip
    cfg = with_min_steps(cfg, len(f.train_x), args.min_steps)
    dual_pairs = QueryTargetPairs(
        f.train_q, f.train_q_labels, f.train_x.float(), f.train_labels, "image"
    )
    dual = timed(timings, "train dual encoder", train_dual_encoder,
                 DualEncoderConfig(query_dim=f.train_q.shape[1], image_dim=f.train_x.shape[1]),
                 dual_pairs, cfg)  # fmt: skip
    ranked = timed(
        timings, "search dual encoder (faiss)", dense_search, dual, f.test_q, f.test_x, k
    )
    methods["dual"].append(class_metrics(ranked, f.test.labels, f.test_q_labels, (10, 100)))
    for spec, (ids, _, train_codes) in indexes.items():
        pairs = QueryTargetPairs(f.train_q, f.train_q_labels, train_codes.long(), f.train_labels,
                                 images=f.train_x)  # fmt: skip
        for variant, weight in (("avg-gen", 0.0), ("avg", 1.0)):
            extra = json.loads(args.avg_config)
            config = {
                **extra,
                "codebook_sizes": ids.codebook_sizes,
                "query_dim": f.train_q.shape[1],
                "disc_weight": weight * extra.get("disc_weight", AvgConfig.disc_weight),
                # (b) is the generator alone; (c) has the image head unless --avg-config drops it
                "item_loss": weight * extra.get("item_loss", AvgConfig.item_loss),
                "image_dim": f.train_x.shape[1],
            }
            torch.manual_seed(seed)
            model = timed(timings, f"train {variant}", train_generator, "avg", config, pairs, cfg)
            mixes = [None]  # the model's own item_mix
            if model.image_head is not None:
                model.set_items_(f.test_x)
                mixes += [0.0] + [w for w in args.mixes if w != model.config.item_mix]
            searched = timed(timings, f"search {variant} (beam {k})", generative_search,
                             model, ids, f.test_q, k, mixes)  # fmt: skip
            for mix, ranked in zip(mixes, searched, strict=True):
                name = f"{variant} {spec}" if mix is None else f"{variant}@{mix:g} {spec}"
                metrics = class_metrics(ranked, f.test.labels, f.test_q_labels, (10, 100))
                methods.setdefault(name, []).append(metrics)


def _protocol(args: argparse.Namespace, f: _Features) -> dict[str, Any]:
    """The settings the results were measured under, for the report."""
    return {
        "train_images": f.counts["train_images"],
        "index_images": len(f.test),
        "train_queries": f.counts["train_queries"],
        "test_queries": f.counts["test_queries"],
        "relevance": "same class",
        "split": "validation (25% of the training images indexed, training wordings)"
        if args.validate
        else "test (held-out wordings)",
        "image_features": f"CNN autoencoder, {args.encoder_epochs} epoch(s) (at least {IMAGE_ENCODER_MIN_STEPS} steps) "
        f"on {f.counts['encoder_images']} images, dim {f.train_x.shape[1]}",
        "collisions": args.collisions,
        "voken_epochs": args.voken_epochs,
        "epochs": args.epochs,
        "min_steps": args.min_steps,
        "avg_config": args.avg_config,
        "generator_epochs_run": with_min_steps(
            TrainConfig(max_epochs=args.epochs, batch_size=256), len(f.train_x), args.min_steps
        ).max_epochs,
        "repeats": args.repeats,
        "beams": BEAMS,
    }


def validation_split(train: ImageDataset) -> tuple[ImageDataset, ImageDataset]:
    """A quarter of the training images (seeded, per class) as the index, the rest to train on."""
    fit, held = split_indices(train.labels, len(train), 1, VALIDATION_FRACTION, train.name)
    part = lambda rows, name: ImageDataset(train.images[rows], [train.keys[i] for i in rows],  # noqa: E731
                                           train.labels[rows], train.class_names, name=name)  # fmt: skip
    return part(fit, f"{train.name}/fit"), part(held, f"{train.name}/validation")


def train_dual_encoder(
    config: DualEncoderConfig, pairs: QueryTargetPairs, train: TrainConfig
) -> DualEncoder:
    """A `DualEncoder` trained on `pairs` with the shared loop (checkpoints in a temporary folder)."""
    model = DualEncoder(config)
    with tempfile.TemporaryDirectory() as tmp:
        train_model(model, pairs, train, tmp, device="cpu")  # searched and timed on the CPU
    return model.eval()


def train_generator(name: str, config: dict, pairs: QueryTargetPairs, train: TrainConfig) -> Avg:
    """A registered generator trained on `pairs` (checkpoints in a temporary folder), in eval mode."""
    model = build_model(name, config)
    with tempfile.TemporaryDirectory() as tmp:
        train_model(model, pairs, train, tmp, device="cpu")  # searched and timed on the CPU
    return model.eval()


@torch.no_grad()
def generative_search(model: Avg, ids: SemanticIDs, queries: torch.Tensor, k: int,
                      mixes: Sequence[float | None] = (None,), batch_size: int = 64) -> list[torch.Tensor]:  # fmt: skip
    """Top-k index rows (Q, k) for query embeddings (Q, T) by constrained beam search (k beams),
    one per weight of ``mixes`` on the image head's scores (None: the model's own item_mix; 0:
    the beams alone). The weights > 0 re-rank one search's candidates: one beam search per query."""
    own = model.config.item_mix if model.has_item_head() else 0.0
    weights = [own if mix is None else mix for mix in mixes]
    beams_alone = BeamRanker(model, ids, k) if 0 in weights else None
    mixed = HybridRanker(model, ids, k) if any(weights) else None
    rankings: list[list[Ranking]] = [[] for _ in weights]
    for chunk in queries.split(batch_size):
        alone = beams_alone.rank(chunk, k) if beams_alone else None
        candidates = mixed.candidates(chunk, k) if mixed else None
        for found, weight in zip(rankings, weights, strict=True):
            found.append(candidates.top(weight, k, ids) if weight else alone)
    return [Ranking.concat(found).rows for found in rankings]


def purity(first_codes: torch.Tensor, labels: torch.Tensor) -> float:
    """Share of indexed images whose first voken's majority class is their own class."""
    hits = sum(int(torch.bincount(labels[first_codes == c]).max()) for c in first_codes.unique())
    return hits / len(labels)


def markdown(result: dict, command: str) -> str:
    """The results table with its command, versions, machine and date."""
    names = {"dual": "(a) dual encoder (MiniLM + CNN, contrastive, faiss)"}
    for m in result["runs"]:
        variant, _, spec = m.partition(" ")
        if variant == "avg-gen":
            names[m] = f"(b) AVG, generative loss only, `{spec}`"
        elif variant == "avg":
            names[m] = f"(c) AVG, generative + discriminative loss + image head, `{spec}`"
        elif variant == "avg@0":
            names[m] = f"(c) ranked by its beams alone (item_mix 0), `{spec}`"
        elif variant.startswith("avg@"):
            names[m] = f"(c) with item_mix {variant[4:]}, `{spec}`"
    lines = [
        f"# Text-to-image retrieval on {result['dataset']}",
        "",
        f"Command: `{command}`  ",
        f"Date: {datetime.datetime.now(datetime.timezone.utc):%Y-%m-%d %H:%M} UTC; machine: {cpu_description()}, "
        f"{torch.get_num_threads()} torch threads, shared CPU; python {platform.python_version()}, torch {torch.__version__}",
        "",
        "Protocol: " + ", ".join(f"{k}: {v}" for k, v in result["protocol"].items()),
        "",
        f"Voken indexes of the {result['protocol']['index_images']:,} test images (first-level class "
        "purity: share of images whose first voken's majority class is their own; collision rate "
        "before the extra level): "
        + "; ".join(f"`{spec}` {stats}" for spec, stats in result["indexes"].items()),
        "",
        f"Median over {result['protocol']['repeats']} seeds (min-max in brackets); "
        "recall@100 is over all relevant images of a class, so it is at most 100 / class size.",
        "",
        "| method | " + " | ".join(METRICS) + " |",
        "|---|" + "---|" * len(METRICS),
    ]
    for m, label in names.items():
        runs = result["runs"][m]
        cells = [
            f"{result['median'][m][x]:.4f} [{min(r[x] for r in runs):.3f}-{max(r[x] for r in runs):.3f}]"
            for x in METRICS
        ]
        lines.append(f"| {label} | " + " | ".join(cells) + " |")
    base = result["median"]["dual"]["precision@10"]
    if base > 0:
        lines += ["", "Ratios of precision@10 to the dual encoder: " + ", ".join(
            f"{m} {result['median'][m]['precision@10'] / base:.3f}" for m in names if m != "dual"
        )]  # fmt: skip
        full = [m for m in names if m.startswith("avg ")]
        ratio = max((result["median"][m]["precision@10"] / base for m in full), default=0.0)
        verdict = "met" if ratio >= 1.0 else "missed"
        if result.get("quick"):  # a few epochs on a subset: the figures say nothing of the target
            verdict = "not judged on a smoke run (--quick)"
        lines += ["", f"Target (full AVG precision@10 >= 1.0x the dual encoder): "
                  f"{verdict} ({ratio:.4f}x). {SETTINGS_NOTE}"]  # fmt: skip
    loads = result.get("timings_load_1min", {})
    beside = "; the highest 1-minute load average at the end of its calls" if loads else ""
    lines += ["", f"Wall time per step (s, summed over repeats{beside}): " + ", ".join(
        f"{k} {v}" + (f" (load {loads[k]:.1f})" if k in loads else "")
        for k, v in result["timings_s"].items()
    ), ""]  # fmt: skip
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """Command-line entry point."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="fashion-mnist",
                   help="fashion-mnist, digits, a folder with one subfolder per class, or a CSV/JSON Lines of "
                   "path,label (default: %(default)s)")  # fmt: skip
    p.add_argument(
        "--quantizer",
        action="append",
        help="voken spec, or auto[,OPTION=VALUE...] (the voken sized to the collection, e.g. "
        "auto,proj=8); repeat to compare several (default: auto)",
    )
    p.add_argument("--collisions", default="extra-level")
    p.add_argument("--encoder-epochs", type=int, default=1)
    p.add_argument(
        "--encoder-images", type=int, default=0, help="train the CNN on the first N images (0: all)"
    )
    p.add_argument("--voken-epochs", type=int, default=8)
    p.add_argument("--epochs", type=int, default=3, help="epochs of (a), (b), (c)")
    p.add_argument("--min-steps", type=int, default=GENERATOR_MIN_STEPS,
                   help="at least this many optimizer steps of (a), (b), (c) (default: %(default)s)")  # fmt: skip
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--avg-config", default="{}", help="JSON of AvgConfig fields for (b) and (c); "
                   "(b) always has disc_weight 0")  # fmt: skip
    p.add_argument(
        "--max-train", type=int, default=0, help="use N random training images (0: all 60k)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads (1 is fastest on a shared, overloaded CPU)",
    )
    p.add_argument("--validate", action="store_true",
                   help="model selection: index 25%% of the training images, query with training wordings; "
                   "the test split is not touched")  # fmt: skip
    p.add_argument("--mixes", type=float, nargs="*", default=[],
                   help="extra item_mix weights to rank (c) with, beside its own and 0 (for --validate)")  # fmt: skip
    p.add_argument(
        "--quick", action="store_true", help="tiny smoke run; writes nothing unless --out"
    )
    p.add_argument("--out", type=Path, help="results stem: STEM.json and STEM.md (default: "
                   "benchmarks/results/text2image[-DATASET][-validation])")  # fmt: skip
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    args.quantizer = args.quantizer or [AUTO]
    if args.quick:
        args.max_train, args.encoder_epochs, args.voken_epochs, args.epochs, args.repeats = (
            3000,
            1,
            2,
            1,
            1,
        )
        args.min_steps = 0
    start = time.perf_counter()
    result = run(args)
    result["total_s"] = round(time.perf_counter() - start, 1)
    command = command_line("text2image", argv)
    result["command"], result["dataset"], result["quick"] = command, args.dataset, args.quick
    text = markdown(result, command)
    print(text)
    if args.out is not None:
        write_result(args.out, result, text, show=False)
    elif not args.quick:
        name = (
            "text2image"
            if args.dataset == "fashion-mnist"
            else f"text2image-{Path(args.dataset).name}"
        )
        name += "-validation" if args.validate else ""
        write_result(RESULTS / name, result, text, show=False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
