"""`semid index build`: semantic IDs for a catalogue, from a dataset's item texts or from embeddings."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch

from semid.atomic import check_writable
from semid.cli.index_stats import format_stats
from semid.collisions import collision_strategies
from semid.errors import SemidError
from semid.ids import SemanticIDs
from semid.quantization import build_quantizer

DESCRIPTION = "Build a semantic-ID index: embed items (or read embeddings), fit a quantizer, resolve collisions."
EXAMPLE = (
    "semid index build --dataset ml-1m --quantizer rqkmeans:3x256 --out runs/ml-1m/index\n"
    "  semid index build --embeddings items.npy --keys items.txt --quantizer rqkmeans:3x256 --out idx\n"
    "  semid index build --dataset ml-1m --quantizer graph_rqvae:3x256 --collisions popularity --out g\n"
    "  semid index build --dataset fashion-mnist --quantizer voken:3x256 --out runs/fmnist/index"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid index build`."""
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument(
        "--dataset", help="embedded dataset name (e.g. ml-1m, ml-100k) or a dataset folder"
    )
    src.add_argument(
        "--embeddings", type=Path, help="item embeddings: .npy, .parquet or .safetensors"
    )
    p.add_argument(
        "--keys", type=Path, help="item keys, one per line (with --embeddings .npy/.safetensors)"
    )
    p.add_argument(
        "--quantizer", default="rqkmeans:3x256", help="quantizer spec (default: %(default)s)"
    )
    p.add_argument(
        "--collisions",
        default="extra-level",
        choices=collision_strategies(),
        help="how to make IDs unique (default: %(default)s)",
    )
    p.add_argument(
        "--encoder",
        help="sentence-transformers model folder (default: the packaged all-MiniLM-L6-v2)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    p.add_argument(
        "--out", type=Path, required=True, help="output index folder (replaced atomically)"
    )
    p.add_argument(
        "--interactions",
        type=Path,
        help="user-item log (CSV/TSV: user,item[,timestamp]) for graph quantizers; with --embeddings",
    )
    p.add_argument(
        "--plot", metavar="FILE.png", help="also draw the codebook usage, one histogram per level"
    )


def _load_items(args: argparse.Namespace) -> tuple[list[str], torch.Tensor, dict, object | None]:
    """Keys, embeddings (N, D), provenance, and the dataset (or None) for the chosen source."""
    if args.embeddings is not None:
        from semid.data.embeddings import load_embeddings

        keys, x = load_embeddings(args.embeddings, args.keys)
        return keys, x, {"embeddings": str(args.embeddings)}, None
    if args.keys is not None:
        raise SemidError("--keys goes with --embeddings; a --dataset brings its own item keys")
    from semid.data import load_dataset
    from semid.encoders import TextEncoder

    dataset = load_dataset(args.dataset)
    encoder = TextEncoder(model=args.encoder)
    print(f"embedding {len(dataset.item_texts):,} item texts of {dataset.name} ...", flush=True)
    x = encoder.encode(dataset.item_texts)
    return (
        list(dataset.item_keys),
        x,
        {"dataset": dataset.name, "encoder": args.encoder or "all-MiniLM-L6-v2"},
        dataset,
    )


def _popularity(dataset: object | None, strategy: str, n: int) -> torch.Tensor | None:
    if strategy != "popularity":
        return None
    if dataset is None:
        raise SemidError(
            "--collisions popularity needs interaction counts: use --dataset, or another strategy"
        )
    log = dataset.interactions
    return torch.bincount(log.items, minlength=n)


def _training_interactions(
    args: argparse.Namespace, dataset: object | None, keys: list[str], spec: str
):
    """The training part of the leave-one-out split: valid/test targets must not leak into the IDs."""
    from semid.data.splits import leave_one_out

    if args.interactions is not None:
        from semid.data.interactions import read_interactions

        log = read_interactions(args.interactions, keys)
    elif dataset is not None:
        log = dataset.interactions
    else:
        raise SemidError(
            f"{spec} needs user-item interactions: use --dataset, or --interactions FILE"
        )
    return leave_one_out(log).train


def _is_image_dataset(name: str) -> bool:
    from semid.data.images import IMAGE_DATASETS

    return name in IMAGE_DATASETS


def _build_image_index(args: argparse.Namespace) -> int:
    """Images: train the CNN feature extractor, then quantize (voken aligns IDs with class texts)."""
    from semid.text2image import build_index

    if args.embeddings is not None or args.interactions is not None:
        raise SemidError(
            "an image dataset brings its own features; drop --embeddings/--interactions"
        )
    ids = build_index(
        args.dataset,
        args.quantizer,
        args.out,
        collisions=args.collisions,
        seed=args.seed,
        text_encoder=args.encoder,
    )
    print(format_stats(ids.stats()))
    if args.plot:
        from semid.plots import plot_code_usage

        plot_code_usage(ids, args.plot)
    print(f"\nwrote {args.out} ({len(ids):,} images)")
    return 0


def run(args: argparse.Namespace) -> int:
    """Build, save and report the index."""
    if args.out.exists() and not args.out.is_dir():
        raise SemidError(f"--out {args.out} exists and is not a folder; choose another path")
    check_writable(args.out)
    if args.dataset is not None and _is_image_dataset(args.dataset):
        return _build_image_index(args)
    torch.manual_seed(args.seed)
    quantizer = build_quantizer(args.quantizer)
    keys, x, source, dataset = _load_items(args)
    fit_kwargs = {"seed": args.seed}
    if getattr(quantizer, "needs_interactions", False):
        fit_kwargs["interactions"] = _training_interactions(
            args, dataset, keys, str(quantizer.spec)
        )
    elif args.interactions is not None:
        raise SemidError(f"--interactions is only used by graph quantizers, not {quantizer.spec}")
    print(f"fitting {quantizer.spec} on {len(keys):,} x {x.shape[1]} embeddings ...", flush=True)
    start = time.perf_counter()
    quantizer.fit(quantizer.check_input(x), **fit_kwargs)
    fit_seconds = time.perf_counter() - start
    raw = quantizer.encode(x)
    distances = quantizer.last_level_distances(x) if args.collisions == "reassign" else None
    ids = SemanticIDs.from_codes(
        keys,
        raw,
        quantizer.codebook_sizes,
        args.collisions,
        distances=distances,
        popularity=_popularity(dataset, args.collisions, len(keys)),
        quantizer_spec=str(quantizer.spec),
        metadata={**source, "seed": args.seed, "fit_seconds": round(fit_seconds, 3)},
    )
    ids.save(args.out, quantizer=quantizer)
    print(format_stats(ids.stats()))
    if args.plot:
        from semid.plots import plot_code_usage

        plot_code_usage(ids, args.plot)
        print(f"codebook usage plot: {args.plot}")
    print(f"\nwrote {args.out} ({len(ids):,} items, fit {fit_seconds:.1f} s)")
    return 0
