"""`semid index add`: give new items (or documents) IDs with the saved quantizer; no retraining.

For a run, the run's task adds them: a recommender can recommend new items at once; a document
retriever trains only a new prompt session on the new documents. For a bare index folder, the items
are encoded and indexed. ``--items`` is either item embeddings (``.npy`` with ``--keys``,
``.parquet``, ``.safetensors``; same encoder and dimension as the index) or item texts, embedded
with the index's text encoder (MiniLM unless ``--encoder``): an items file like training's
``--items`` (``.csv``/``.jsonl``, or a ``.tsv`` with a header) or a ``.tsv`` of ``key<TAB>text`` lines.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from semid.cli.common import add_device_argument, check_count, fitting_ks
from semid.errors import SemidError, not_found
from semid.manifest import MANIFEST, read_manifest, run_containing
from semid.wording import counted

EPOCHS_ONLY = "--epochs is for retrieval runs (it trains their new prompt session)"
EXAMPLE = (
    "semid index add runs/ml-100k/mmgrec --items new_items.tsv      # key<TAB>text per line\n"
    "  semid index add runs/mine/mmgrec --items new_items.csv        # like train's --items\n"
    "  semid index add runs/ml-100k/mmgrec --items new.npy --keys new.txt\n"
    "  semid index add runs/mine/mmgrec --items catalogue.csv --skip-indexed   # the new ones\n"
    "  semid index add runs/docs --docs runs/docs/later.jsonl"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid index add`."""
    p.add_argument(
        "target", type=Path, help="a run directory (its index/ is updated) or an index folder"
    )
    p.add_argument(
        "--items",
        type=Path,
        help="recommenders: item texts (.csv/.jsonl like train's --items, or .tsv of key<TAB>text) "
        "or embeddings (.npy/.parquet/.safetensors); "
        "text-to-image runs: a folder with one subfolder per class, or a CSV/JSON Lines of image paths",
    )
    p.add_argument(
        "--docs",
        type=Path,
        help="documents of a retrieval run (JSON Lines, CSV, TSV or Parquet of id, text[, queries], or a "
        "BEIR folder, as training reads them): only new prompts are trained; documents without queries are indexed only",
    )
    p.add_argument("--keys", type=Path, help="keys, one per line, for --items .npy/.safetensors")
    p.add_argument(
        "--skip-indexed",
        action="store_true",
        help="leave out the items (documents, images) already indexed under the same key, as when "
        "adding a whole updated catalogue (default: they are refused)",
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="retrieval runs: epochs of the new prompt session over the new documents and their "
        "queries (default: the run's `train retriever --add-epochs`, 5)",
    )
    p.add_argument("--encoder", help="sentence-transformers folder for .tsv texts (default: the index's)")  # fmt: skip
    # where new texts are embedded (and where a retrieval run's new prompt session trains)
    add_device_argument(p)


