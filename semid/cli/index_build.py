"""`semid index build`: semantic IDs for a catalogue, from a dataset's item texts or from embeddings."""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from semid import notes
from semid.atomic import check_writable
from semid.cli.common import add_device_argument, add_interaction_file_arguments, check_seed
from semid.cli.index_stats import format_stats
from semid.defaults import AUTO, COLLISION_STRATEGIES, INTERACTION_VECTORS
from semid.errors import SemidError

TASK_OF_KIND = {"interactions": "recommend", "documents": "retrieve", "images": "text2image"}


def kind_of(dataset: str, log_options: bool = False) -> str:
    """What a registered dataset or a data path holds (interactions, documents, images); a path
    given with an interactions file's options (``log_options``: --items, --columns) is one."""
    from semid.data.registry import available_datasets, dataset_kind
    from semid.tasks.data import sniff_kind

    if dataset in available_datasets():
        return dataset_kind(dataset)
    return "interactions" if log_options else sniff_kind(dataset)


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
        "--dataset",
        help="a registered dataset (ml-100k, ml-1m, debian-docs, manpages, fashion-mnist, digits), "
        "an interactions, documents or image-table file (CSV, TSV, Parquet, JSON Lines; optionally "
        ".gz), or a folder (MovieLens/RecBole files, a BEIR corpus, images in class subfolders)",
    )
    src.add_argument(
        "--embeddings", type=Path, help="item embeddings: .npy, .parquet or .safetensors"
    )
    p.add_argument(
        "--keys", type=Path, help="item keys, one per line (with --embeddings .npy/.safetensors)"
    )
    p.add_argument(
        "--quantizer",
        default=AUTO,
        help="quantizer spec, e.g. rqkmeans:3x256, rqvae:3x256, graph_rqvae:3x256, voken:3x256; auto: "
        "rqkmeans sized to the number of items (for images, voken sized to the training images) "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--collisions",
        default="extra-level",
        choices=sorted(COLLISION_STRATEGIES),
        help="how to make IDs unique (default: %(default)s)",
    )
    p.add_argument(
        "--encoder",
        help="sentence-transformers model folder (default: the packaged all-MiniLM-L6-v2)",
    )
    p.add_argument("--seed", type=int, default=0, help="random seed (default: %(default)s)")
    add_device_argument(p)  # where texts are embedded: item texts, documents, captions
    p.add_argument(
        "--out", type=Path, required=True, help="output index folder (replaced atomically)"
    )
    p.add_argument(
        "--interactions",
        type=Path,
        help="with --embeddings: the user-item log for graph quantizers and --collisions popularity "
        "(a registered dataset, a folder or a file, read as --dataset reads it)",
    )
    add_interaction_file_arguments(p)
    p.add_argument(
        "--plot", metavar="FILE.png", help="also draw the codebook usage, one histogram per level"
    )


def run(args: argparse.Namespace) -> int:
    """Build, save and report the index with the task that owns the dataset's kind."""
    from semid.indexing import crowding_note
    from semid.plots import check_plot_path, plot_code_usage
    from semid.tasks import IndexSource, get_task, resolve_device
    from semid.tasks.data import resolve_dataset

    check_seed(args.seed)
    if args.out.exists() and not args.out.is_dir():
        raise SemidError(f"--out {args.out} exists and is not a folder; choose another path")
    check_writable(args.out)
    device = resolve_device(args.device)
    if args.plot:
        check_plot_path(args.plot)
    dataset = resolve_dataset(args.dataset)
    source = IndexSource(dataset=dataset, items=resolve_dataset(args.items, "--items"), columns=args.columns or None,
                         missing_text=args.missing_text, min_interactions=args.min_interactions,
                         embeddings=args.embeddings, keys=args.keys, interactions=args.interactions,
                         encoder=args.encoder, device=device)  # fmt: skip
    kind = kind_of(dataset, bool(args.items or args.columns)) if dataset else "interactions"
    if kind not in TASK_OF_KIND:  # wordnet's noun hierarchies: the hierarchy benchmarks' data
        raise SemidError(f"--dataset {args.dataset} holds a {kind}, which `semid index build` does not "
                         "index: give interactions, documents or images (hierarchies are for "
                         "`python -m benchmarks.hierarchy`)")  # fmt: skip
    task = get_task(TASK_OF_KIND[kind])
    started = time.perf_counter()
    ids, lines = task.build_index(source, args.quantizer, args.out, args.collisions, args.seed)
    for line in lines:
        print(line)
    stats = ids.stats()
    print(format_stats(stats))
    from_interactions = ids.metadata.get("item_vectors") == INTERACTION_VECTORS
    crowded = crowding_note(stats, from_interactions, "items" if kind == "interactions" else kind)
    if crowded is not None:
        notes.note(crowded)
    if args.plot:
        plot_code_usage(ids, args.plot)
        print(f"codebook usage plot: {args.plot}")
    print(f"\nwrote {args.out} ({len(ids):,} items, {time.perf_counter() - started:.1f} s)")
    return 0
