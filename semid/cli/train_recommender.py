"""`semid train recommender`: train a recommender on a dataset's leave-one-out split into a run."""

from __future__ import annotations

import argparse
from pathlib import Path

from semid import notes
from semid.cli.common import (
    add_device_argument,
    add_interaction_file_arguments,
    add_training_arguments,
    check_count,
    flag_given,
    training_config,
)
from semid.cli.table import format_table, metric_rows
from semid.configs import parse_json_object
from semid.distributed import is_main_process
from semid.errors import SemidError
from semid.models import available_models, model_class
from semid.tasks.specs import (
    RecommendSpec,
    check_model_config_fields,
    default_train,
    recommender_models,
)
from semid.wording import counted, did_you_mean

EXAMPLE = (
    "semid train recommender --dataset ml-100k --index runs/ml-100k/index --model mmgrec --out runs/ml-100k/mmgrec\n"
    "  semid train recommender --dataset ml-1m --index runs/ml-1m/index --model sasrec --epochs 20 --out runs/ml-1m/sasrec"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid train recommender`."""
    defaults = default_train()
    p.add_argument(
        "--dataset",
        required=True,
        help="embedded dataset (ml-100k, ml-1m), a MovieLens/RecBole folder, "
        "or an interactions file (user, item[, timestamp]: CSV, TSV, Parquet, JSON Lines, optionally .gz)",
    )
    add_interaction_file_arguments(p)
    p.add_argument(
        "--index",
        type=Path,
        required=True,
        help="index folder from `semid index build` on the same dataset",
    )
    p.add_argument("--model", required=True, help="mmgrec, tiger, sasrec or pop")
    p.add_argument("--out", type=Path, required=True, help="run directory to create (or resume)")
    p.add_argument(
        "--model-config", default="{}", help="JSON of model fields, e.g. '{\"dim\": 128}'"
    )
    add_device_argument(p)
    add_training_arguments(p, defaults)
    p.add_argument(
        "--patience",
        type=int,
        default=defaults.early_stopping_patience,
        help="early stopping: evaluations without valid NDCG@10 gain (default: %(default)s)",
    )
    p.add_argument(
        "--max-history", type=int, default=50, help="history items per user (default: %(default)s)"
    )
    p.add_argument(
        "--num-beams",
        type=int,
        default=RecommendSpec.num_beams,
        help="beams of the search, stored in the run (default: %(default)s; always >= k)",
    )
    p.add_argument(
        "--eval-users",
        type=eval_users,
        default=RecommendSpec.eval_users,
        help="validate during training on this many users, evenly spaced (default: %(default)s; "
        "'all': every user)",
    )
    p.add_argument(
        "--users", type=int, help="keep only the first N users (a small slice, for smoke tests)"
    )
    p.add_argument("--extra-codes", type=int, default=RecommendSpec.extra_codes,
                   help="spare last-level tokens so `semid index add` can disambiguate new items (default: %(default)s)")  # fmt: skip


def eval_users(value: str) -> int | None:
    """argparse type of --eval-users: a count, or 'all' (None)."""
    if value == "all":
        return None
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{value!r}: give a number of users or 'all'") from None


# flags a model has no use for: one that is not trained (pop counts), one that scores every item
UNTRAINED_FLAGS = ("--epochs", "--max-steps", "--batch-size", "--lr", "--patience", "--eval-users")
SCORER_FLAGS = ("--num-beams",)


def note_ignored_flags(args: argparse.Namespace) -> None:
    """Print a note on stderr naming the flags given a value that ``--model`` does not use (once
    per launch: on the main process)."""
    if not is_main_process():
        return
    cls = model_class(args.model)
    reasons = []
    if not getattr(cls, "trainable", True):
        reasons.append(("is fitted by counting, not trained", UNTRAINED_FLAGS))
    if hasattr(cls, "score_rows"):
        reasons.append(("scores every item, without beam search", SCORER_FLAGS))
    for why, flags in reasons:
        given = [flag for flag in flags if flag_given(args, flag)]
        if given:
            verb = "has" if len(given) == 1 else "have"
            notes.note(f"{args.model} {why}; {', '.join(given)} {verb} no effect")


def run(args: argparse.Namespace) -> int:
    """Train, then print the validation metrics of the best epoch."""
    if args.model not in available_models():  # a usage error, told before torch loads
        raise SemidError(
            f"unknown --model {args.model!r}{did_you_mean(args.model, recommender_models())}; "
            f"choose one of {', '.join(recommender_models())}"
        )
    from semid.runs import update_metrics
    from semid.tasks import get_task, resolve_device
    from semid.tasks.data import resolve_dataset

    check_count("--patience", args.patience)
    note_ignored_flags(args)
    model_config = parse_json_object(args.model_config, "--model-config")
    check_model_config_fields(args.model, model_config)
    spec = RecommendSpec(
        dataset=resolve_dataset(args.dataset), items=resolve_dataset(args.items, "--items"), columns=args.columns or None,
        missing_text=args.missing_text, min_interactions=args.min_interactions, model=args.model,
        model_config=model_config,
        train=training_config(args, default_train(), early_stopping_patience=args.patience),
        max_history=args.max_history, num_beams=args.num_beams, eval_users=args.eval_users,
        users=args.users, extra_codes=args.extra_codes,
    )  # fmt: skip
    summary = get_task("recommend").train(
        spec, args.out, args.index, resume=not args.no_resume, device=resolve_device(args.device)
    )
    valid = summary.get("valid", {})
    if valid and is_main_process():  # which wrote the run
        update_metrics(args.out, "valid", valid)
        print(format_table(["metric", "valid"], metric_rows(valid)))
    trained = f"{counted(summary['steps'], 'step')}, {counted(summary['epochs'], 'full epoch')}"
    print(f"\nwrote {args.out} ({trained}, {summary['train_seconds']:.0f} s)")
    return 0