def run(args: argparse.Namespace) -> int:
    """Read the items (or documents), add them, report their IDs."""
    from semid.ids import SemanticIDs, quantizer_dim
    from semid.indexing import add_items
    from semid.tasks import resolve_device, task_of_run
    from semid.tasks.base import added_summary
    from semid.tasks.items import read_new_items
    from semid.tasks.text2image import IMAGE_ENCODER_DIR

    if (args.items is None) == (args.docs is None):
        raise SemidError(
            "pass --items (items of a recommender) or --docs (documents of a retrieval run), one of them"
        )
    check_count("--epochs", args.epochs)
    if not os.path.lexists(args.target):
        raise not_found(args.target, "check the path of the run (from `semid train`) or index "
                        "(from `semid index build`)")  # fmt: skip
    if not args.target.is_dir():
        raise SemidError(f"{args.target} is not a folder; give a run folder (from `semid train`) or "
                         "an index folder (from `semid index build`)")  # fmt: skip
    if (args.target / "train").is_dir() and not (args.target / MANIFEST).is_file():
        read_manifest(args.target)  # a training not finished (or still running) is told as such
    device = resolve_device(args.device)
    noun = "item"
    if (args.target / MANIFEST).is_file():
        task = task_of_run(args.target)
        noun = task.entry
        given, source = ("--docs", args.docs) if args.docs is not None else ("--items", args.items)
        if given != task.add_source:
            raise SemidError(f"{args.target} is a {task.name} run; add {noun}s with "
                             f"{task.add_source}, not {given}")  # fmt: skip
        flags = {"--keys": args.keys, "--encoder": args.encoder, "--epochs": args.epochs}
        refused = [
            f for f, value in flags.items() if value is not None and f not in task.add_options
        ]
        if "--epochs" in refused:
            raise SemidError(f"{EPOCHS_ONLY}; {args.target} is a {task.name} run, which adds "
                             "without training; leave out --epochs")  # fmt: skip
        if refused:  # the run's own encoder embeds what is added
            raise SemidError(f"{refused[0]} is for items of a recommender or an index; "
                             f"{args.target} is a {task.name} run, which encodes what is "
                             f"added with its own encoder; leave out {refused[0]}")  # fmt: skip
        options = {f.lstrip("-"): flags[f] for f in task.add_options}
        summary = task.add(
            args.target, source, device=device, skip_indexed=args.skip_indexed, **options
        )
    elif (run_dir := run_containing(args.target)) is not None:
        given = f"--docs {args.docs}" if args.docs is not None else f"--items {args.items}"
        raise SemidError(f"{args.target} is part of the run {run_dir}, whose model and files grow "
                         f"with its index; add to the run: semid index add {run_dir} {given}")  # fmt: skip
    elif args.epochs is not None:
        raise SemidError(f"{EPOCHS_ONLY}; {args.target} is not a run folder; leave out --epochs")
    elif args.docs is not None:
        raise SemidError(
            f"{args.target} is not a run directory; --docs needs a run from `semid train retriever`"
        )
    elif args.items.is_dir() or (args.target / IMAGE_ENCODER_DIR).is_dir():
        raise SemidError(
            f"{args.target} is not a run folder; images are added to a text-to-image run, which "
            f"keeps the image encoder and model: semid index add RUN --items {args.items}"
        )
    else:
        indexed = SemanticIDs.load(args.target)  # its keys are checked before any text is embedded
        keys, x, texts = read_new_items(
            args.items, args.keys, args.encoder, indexed.metadata.get("encoder"), indexed=indexed,
            device=device, skip_indexed=args.skip_indexed, index_dim=quantizer_dim(args.target),
        )  # fmt: skip
        summary = {"added": 0}
        if keys:
            ids, codes = add_items(args.target, keys, x, texts=texts)
            summary = added_summary(ids, keys, codes)
    if summary["added"] == 0:
        source = args.items if args.items is not None else args.docs
        print(f"nothing to add: every {noun} of {source} is already indexed in {args.target}")
    elif "codes" in summary:
        for key, code in list(zip(summary["keys"], summary["codes"].tolist(), strict=True))[:5]:
            print(f"{key}\t{'-'.join(map(str, code))}")
        more = " (first 5 shown)" if summary["added"] > 5 else ""
        print(f"\nadded {counted(summary['added'], noun)} to {args.target}{more}")
    else:
        print(f"added {counted(summary['documents'], 'document')} to {args.target} as prompt session {summary['session']} "
              f"({counted(summary['topics'], 'new topic prompt')}, {summary['train_seconds']:.0f} s); {_held_out(summary, args.target)}")  # fmt: skip
    return 0


def _held_out(summary: dict, run: Path) -> str:
    """What became of the new documents' queries, and of the earlier test queries they answer."""
    said = _new_queries(summary, run)
    joined = summary.get("joined_test_queries", 0)
    if joined:
        said += (f"; {counted(joined, 'earlier test query counts', 'earlier test queries count')} "
                 "some of them relevant too")  # fmt: skip
    return said


def _new_queries(summary: dict, run: Path) -> str:
    """What became of the new documents' queries."""
    if summary.get("pseudo_queries"):
        they = "it has" if summary["documents"] == 1 else "they have"
        trained = f"{they} no queries, so up to {summary['pseudo_queries']} sentences of each trained as its queries"
        if not summary["test_queries"]:
            return trained
        ks = " ".join(map(str, fitting_ks(summary["indexed"], (1, 10))))
        return f"{trained}; {summary['test_queries']:,} given test queries: `semid eval {run} --k {ks}`"
    if not summary["queries"]:
        they = "it has" if summary["documents"] == 1 else "they have"
        return (f"{they} no queries, so the new prompts trained on their texts alone (indexing "
                "only; nothing held out for testing)")  # fmt: skip
    if not summary["test_queries"]:
        if summary["queries"] == 1:
            return "their one query fell outside the test share (it trains)"
        return f"none of their {summary['queries']:,} queries fell in the test share"
    ks = " ".join(map(str, fitting_ks(summary["indexed"], (1, 10))))
    return (f"{summary['test_queries']:,} of their {counted(summary['queries'], 'query', 'queries')} held out "
            f"for testing: `semid eval {run} --k {ks}`")  # fmt: skip
