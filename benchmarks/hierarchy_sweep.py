r"""One-factor-at-a-time sweep of HRQ and Euclidean RQ on a WordNet hierarchy (issue 17).

The same sweep for both sides, greedy in a fixed order: latent dimension, then learning rate,
then codebook shape (levels x size, about the same number of IDs), then curvature (HRQ only:
fixed 1, fixed 0.1, learned from 1; RQ stays at c=0). Each step keeps the value with the best
validation Recall@10 (ties: validation MRR@10), averaged over the sweep seeds, and the next
factor is varied around it. Both the quantizer and the generator stop early on validation losses.
Selection never sees the test edges; test numbers are listed but not used.

    python -m benchmarks.hierarchy_sweep --dataset mammals --seeds 0 --out DIR/sweep
    python -m benchmarks.hierarchy_sweep --seeds 0 --tasks discovery --sides RQ --max-epochs 1 \
        --out /tmp/sweep   # a quick check
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch

from benchmarks.hierarchy import (
    BASE,
    RESULTS,
    SETTINGS,
    SIDES,
    TASKS,
    add_max_epochs,
    cap_epochs,
    load_data,
    log_row,
    make_fold,
    run_config,
)
from benchmarks.hierarchy_report import run_meta, write_sweep
from semid.data.wordnet import WordNet

FACTORS = {
    "latent": [{"latent": d} for d in (2, 5, 10, 32)],
    "lr": [{"lr": lr} for lr in (3e-4, 1e-3, 3e-3)],
    "codes": [{"codes": s} for s in ("2x64", "3x16", "4x8")],
}
CURVATURES = {
    "HRQ": [{"c": 1.0, "learn_c": 0}, {"c": 0.1, "learn_c": 0}, {"c": 1.0, "learn_c": 1}],
    "RQ": [{"c": 0.0, "learn_c": 0}],
}
# The embedding network: Euclidean MLP + exp_0, or hyperbolic layers. At c=0 both are the same
# Euclidean MLP, so the RQ side has nothing to sweep here.
NETS = {"HRQ": [{"net": "mlp"}, {"net": "hnn"}], "RQ": [{"net": "mlp"}]}


def factors(side: str) -> dict[str, list[dict]]:
    """The sweep's factors in order, each a list of config updates; curvature, then network last."""
    return {**FACTORS, "curvature": CURVATURES[side], "net": NETS[side]}


def score(rows: list[dict]) -> tuple[float, float]:
    """Selection key of one config's runs: mean validation Recall@10, then MRR@10."""
    return (
        statistics.mean(r["val_recall10"] for r in rows),
        statistics.mean(r["val_mrr10"] for r in rows),
    )


def sweep_side(run: Callable[[dict, int, str], dict], side: str, seeds: list[int],
               journal: Callable[[dict], None], base: dict) -> dict:  # fmt: skip
    """Greedy one-factor-at-a-time search for one side from `base`; returns the best config.

    `run(config, seed, factor)` fits one config and returns its row; configs already run (the
    previous step's best) are reused, so each step costs len(values) - 1 new runs."""
    best = dict(base)
    done: dict[str, list[dict]] = {}
    for factor, updates in factors(side).items():
        candidates = [{**best, **u} for u in updates]
        for config in candidates:
            key = json.dumps(config, sort_keys=True)
            if key not in done:
                done[key] = [run(config, seed, factor) for seed in seeds]
                for row in done[key]:
                    journal(row)
        best = max(candidates, key=lambda c: score(done[json.dumps(c, sort_keys=True)]))
    return best


def runner(dataset: str, wn: WordNet, x: torch.Tensor, folds: dict, task: str, side: str,
           done: dict, max_epochs: int | None = None) -> Callable[[dict, int, str], dict]:  # fmt: skip
    """`run(config, seed, factor)` for `sweep_side`: one run_config row tagged with its factor
    and epoch cap, taken from `done` (rows of an earlier journal, by `row_key`) when it was
    already run under the same cap."""

    def run(config: dict, seed: int, factor: str) -> dict:
        key = row_key(task, side, config, seed, max_epochs)
        if key in done:
            return {**done[key], "factor": factor, "resumed": True}
        row = run_config(dataset, wn, x, folds[seed], task, side, config, seed)
        return {**row, "factor": factor, "max_epochs": max_epochs}

    return run


def row_key(task: str, side: str, config: dict, seed: int, max_epochs: int | None = None) -> str:
    """Identity of one sweep run, its epoch cap included (None: the dataset's); configs from
    before the ``net`` factor count as net=mlp."""
    return json.dumps([task, side, {"net": "mlp", **config}, seed, max_epochs], sort_keys=True)


def read_journal(path: Path) -> dict[str, dict]:
    """Rows of an earlier sweep journal (JSON lines) by `row_key`; empty if there is none."""
    if not path.exists():
        return {}
    rows = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    for r in rows:
        r["config"] = {"net": "mlp", **r["config"]}
    return {
        row_key(r["task"], r["side"], r["config"], r["seed"], r.get("max_epochs")): r for r in rows
    }


def main(argv: list[str] | None = None) -> None:
    """Sweep every (task, side) on one dataset; write out.{json,md} and a JSON-lines journal."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--dataset", default="mammals", choices=sorted(SETTINGS))
    parser.add_argument("--seeds", nargs="+", type=int, default=[0])
    parser.add_argument("--tasks", nargs="+", default=list(TASKS), choices=list(TASKS))
    parser.add_argument("--sides", nargs="+", default=list(SIDES), choices=list(SIDES))
    parser.add_argument(
        "--out",
        default=str(RESULTS / "hierarchy_sweep"),
        help="results stem: STEM.json and STEM.md (default: the committed "
        "benchmarks/results/hierarchy_sweep, which it replaces)",
    )
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--resume",
        action="store_true",
        help="reuse the runs already in out.jsonl (those of the same seeds and --max-epochs)",
    )
    add_max_epochs(parser)
    args = parser.parse_args(argv)
    cap_epochs(parser, [args.dataset], args.max_epochs)
    torch.set_num_threads(args.threads)
    start = time.perf_counter()
    wn, x = load_data(args.dataset, lambda m: print(m, file=sys.stderr, flush=True))
    folds = {seed: make_fold(wn, seed) for seed in args.seeds}
    rows, best = [], []
    journal_path = Path(f"{args.out}.jsonl")
    journal_path.parent.mkdir(parents=True, exist_ok=True)
    done = read_journal(journal_path) if args.resume else {}
    if not args.resume:
        journal_path.write_text("")

    def journal(row: dict) -> None:
        rows.append(row)
        if row.pop("resumed", False):
            return
        log_row(row)
        with journal_path.open("a") as f:
            f.write(json.dumps(row) + "\n")

    for task in args.tasks:
        for side in args.sides:
            run = runner(args.dataset, wn, x, folds, task, side, done, args.max_epochs)
            base = {**BASE, **SIDES[side], "codes": SETTINGS[args.dataset]["codes"]}
            config = sweep_side(run, side, args.seeds, journal, base)
            best.append({"dataset": args.dataset, "task": task, "side": side, "config": config})
    meta = run_meta(argv, args.threads, start, {args.dataset: SETTINGS[args.dataset]})
    write_sweep(args.out, rows, best, [meta])


if __name__ == "__main__":
    main()
