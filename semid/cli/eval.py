"""`semid eval`: evaluate a run directory on its valid or test split; prints a table, writes metrics.json.

The run's manifest names its task; the task evaluates with its own protocol."""

from __future__ import annotations

import argparse
import errno
import os
from pathlib import Path
from typing import TYPE_CHECKING, Any

from semid import notes
from semid.atomic import DiskFullError, WriteFailedError
from semid.cli.common import add_device_argument
from semid.cli.table import format_table, metric_rows
from semid.errors import SemidError
from semid.manifest import read_manifest
from semid.wording import counted

if TYPE_CHECKING:
    from semid.tasks import EvalOptions

EXAMPLE = "semid eval runs/ml-100k/mmgrec --k 5 10 --split test"


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid eval`."""
    p.add_argument("run_dir", type=Path, metavar="RUN", help="run directory from `semid train ...`")
    p.add_argument("--k", type=int, nargs="+", default=[5, 10], help="cut-offs (default: 5 10)")
    p.add_argument(
        "--split",
        choices=["valid", "test"],
        default="test",
        help="default: %(default)s (retrieval and text-to-image runs have test queries only)",
    )
    p.add_argument(
        "--num-beams", type=int, help="beams for generators (default: the run's; always >= max k)"
    )
    p.add_argument(
        "--batch-size", type=int, default=256, help="queries per batch (default: %(default)s)"
    )
    add_device_argument(p)
    p.add_argument(
        "--cold-share",
        type=float,
        default=0.0,
        help="recommendation with a generator: share of the top-k that may go to items added "
        "after training (`semid index add`) whose ID extends a generated prefix, as in TIGER "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--cold-prefix",
        type=int,
        default=1,
        help="with --cold-share: leading codes a new item must share with a generated ID (default: %(default)s)",
    )
    p.add_argument(
        "--item-mix",
        type=float,
        help="a generator with an item head (MMGRec, AVG, PromptDSI: item_loss or rank_loss > 0): weight w of "
        "log p(ID) + w * log p(item); 0 is beam search alone (with PromptDSI's BM25 mix, if any) "
        "(default: the run's: chosen on the valid split for recommenders and on held-out training "
        "queries for PromptDSI; for AVG a default chosen once on Fashion-MNIST and digits)",
    )
    p.add_argument(
        "--users",
        type=int,
        help="recommendation: score an evenly spaced subset of this many of the split's users, "
        "for a quick estimate on a large log (saved apart from the full figures) (default: all)",
    )
    p.add_argument(
        "--queries",
        type=int,
        help="retrieval and text to image: score an evenly spaced subset of this many of each "
        "part's test queries, for a quick estimate on a large collection (saved apart from the "
        "full figures) (default: all)",
    )
    p.add_argument("--keep-seen", action="store_true",
                   help="recommendation: also rank items the user already interacted with "
                   "(default: exclude them, as RecBole's full-sort evaluation does)")  # fmt: skip


def options_from(args: argparse.Namespace) -> EvalOptions:
    """The evaluation options of the command line, checked."""
    from semid.tasks import EvalOptions, resolve_device

    if min(args.k) < 1:
        raise SemidError(f"--k must be >= 1, got {min(args.k)}")
    if args.num_beams is not None and args.num_beams < max(args.k):
        raise SemidError(
            f"--num-beams must be >= the largest --k ({max(args.k)}), got {args.num_beams}"
        )
    if args.batch_size < 1:
        raise SemidError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.cold_prefix > 1 and not args.cold_share:  # (below 1: its range error, later)
        raise SemidError("--cold-prefix sets how many codes --cold-share's new items must share "
                         "with a generated ID; give --cold-share too, or leave it out")  # fmt: skip
    if args.users is not None and args.users < 1:
        raise SemidError(f"--users must be >= 1 (or left out for every user), got {args.users}")
    if args.queries is not None and args.queries < 1:
        raise SemidError(
            f"--queries must be >= 1 (or left out for every query), got {args.queries}"
        )
    return EvalOptions(
        split=args.split, ks=tuple(args.k), num_beams=args.num_beams, batch_size=args.batch_size,
        device=resolve_device(args.device), cold_share=args.cold_share, cold_prefix=args.cold_prefix,
        keep_seen=args.keep_seen, item_mix=args.item_mix, max_users=args.users,
        max_queries=args.queries,
    )  # fmt: skip


def metrics_key(args: argparse.Namespace) -> str:
    """Where the figures go in metrics.json: the split, plus any search option that changes the
    ranking (``test (item_mix=0)``), so an ablation never overwrites the run's own figures."""
    changed = [f"num_beams={args.num_beams}" if args.num_beams is not None else "",
               f"cold_share={args.cold_share:g}" if args.cold_share else "",
               f"cold_prefix={args.cold_prefix}" if args.cold_share and args.cold_prefix != 1 else "",
               f"item_mix={args.item_mix:g}" if args.item_mix is not None else "",
               "keep_seen" if args.keep_seen else "",
               f"users={args.users}" if args.users is not None else "",
               f"queries={args.queries}" if args.queries is not None else ""]  # fmt: skip
    changed = [c for c in changed if c]
    return f"{args.split} ({', '.join(changed)})" if changed else args.split


def drop_subset_that_took_all(args: argparse.Namespace, metrics: dict[str, Any]) -> None:
    """Forget ``--users N`` / ``--queries N`` when it asked for more than the split holds
    (every part scored fewer than N), with a note: the figures are the split's own, saved as such
    (not as a subset beside them)."""
    flag, asked = ("--users", args.users) if args.users is not None else ("--queries", args.queries)
    counts = [v for k, v in metrics.items() if k.split("/")[-1] == "num_queries"]
    if asked is None or not counts or max(counts) >= asked:
        return
    args.users = args.queries = None
    one, many = ("user", "users") if flag == "--users" else ("query", "queries")
    scored = counted(max(counts), f"{args.split} {one}", f"{args.split} {many}")
    notes.note(f"{flag} {asked} is over the {scored}: every one was scored, and the figures are "
               "saved as the split's own")  # fmt: skip


def fitting_cutoffs(ks: list[int], catalogue: int, run_dir: Path) -> list[int]:
    """The cut-offs of ``ks`` that fit the catalogue, in increasing order, each once; those over it
    are left out with a note on stderr (the README's ``--k 10 100`` on a 60-image collection still
    gives R@10); SemidError if none fits."""
    ks = sorted(set(ks))
    fitting = [k for k in ks if k <= catalogue]
    if not fitting:
        raise SemidError(f"--k {min(ks)} is over the catalogue size ({catalogue} items of {run_dir}); "
                         f"give a k of at most {catalogue}")  # fmt: skip
    if len(fitting) < len(ks):
        over = " ".join(str(k) for k in ks if k > catalogue)
        notes.note(f"--k {over} left out: over the catalogue size ({catalogue} items of {run_dir})")
    return fitting


def run(args: argparse.Namespace) -> int:
    """Load the run, evaluate, print a table and merge the result into metrics.json."""
    read_manifest(args.run_dir)  # a wrong RUN is told before the task layer (torch) loads
    from semid.locking import can_write
    from semid.models import is_generator
    from semid.runs import load_run, model_stamp, read_metrics, update_metrics
    from semid.tasks import get_task

    evaluated = model_stamp(args.run_dir)  # taken first: a change during the load shows later
    loaded = load_run(args.run_dir)
    args.k = fitting_cutoffs(args.k, len(loaded.ids), args.run_dir)
    options = options_from(args)
    read_metrics(args.run_dir)  # a damaged metrics.json fails now, not after evaluating
    metrics = get_task(loaded.task).evaluate(loaded, options)
    # the catalogue ranked over (a task may say it ranks fewer: a scorer, not the items added since
    # its training): after `semid index add` the same split is measured on a larger one
    metrics = {"num_items": len(loaded.ids)} | metrics
    drop_subset_that_took_all(args, metrics)
    if not is_generator(loaded.model):  # no beams: the figures are the split's own (a note said so)
        args.num_beams = None
    key = metrics_key(args)
    # a run on a read-only share is evaluated all the same; `unsaved` says why not saved, and
    # `failed` a save that should have worked (the exit code then says so: a script reading
    # metrics.json after the command would read the earlier figures)
    saved_to, unsaved, failed = args.run_dir / "metrics.json", None, None
    if not can_write(args.run_dir):
        unsaved = (
            f"{args.run_dir} is read-only here, so these figures were not saved to its metrics.json"
        )
    else:
        try:
            update_metrics(args.run_dir, key, metrics, evaluated)
        except DiskFullError:
            failed = (f"no space left on device for {saved_to}, so the figures above were not "
                      "saved (it keeps the earlier ones); free space and evaluate again")  # fmt: skip
        except WriteFailedError as e:
            if e.errno not in (errno.EACCES, errno.EPERM):
                failed = str(e)  # the device failed: said as an error, the exit code too
            else:  # metrics.json itself made immutable, or another user's
                unsaved = (f"cannot replace {saved_to} ({os.strerror(e.errno)}), so these figures "
                           "were not saved")  # fmt: skip
    print(format_table(["metric", key], metric_rows(metrics)))
    if failed is not None:
        raise SemidError(failed)
    if unsaved is None:
        print(f"\nsaved to {saved_to}")
    else:
        notes.note(unsaved)
    return 0
