"""Arguments several subcommands share (training budget, search device), parsed in one place."""

from __future__ import annotations

import argparse
import dataclasses
import math

from semid.data.tables import parse_columns
from semid.errors import SemidError
from semid.training import TrainConfig


def add_training_arguments(
    p: argparse.ArgumentParser, defaults: TrainConfig | dict[str, TrainConfig]
) -> None:
    """--epochs, --max-steps, --batch-size, --lr, --seed with the task's defaults, or with each
    model's (``{model: defaults}``: the flags default to None, and the help lists them)."""
    per_model = defaults if isinstance(defaults, dict) else None
    first = next(iter(per_model.values())) if per_model else defaults

    def default(field: str) -> dict[str, object]:
        if per_model is None:
            return {"default": getattr(first, field), "help": "default: %(default)s"}
        each = ", ".join(f"{getattr(d, field)} for {model}" for model, d in per_model.items())
        return {"default": None, "help": f"default: {each}"}

    epochs = default("max_epochs")
    p.add_argument(
        "--epochs", type=int, default=epochs["default"], help=f"max epochs ({epochs['help']})"
    )
    p.add_argument(
        "--max-steps", type=int,
        help="stop after this many optimizer steps (the last weights are evaluated, and kept if they are the best; a later "
        "run with more steps resumes, and keeps them if no later evaluation beats them: unlike a run never stopped, "
        "which does not evaluate them)",
    )  # fmt: skip
    batch = default("batch_size")
    p.add_argument("--batch-size", type=int, default=batch["default"],
                   help=f"examples per step of each process ({batch['help']})")  # fmt: skip
    p.add_argument("--lr", type=float, **default("lr"))
    p.add_argument("--seed", type=int, default=first.seed, help="default: %(default)s")
    resume = p.add_mutually_exclusive_group()  # both: which one was meant cannot be told
    resume.add_argument("--no-resume", action="store_true", help="start over even if --out holds a checkpoint")  # fmt: skip
    resume.add_argument("--resume", dest="no_resume", action="store_false",
                        help="resume from the last checkpoint in --out (the default)")  # fmt: skip


def training_config(args: argparse.Namespace, defaults: TrainConfig, **more: object) -> TrainConfig:
    """The task's training defaults with the command line's budget applied, each flag checked by name."""
    check_count("--epochs", args.epochs)
    check_count("--max-steps", args.max_steps)
    check_count("--batch-size", args.batch_size)
    check_seed(args.seed)
    check_rate("--lr", args.lr)
    return dataclasses.replace(
        defaults, max_epochs=args.epochs, max_steps=args.max_steps, batch_size=args.batch_size,
        lr=args.lr, seed=args.seed, **more,
    )  # fmt: skip


MAX_SEED = (
    2**32 - 1
)  # numpy's seeds end there (torch's at 2**64 - 1; faiss takes them modulo 2**31)


def check_seed(value: int) -> None:
    """SemidError unless ``value`` is a seed every generator semid seeds accepts."""
    if not 0 <= value <= MAX_SEED:
        raise SemidError(f"--seed must be in [0, {MAX_SEED}], got {value}")


def check_count(flag: str, value: int | None, minimum: int = 1) -> None:
    """SemidError naming ``flag`` unless ``value`` is None or an integer >= ``minimum``."""
    if value is not None and value < minimum:
        raise SemidError(f"{flag} must be >= {minimum}, got {value}")


def check_rate(flag: str, value: float) -> None:
    """SemidError naming ``flag`` unless ``value`` is a finite number > 0 (a learning rate)."""
    if not (math.isfinite(value) and value > 0):
        raise SemidError(f"{flag} must be a finite number > 0, got {value}")


def add_device_argument(p: argparse.ArgumentParser, default: str = "auto") -> None:
    """--device cpu|cuda|cuda:N|auto."""
    p.add_argument("--device", default=default,
                   help="cpu, cuda, cuda:N or auto (a GPU when there is one; default: %(default)s)")  # fmt: skip


def add_interaction_file_arguments(p: argparse.ArgumentParser) -> None:
    """--items, --columns, --missing-text, --min-interactions: a user's own interactions file."""
    p.add_argument(
        "--items",
        help="with an interactions file: item texts (CSV/TSV/Parquet/JSONL with item and text columns); "
        "without it, index build takes item vectors from the interactions",
    )
    p.add_argument(
        "--columns",
        type=parse_columns,
        help="column names by role when not the usual ones, e.g. user=uid,item=sku,timestamp=ts; "
        "text=title+brand joins those columns of --items",
    )
    p.add_argument(
        "--missing-text",
        choices=["error", "drop"],
        default="error",
        help="interactions whose item has no text in --items: stop, or drop them (default: %(default)s)",
    )
    p.add_argument("--min-interactions", type=int, default=3,
                   help="drop users with fewer interactions (default: %(default)s, as RecBole: "
                   "leave-one-out needs a training, a valid and a test event)")  # fmt: skip


def fitting_ks(catalogue: int, ks: tuple[int, ...]) -> list[int]:
    """The cut-offs of `ks` within the catalogue, or the catalogue size when none is: the `--k` of
    the eval commands that train and add print."""
    return [k for k in ks if k <= catalogue] or [catalogue]


def flag_given(args: argparse.Namespace, flag: str) -> bool:
    """Whether ``flag`` (e.g. ``--lr``) was given a value other than its default."""
    dest = flag.lstrip("-").replace("-", "_")
    return getattr(args, dest) != args.default_of(dest)
