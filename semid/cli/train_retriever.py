"""`semid train retriever`: train PromptDSI on documents, or AVG on images, into a run directory.

Documents: the collection is split (seeded) into an initial corpus D0 and a held-out later corpus
D1 (``--hold-out``, written to ``RUN/later.jsonl``); 20% of D0's queries are held out as test
queries. Then `semid eval RUN --k 1 10` scores them and `semid index add RUN --docs RUN/later.jsonl`
adds D1 without retraining.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

from semid.cli.common import (
    add_device_argument,
    add_training_arguments,
    check_count,
    check_rate,
    fitting_ks,
    training_config,
)
from semid.cli.table import format_table, metric_rows
from semid.configs import parse_json_object
from semid.errors import SemidError
from semid.tasks.specs import (
    RetrieveSpec,
    Text2ImageSpec,
    check_model_config_fields,
    document_add_train,
    document_train,
    image_train,
)

EXAMPLE = (
    "semid train retriever --dataset debian-docs --model promptdsi --out runs/docs --max-docs 2000\n"
    "  semid train retriever --dataset my_docs.jsonl --model promptdsi --out runs/mine   # {id, text, queries?} per line\n"
    "  semid train retriever --dataset fashion-mnist --model avg --out runs/fmnist"
)
# each model's training defaults: the flags' help and the budget of a run both read them here
MODEL_TRAINING = {"promptdsi": document_train, "avg": image_train}


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid train retriever`."""
    p.add_argument(
        "--dataset",
        required=True,
        help="documents: debian-docs, manpages, a file of id, text[, queries] rows (JSON Lines, CSV, "
        "TSV, Parquet; optionally .gz) or a BEIR folder (corpus.jsonl, queries.jsonl, qrels/); images (--model avg): fashion-mnist, digits, a folder "
        "with one subfolder per class, or a CSV/JSON Lines of path[, caption][, label]",
    )
    p.add_argument(
        "--model", default="promptdsi", choices=["promptdsi", "avg"], help="default: %(default)s"
    )
    p.add_argument(
        "--index",
        type=Path,
        help="avg: a voken index from `semid index build` (default: build one)",
    )
    p.add_argument("--out", type=Path, required=True, help="run directory to create (or resume)")
    p.add_argument(
        "--model-config", default="{}", help="JSON of model fields, e.g. '{\"prompt_layer\": 5}'"
    )
    p.add_argument(
        "--quantizer",
        help="semantic-ID quantizer spec (default: auto, sized to the collection: rqkmeans for "
        "documents, a voken tokenizer for images)",
    )
    add_device_argument(p)
    add_training_arguments(p, {model: defaults() for model, defaults in MODEL_TRAINING.items()})
    p.add_argument(
        "--patience",
        type=int,
        help="documents: early stopping, evaluations on held-out training queries without an "
        f"NDCG@10 gain (default: {document_train().early_stopping_patience})",
    )
    p.add_argument("--max-docs", type=int, help="documents: train on a seeded subset of this many")
    p.add_argument(
        "--hold-out",
        type=float,
        default=RetrieveSpec.hold_out,
        help="documents: share kept for `index add` (default: %(default)s)",
    )
    p.add_argument(
        "--pseudo-queries",
        type=int,
        default=RetrieveSpec.pseudo_queries,
        help="documents: when no document has queries, this many of each one's sentences train as "
        "its queries (0: refuse such documents; default: %(default)s)",
    )
    p.add_argument(
        "--extra-codes",
        type=int,
        help="spare last-level tokens for documents or images added later (default: "
        f"{RetrieveSpec.extra_codes} for documents, {Text2ImageSpec.extra_codes} for images)",
    )
    p.add_argument(
        "--add-epochs",
        type=int,
        default=document_add_train().max_epochs,
        help="documents: epochs of prompt training per `index add` (default: %(default)s)",
    )
    p.add_argument(
        "--prompt-lr",
        type=float,
        default=document_add_train().lr,
        help="documents: learning rate for `index add` (default: %(default)s)",
    )
    p.add_argument("--num-beams", type=int, help=f"beams at retrieval, stored in the run (default: {RetrieveSpec.num_beams} "
                                                 f"for documents, {Text2ImageSpec.num_beams} for images; always >= k)")  # fmt: skip


def _documents_only_flags(args: argparse.Namespace) -> list[str]:
    """The documents-only options (promptdsi's) given other values than their defaults."""
    defaults = {"max_docs": None, "hold_out": RetrieveSpec.hold_out,
                "pseudo_queries": RetrieveSpec.pseudo_queries, "add_epochs": document_add_train().max_epochs, "prompt_lr": document_add_train().lr}  # fmt: skip
    return [f"--{name.replace('_', '-')}" for name, default in defaults.items()
            if getattr(args, name) != default]  # fmt: skip


