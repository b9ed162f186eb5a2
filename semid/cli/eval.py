"""`semid eval`: evaluate a run directory on its valid or test split; prints a table, writes metrics.json.

Dispatches on the run's ``task`` (from its config.json), so other tasks (e.g. retrieval) can plug in
their own evaluator with `register_task`.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

from semid.cli.table import format_table
from semid.errors import SemidError
from semid.runs import Run, load_run, update_metrics

DESCRIPTION = (
    "Evaluate a trained run on its valid or test split (full ranking); prints and saves metrics."
)
EXAMPLE = "semid eval runs/ml-100k/tiger --k 5 10 --split test"

Evaluator = Callable[[Run, argparse.Namespace], dict[str, float]]
_TASKS: dict[str, Evaluator] = {}


def register_task(name: str, evaluator: Evaluator) -> None:
    """Make `semid eval` call ``evaluator(run, args)`` for runs whose config has task = ``name``."""
    _TASKS[name] = evaluator


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid eval`."""
    p.add_argument("run_dir", type=Path, metavar="RUN", help="run directory from `semid train ...`")
    p.add_argument("--k", type=int, nargs="+", default=[5, 10], help="cut-offs (default: 5 10)")
    p.add_argument(
        "--split", choices=["valid", "test"], default="test", help="default: %(default)s"
    )
    p.add_argument(
        "--num-beams",
        type=int,
        help="beams for generators (default: the run's, and always >= max k)",
    )
    p.add_argument(
        "--batch-size", type=int, default=256, help="queries per batch (default: %(default)s)"
    )
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
        help="with --cold-share: leading codes a new item must share with a generated ID "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--keep-seen",
        action="store_true",
        help="recommendation: also rank items the user already interacted with "
        "(default: exclude them, as RecBole's full-sort evaluation does)",
    )


def evaluate_recommendation(run: Run, args: argparse.Namespace) -> dict[str, float]:
    """Full-ranking Recall/NDCG@k of a recommendation run on its split."""
    from semid.cli.train_recommender import load_data
    from semid.recommend import evaluate
    from semid.runs import make_recommender

    cfg = run.config
    data = load_data(cfg["dataset"], run.ids, cfg["max_history"], cfg.get("users"))
    beams = max(args.num_beams or cfg.get("num_beams", 20), max(args.k))
    rec = make_recommender(
        cfg["model"],
        run.model,
        run.ids,
        data,
        beams,
        cfg.get("trained_items"),
        args.cold_share,
        args.cold_prefix,
    )
    codes = None if cfg["model"] == "sasrec" else run.ids.codes
    return evaluate(
        rec,
        data,
        args.split,
        ks=args.k,
        codes=codes,
        max_len=cfg["max_history"],
        batch_size=args.batch_size,
        exclude_seen=not args.keep_seen,
    )


def evaluate_retrieval(run: Run, args: argparse.Namespace) -> dict[str, float]:
    """Document retrieval (PromptDSI): R@k and MRR on D0-test and, once added, D1-test."""
    from semid.retrieve import evaluate_retriever

    return evaluate_retriever(run, args)


def evaluate_text2image(run: Run, args: argparse.Namespace) -> dict[str, float]:
    """Text to image (AVG): precision, recall and mAP at k on held-out query wordings."""
    from semid.text2image import evaluate_run

    return evaluate_run(run, args)


register_task("recommend", evaluate_recommendation)
register_task("retrieve", evaluate_retrieval)
register_task("text2image", evaluate_text2image)


def run(args: argparse.Namespace) -> int:
    """Load the run, evaluate, print a table and merge the result into metrics.json."""
    if min(args.k) < 1:
        raise SemidError(f"--k must be >= 1, got {min(args.k)}")
    loaded = load_run(args.run_dir)
    task = loaded.config.get("task", "recommend")
    if task not in _TASKS:
        raise SemidError(
            f"{args.run_dir} is a {task!r} run, which `semid eval` cannot evaluate; known: {sorted(_TASKS)}"
        )
    metrics = _TASKS[task](loaded, args)
    update_metrics(args.run_dir, args.split, metrics)
    rows: list[list[Any]] = [[k, v] for k, v in metrics.items()]
    print(format_table(["metric", args.split], rows))
    print(f"\nsaved to {args.run_dir / 'metrics.json'}")
    return 0
