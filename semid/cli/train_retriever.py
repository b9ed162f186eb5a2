"""`semid train retriever`: train PromptDSI on documents, or AVG on images, into a run directory.

The collection is split (seeded) into an initial corpus D0 and a held-out later corpus D1
(``--hold-out``, written to ``RUN/later.jsonl``); 20% of D0's queries are held out as test queries.
Then `semid eval RUN --k 1 10` scores them and `semid index add RUN --docs RUN/later.jsonl` adds D1
without retraining.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from semid.artifacts import parse_json_object
from semid.atomic import check_writable
from semid.cli.table import format_table
from semid.errors import SemidError

DESCRIPTION = (
    "Train a generative retriever: PromptDSI on debian-docs or a JSONL of documents, "
    "or AVG (text to image) on fashion-mnist."
)
EXAMPLE = (
    "semid train retriever --dataset debian-docs --model promptdsi --out runs/docs --max-docs 2000\n"
    "  semid train retriever --dataset my_docs.jsonl --model promptdsi --out runs/mine   # {id, text, queries?} per line\n"
    "  semid train retriever --dataset fashion-mnist --model avg --out runs/fmnist"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid train retriever`."""
    p.add_argument(
        "--dataset", required=True, help="debian-docs or a JSONL file of {id, text, queries?}"
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
    p.add_argument("--max-docs", type=int, help="train on a seeded subset of this many documents")
    p.add_argument(
        "--hold-out",
        type=float,
        default=0.1,
        help="share kept for `index add` (default: %(default)s)",
    )
    p.add_argument(
        "--quantizer",
        default="rqkmeans:3x256",
        help="semantic-ID quantizer spec (default: %(default)s)",
    )
    p.add_argument(
        "--extra-codes", type=int, default=64, help="spare last-level tokens for added documents"
    )
    p.add_argument(
        "--model-config",
        default="{}",
        help="JSON of promptdsi fields, e.g. '{\"prompt_layer\": 5}'",
    )
    p.add_argument(
        "--epochs", type=int, help="training epochs (default: 10 for promptdsi, 4 for avg)"
    )
    p.add_argument(
        "--add-epochs", type=int, default=5, help="epochs of prompt training per `index add`"
    )
    p.add_argument("--lr", type=float, default=2e-3, help="default: %(default)s")
    p.add_argument(
        "--prompt-lr",
        type=float,
        default=1e-2,
        help="learning rate for `index add` (default: %(default)s)",
    )
    p.add_argument("--batch-size", type=int, help="default: 32 for promptdsi, 256 for avg")
    p.add_argument(
        "--num-beams", type=int, default=10, help="beams at retrieval, >= k (default: %(default)s)"
    )
    p.add_argument("--seed", type=int, default=0, help="default: %(default)s")


def _train_config(epochs: int, lr: float, args: argparse.Namespace) -> dict:
    # no validation split here: train for a fixed number of epochs; checkpoints make it resumable
    return {
        "max_epochs": epochs,
        "lr": lr,
        "batch_size": args.batch_size,
        "seed": args.seed,
        "warmup_steps": 20,
        "early_stopping_patience": None,
        "checkpoint_every": 200,
    }


def _run_avg(args: argparse.Namespace) -> int:
    from semid.data.images import IMAGE_DATASETS
    from semid.text2image import train_retriever
    from semid.training import TrainConfig

    if args.dataset not in IMAGE_DATASETS:
        raise SemidError(
            f"--model avg retrieves images: use --dataset {' or '.join(IMAGE_DATASETS)}"
        )
    check_writable(args.out / "config.json")
    config = TrainConfig(
        max_epochs=args.epochs or 4,
        lr=args.lr,
        batch_size=args.batch_size or 256,
        seed=args.seed,
        early_stopping_patience=None,
    )
    run_dir = train_retriever(args.dataset, args.index, args.out, model="avg", train_config=config)
    print(f"saved to {run_dir}; next: semid eval {run_dir} --k 10 100")
    return 0


def run(args: argparse.Namespace) -> int:
    """Load the documents (or images), train, save the run, print a summary."""
    if args.model == "avg":
        return _run_avg(args)
    if args.index is not None:
        raise SemidError("--index is for --model avg; promptdsi builds its document index itself")
    args.epochs = args.epochs or 10
    args.batch_size = args.batch_size or 32
    from semid.retrieve import RetrieverSpec, import_generators, load_collection, train_run

    model_config = parse_json_object(args.model_config, "--model-config", '{"prompt_layer": 5}')
    check_writable(args.out / "config.json")
    import_generators()
    spec = RetrieverSpec(
        dataset=args.dataset,
        model_config=model_config,
        train=_train_config(args.epochs, args.lr, args),
        add_train=_train_config(args.add_epochs, args.prompt_lr, args),
        quantizer=args.quantizer,
        extra_codes=args.extra_codes,
        max_docs=args.max_docs,
        hold_out=args.hold_out,
        seed=args.seed,
        num_beams=args.num_beams,
    )
    summary = train_run(args.out, load_collection(args.dataset), spec)
    print(format_table(["", "value"], [[k, v] for k, v in summary.items()]))
    later = args.out / "later.jsonl"
    print(f"\nsaved to {args.out}; next: semid eval {args.out} --k 1 10")
    if later.is_file():
        print(f"add the held-out documents: semid index add {args.out} --docs {later}")
    return 0
