"""`semid index add`: give new items IDs with the saved quantizer and index them, without retraining.

The new IDs go into the index (and so into the trie built from it), so a generator can recommend
the items at once. ``--items`` is either item embeddings (``.npy`` with ``--keys``, ``.parquet``,
``.safetensors``; same encoder and dimension as the index) or a ``.tsv`` file of ``key<TAB>text``
lines, embedded with the index's text encoder (the packaged MiniLM unless ``--encoder``).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from semid.errors import SemidError
from semid.ids import SemanticIDs, load_quantizer

DESCRIPTION = (
    "Add new items to a run's (or an index's) semantic IDs with the saved quantizer; no retraining."
)
EXAMPLE = (
    "semid index add runs/ml-100k/tiger --items new_items.tsv      # key<TAB>text per line\n"
    "  semid index add runs/ml-100k/tiger --items new.npy --keys new.txt"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid index add`."""
    p.add_argument(
        "target", type=Path, help="a run directory (its index/ is updated) or an index folder"
    )
    p.add_argument(
        "--items",
        type=Path,
        help=".tsv (key<TAB>text) or embeddings (.npy/.parquet/.safetensors)",
    )
    p.add_argument(
        "--docs",
        type=Path,
        help="JSONL {id, text, queries?} for a retrieval run: IDs from the saved quantizer, only new prompts trained",
    )
    p.add_argument("--keys", type=Path, help="keys, one per line, for --items .npy/.safetensors")
    p.add_argument(
        "--encoder",
        help="sentence-transformers folder for .tsv texts (default: packaged all-MiniLM-L6-v2)",
    )


def read_items(
    path: Path, keys: Path | None, encoder: str | None
) -> tuple[list[str], torch.Tensor]:
    """Keys and embeddings (M, D) of the new items from a .tsv of texts or an embeddings file."""
    if path.suffix.lower() != ".tsv":
        from semid.data.embeddings import load_embeddings

        return load_embeddings(path, keys)
    if keys is not None:
        raise SemidError("--keys goes with embeddings; a .tsv brings its own keys (key<TAB>text)")
    if not path.is_file():
        raise SemidError(f"{path} not found; pass a .tsv of key<TAB>text lines")
    pairs = [
        line.split("\t", 1)
        for line in path.read_text(encoding="utf-8").splitlines()
        if line.strip()
    ]
    bad = [i for i, p in enumerate(pairs) if len(p) != 2 or not p[0] or not p[1].strip()]
    if bad or not pairs:
        raise SemidError(
            f"{path} line {bad[0] + 1 if bad else 1} is not key<TAB>text; write one item per line"
        )
    from semid.encoders import TextEncoder

    return [k for k, _ in pairs], TextEncoder(model=encoder).encode([t for _, t in pairs])


def add_items(
    index_path: Path, keys: list[str], x: torch.Tensor, model: object | None = None
) -> torch.Tensor:
    """Encode x (M, D) with the index's quantizer, add the items and save the index; returns their codes (M, L).

    With ``model``, refuse IDs outside its vocabulary before anything is written."""
    from semid.runs import check_vocabulary

    ids = SemanticIDs.load(index_path)
    quantizer = load_quantizer(index_path)
    codes = ids.add(keys, quantizer.encode(quantizer.check_input(x)))
    check_vocabulary(model, ids, f"{index_path.parent}")
    ids.save(index_path, quantizer=quantizer)
    return codes


def run(args: argparse.Namespace) -> int:
    """Read the items (or documents), add them, report their IDs."""
    if args.docs is not None:
        if args.items is not None:
            raise SemidError("pass --items or --docs, not both")
        from semid.retrieve import add_documents_command

        return add_documents_command(args.target, args.docs)
    if args.items is None:
        raise SemidError(
            "pass --items (items of a recommender) or --docs (documents of a retrieval run)"
        )
    model = None
    index_path = args.target
    if (args.target / "config.json").is_file() and (args.target / "index").is_dir():
        from semid.runs import load_run

        loaded = load_run(args.target)
        index_path, model = loaded.index_path, loaded.model
    keys, x = read_items(args.items, args.keys, args.encoder)
    codes = add_items(index_path, keys, x, model)
    for key, code in list(zip(keys, codes.tolist(), strict=True))[:5]:
        print(f"{key}\t{'-'.join(map(str, code))}")
    more = " (first 5 shown)" if len(keys) > 5 else ""
    print(f"\nadded {len(keys):,} items to {index_path}{more}")
    return 0