def _budget(args: argparse.Namespace, defaults) -> argparse.Namespace:
    """The command line's budget with the model's own defaults where a flag was not given."""
    filled = argparse.Namespace(**vars(args))
    for flag, field in (("epochs", "max_epochs"), ("batch_size", "batch_size"), ("lr", "lr")):
        if getattr(filled, flag) is None:
            setattr(filled, flag, getattr(defaults, field))
    return filled


def run(args: argparse.Namespace) -> int:
    """Load the documents (or images), train, save the run, print a summary."""
    from semid.data.registry import available_datasets
    from semid.tasks import get_task, resolve_device
    from semid.tasks.data import resolve_dataset

    model_config = parse_json_object(args.model_config, "--model-config")
    check_model_config_fields(args.model, model_config)
    check_count("--num-beams", args.num_beams)  # None: the model's default (0 is not "unset")
    defaults = MODEL_TRAINING[args.model]()
    budget = _budget(args, defaults)
    if args.model == "avg":
        if args.patience is not None:
            raise SemidError("--patience is for documents (promptdsi, which validates on held-out "
                             "training queries); avg trains its --epochs; leave it out")  # fmt: skip
        given = _documents_only_flags(args)
        if given:
            raise SemidError(f"{given[0]} is for documents (promptdsi); avg trains on the "
                             "collection's training images and indexes its test images: leave "
                             "it out")  # fmt: skip
        spec = Text2ImageSpec(
            dataset=resolve_dataset(args.dataset), model="avg", model_config=model_config, seed=args.seed,
            train=training_config(budget, defaults),
            quantizer=Text2ImageSpec.quantizer if args.quantizer is None else args.quantizer, num_beams=Text2ImageSpec.num_beams if args.num_beams is None else args.num_beams,
            # an explicit --epochs is kept as given
            min_steps=Text2ImageSpec.min_steps if args.epochs is None else 0,
            extra_codes=Text2ImageSpec.extra_codes if args.extra_codes is None else args.extra_codes,
        )  # fmt: skip
        summary = get_task("text2image").train(
            spec,
            args.out,
            args.index,
            resume=not args.no_resume,
            device=resolve_device(args.device),
        )
        print(format_table(["", "value"], metric_rows(summary)))
        ks = " ".join(map(str, fitting_ks(summary["indexed_images"], (10, 100))))
        print(f"\nsaved to {args.out}; next: semid eval {args.out} --k {ks}")
        if spec.dataset not in available_datasets():  # a user's own images: search them all
            print(f"search its {summary['train_images']:,} training images too (its index holds the "
                  f"{summary['indexed_images']:,} test images): semid index add {args.out} --items "
                  f"{args.dataset} --skip-indexed")  # fmt: skip
        return 0
    if args.index is not None:
        raise SemidError("--index is for --model avg; promptdsi builds its document index itself")
    check_count("--add-epochs", args.add_epochs)
    check_count("--patience", args.patience)
    check_rate("--prompt-lr", args.prompt_lr)
    patience = defaults.early_stopping_patience if args.patience is None else args.patience
    spec = RetrieveSpec(
        dataset=resolve_dataset(args.dataset), model_config=model_config, seed=args.seed,
        train=training_config(budget, defaults, early_stopping_patience=patience),
        add_train=dataclasses.replace(training_config(budget, document_add_train()), max_epochs=args.add_epochs, max_steps=None,
                                      lr=args.prompt_lr),
        quantizer=RetrieveSpec.quantizer if args.quantizer is None else args.quantizer, extra_codes=RetrieveSpec.extra_codes if args.extra_codes is None else args.extra_codes, max_docs=args.max_docs,
        hold_out=args.hold_out, num_beams=RetrieveSpec.num_beams if args.num_beams is None else args.num_beams,
        pseudo_queries=args.pseudo_queries,
    )  # fmt: skip
    summary = get_task("retrieve").train(
        spec, args.out, resume=not args.no_resume, device=resolve_device(args.device)
    )
    print(format_table(["", "value"], metric_rows(summary)))
    ks = " ".join(map(str, fitting_ks(summary["documents"], (1, 10))))
    if summary["test_queries"]:
        print(f"\nsaved to {args.out}; next: semid eval {args.out} --k {ks}")
    else:  # pseudo-queries and no given test queries: nothing to evaluate
        k = fitting_ks(summary["documents"], (10,))[0]
        print(f'\nsaved to {args.out}; next: semid predict {args.out} --query "..." --k {k}')
    if (args.out / "later.jsonl").is_file():
        print(
            f"add the held-out documents: semid index add {args.out} --docs {args.out / 'later.jsonl'}"
        )
    return 0
