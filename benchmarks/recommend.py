"""Sequential recommendation on MovieLens: pop, SASRec-CE, TIGER and MMGRec in one harness, one split.

Protocol (docs/protocols.md): leave-one-out by timestamp (ties broken by item key), histories of <= 50 items, full
ranking over all items, Recall@5/10 and NDCG@5/10 on the test targets; generators take their top-10
from trie-constrained beam search with 20 beams. Models are selected on valid NDCG@10 (early stopping).

Also measures the cold-start rate: the newest ``--cold-frac`` of items (by first interaction) are
removed from the data and the index, the generator is trained without them, the items are then added
with ``semid index add`` logic (saved quantizer, no retraining), and we report Recall@10 on the test
users whose target is one of those new items (pop and SASRec cannot recommend them at all: 0).

Run: python -m benchmarks.recommend --datasets ml-100k --jobs 3
(each model trains in its own process with ``--threads`` torch threads, default 1; ``--jobs`` run side
by side).
A long run can be stopped and continued: ``--resume`` with the same ``--work`` reuses the indexes
there and resumes every model from its last epoch's checkpoint (a higher ``--max-epochs`` extends it).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import shutil
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import semid.quantizers  # noqa: F401  (registers the quantizers)
from benchmarks.recommend_report import aggregate, comparisons, markdown
from benchmarks.recommend_setup import (
    BUDGETS,
    COLD_SHARES,
    GRAPH_QUANTIZERS,
    INDEX_OF,
    RESULTS,
    build_index,
    newest_items,
    without_items,
)
from benchmarks.results_files import command_line, cpu_description, write_result
from semid.atomic import atomic_file
from semid.configs import parse_json_object
from semid.data import load_dataset
from semid.data.registry import register_dataset
from semid.data.tables import file_stem, table_format
from semid.encoders import TextEncoder
from semid.errors import SemidError
from semid.indexing import add_items
from semid.runs import load_run
from semid.saving import versions
from semid.tasks import EvalOptions, get_task
from semid.tasks.recommend import RecommendSpec, evaluate_ranker, rank_split
from semid.training import TrainConfig


def spec_for(
    name: str, dataset: str, seed: int, max_history: int = 50, checkpoint_every: int = 10**6
) -> RecommendSpec:
    """The benchmark's spec of one model: its budget on top of TrainConfig's defaults.

    Checkpoints come at each epoch's end, and every `checkpoint_every` optimizer steps besides.
    """
    train = TrainConfig(
        **{**BUDGETS[name]["train"], "seed": seed, "checkpoint_every": checkpoint_every}
    )
    return RecommendSpec(dataset=dataset, model=name, model_config=BUDGETS[name].get("model", {}),
                         train=train, max_history=max_history)  # fmt: skip


def train_and_test(job: dict[str, Any]) -> dict[str, Any]:
    """One model on one dataset: train (early stopping on valid), then test metrics and median queries/s."""
    torch.set_num_threads(job["threads"])
    task = get_task("recommend")
    name, run = job["model"], Path(job["run"])
    spec = spec_for(name, job["dataset"], job["seed"], job["max_history"], job["checkpoint_every"])
    summary = task.train(spec, run, Path(job["index"]), resume=job["resume"])
    loaded = load_run(run)
    reps = [task.evaluate(loaded, EvalOptions(split="test")) for _ in range(job["reps"])]
    metrics = reps[0]  # deterministic: every repetition ranks the same
    metrics["queries_per_s"] = statistics.median(r["queries_per_s"] for r in reps)
    metrics["load_1min"] = round(os.getloadavg()[0], 2)  # beside its train and query timings
    return {"dataset": job["dataset"], "model": name, **metrics, **_train_summary(summary)}


def index_exists(path: Path) -> bool:
    """Whether a complete index folder is at path (SemanticIDs.save writes it atomically)."""
    return (path / "config.json").is_file()


def _train_summary(summary: dict[str, Any]) -> dict[str, Any]:
    keys = ("train_seconds", "epochs", "steps", "best_step", "item_mix", "item_mix_valid_ndcg@10")
    # the best valid NDCG@10, which picks the best generator of a run (never a test figure)
    valid = (summary.get("valid") or {}).get("ndcg@10")
    return {**{k: summary.get(k) for k in keys}, "valid_ndcg@10": valid}


def cold_start(job: dict[str, Any]) -> dict[str, Any]:
    """Train a generator without the newest items, add them with the saved quantizer, test on them."""
    torch.set_num_threads(job["threads"])
    task = get_task("recommend")
    full = load_dataset(job["dataset"])
    new = newest_items(full.interactions, job["cold_frac"])
    work = Path(job["run"])
    old = without_items(full, new)
    held_out = f"{job['dataset']}-without-newest-items"
    register_dataset(held_out, lambda: old, "the benchmark's dataset without its newest items")
    x_full = TextEncoder().encode(full.item_texts, show_progress=False)  # cached
    keep = torch.ones(len(x_full), dtype=torch.bool)
    keep[new] = False
    if not (job["resume"] and index_exists(work / "old-index")):
        build_index(
            old, work / "old-index", job["seed"], job["graph"], x_full[keep], job["graph_quantizer"]
        )
    name = job["model"]
    spec = spec_for(name, held_out, job["seed"], job["max_history"], job["checkpoint_every"])
    summary = task.train(spec, work / "run", work / "old-index", resume=job["resume"])
    # the new items go into a copy: the trained run stays as trained, for --resume to reuse it
    # (semid refuses to train over a run holding added items)
    with_new = work / "run-with-new-items"
    shutil.rmtree(with_new, ignore_errors=True)
    shutil.copytree(work / "run", with_new)
    keys = [full.item_keys[i] for i in new.tolist()]
    # new items have no interactions: graph smoothing leaves them their own (normalized) text vectors
    loaded = load_run(with_new)
    add_items(loaded.index_path, keys, x_full[new], loaded.model)
    loaded = load_run(with_new)
    data = task.load_data(dataclasses.replace(spec, dataset=job["dataset"]), loaded.ids)
    is_new = torch.zeros(len(loaded.ids), dtype=torch.bool)
    is_new[loaded.ids.rows_of_keys(keys)] = True
    rows = []
    for share in COLD_SHARES:
        ranker = task.ranker(loaded, spec, EvalOptions(cold_share=share))
        on_new = evaluate_ranker(ranker, data, "test", codes=loaded.ids.codes, targets_in=is_new)
        overall = evaluate_ranker(ranker, data, "test", codes=loaded.ids.codes)
        _, ranking, _, _ = rank_split(ranker, data, "test", 10, loaded.ids.codes)
        ranked = ranking.rows
        rows.append({
            "cold_share": share, "cold_recall@10": on_new["recall@10"], "cold_ndcg@10": on_new["ndcg@10"],
            "overall_recall@10": overall["recall@10"],
            # share of all test top-10 slots filled by new items (does the model recommend them at all?)
            "share_of_new_items_in_top10": float(is_new[ranked.clamp(min=0)][ranked >= 0].float().mean()),
        })  # fmt: skip
    return {
        "dataset": job["dataset"], "model": name, "new_items": len(keys),
        "new_item_test_users": int(on_new["num_queries"]), "by_cold_share": rows, **_train_summary(summary),
    }  # fmt: skip


def work_folder(dataset: str) -> str:
    """The folder under ``--work`` of a dataset given by name or by path: a path's last part
    without its table extension, so that runs never land inside (or beside) the data itself."""
    return Path(dataset).name if table_format(dataset) is None else file_stem(dataset)


def work_folders(datasets: list[str]) -> dict[str, str]:
    """Each dataset's folder under ``--work`` (`work_folder`); two datasets that would share one
    (``/a/ratings.csv`` and ``/b/ratings.csv``) raise, since each would overwrite the other's runs."""
    folders: dict[str, str] = {}
    for ds in datasets:
        folder = work_folder(ds)
        if folder in folders.values():
            other = next(d for d, f in folders.items() if f == folder)
            raise SemidError(
                f"datasets {other} and {ds} would share the work folder '{folder}'; "
                "rename one, or run them in separate --work folders"
            )
        folders[ds] = folder
    return folders


def environment(threads: int, argv: list[str] | None = None) -> dict[str, Any]:
    """Versions and machine, for the record, with the command of ``argv`` (default: this
    process's arguments)."""
    return {
        **versions(),
        "machine": f"{cpu_description()} (shared; load average {os.getloadavg()[0]:.1f} at start)",
        "torch_threads_per_job": threads,
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": command_line("recommend", argv),
    }


def _parser() -> argparse.ArgumentParser:
    """The command line of `main`."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=["ml-100k"])
    p.add_argument("--models", nargs="*", default=["pop", "sasrec", "mmgrec", "tiger"])
    p.add_argument(
        "--cold-start",
        nargs="*",
        default=["mmgrec"],
        help="generators to run the cold-start experiment with (default: %(default)s; a bare "
        "--cold-start runs none)",
    )
    p.add_argument(
        "--cold-frac",
        type=float,
        default=0.1,
        help="share of items held out as new (default: %(default)s)",
    )
    p.add_argument(
        "--jobs", type=int, default=1, help="models trained side by side (default: %(default)s)"
    )
    p.add_argument(
        "--threads",
        type=int,
        default=1,
        help="torch threads of each model's process (default: %(default)s)",
    )
    p.add_argument(
        "--reps",
        type=int,
        default=3,
        help="test passes for the median queries/s (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--max-history",
        type=int,
        default=50,
        help="items of history each model reads (default: %(default)s)",
    )
    p.add_argument("--tiger-steps", type=int, help="cap TIGER's optimizer steps (default: none)")
    p.add_argument(
        "--model-config",
        action="append",
        default=[],
        metavar="MODEL=JSON",
        help="model fields, e.g. mmgrec='{\"dim\": 128}' (repeatable)",
    )
    p.add_argument(
        "--graph-quantizer",
        choices=GRAPH_QUANTIZERS,
        default=GRAPH_QUANTIZERS[0],
        help="MMGRec's index (the second: the stand-in of results before graph_rqvae landed)",
    )
    p.add_argument(
        "--max-epochs",
        type=int,
        default=BUDGETS["sasrec"]["train"]["max_epochs"],
        help="epoch cap of sasrec, mmgrec and tiger, which early-stop on valid NDCG@10 "
        "(default: %(default)s)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("runs/bench-recommend"),
        help="run directories (not committed)",
    )
    p.add_argument(
        "--resume",
        action="store_true",
        help="reuse the indexes under --work and resume each model from its last checkpoint",
    )
    p.add_argument(
        "--checkpoint-every",
        type=int,
        default=10**6,
        metavar="STEPS",
        help="also checkpoint every STEPS optimizer steps, for --resume within an epoch "
        "(default: only at each epoch's end)",
    )
    p.add_argument(
        "--out",
        type=Path,
        help="results stem: STEM.json and STEM.md (default: benchmarks/results/recommend; "
        "--aggregate needs it given)",
    )
    p.add_argument(
        "--render", type=Path, help="only rewrite the Markdown of an existing results JSON"
    )
    p.add_argument(
        "--aggregate",
        type=Path,
        nargs="+",
        help="only write medians over these results JSONs to --out (given, so that no committed "
        "table is replaced by accident)",
    )
    return p


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build indexes, train and test every model, write JSON and Markdown under benchmarks/results/."""
    p = _parser()
    args = p.parse_args(argv)
    if args.aggregate and args.out is None:
        p.error("--aggregate writes its medians to --out; give it (e.g. --out /tmp/medians)")
    args.out = args.out or RESULTS / "recommend"
    if args.aggregate:
        results = [json.loads(f.read_text()) for f in args.aggregate]
        seeds = [r["seed"] for r in results]
        if len(set(seeds)) < len(seeds):  # medians "over seeds" of one seed twice
            print(f"note: the results are of seeds {seeds}: a seed given twice counts twice in "
                  "the medians", file=sys.stderr)  # fmt: skip
        text = aggregate(results, [f.name for f in args.aggregate], command_line("recommend", argv))
        with atomic_file(args.out.with_suffix(".md")) as f:
            f.write(text)
        print(text)
        print(f"wrote {args.out.with_suffix('.md')}")
        return {}
    if args.render is not None:
        result = json.loads(args.render.read_text())
        with atomic_file(args.render.with_suffix(".md")) as f:
            f.write(markdown(result))
        print(f"wrote {args.render.with_suffix('.md')}")
        return result
    _set_budgets(args, p)
    env = environment(threads=args.threads, argv=argv)
    try:
        folders = work_folders(args.datasets)
    except SemidError as e:
        p.error(str(e))
    jobs, index_seconds = _indexes_and_jobs(args, folders)
    results = _run_jobs(jobs, args.jobs)
    rows = [
        r
        for j, r in zip(jobs, results, strict=True)
        if j["kind"] == "train_and_test" and "error" not in r
    ]
    cold = [
        r for j, r in zip(jobs, results, strict=True) if j["kind"] == "cold" and "error" not in r
    ]
    errors = [r for r in results if "error" in r]
    result = {"environment": env, "jobs": args.jobs, "seed": args.seed, "max_history": args.max_history,
              "index_seconds": index_seconds, "budgets": BUDGETS,
              "graph_quantizer": args.graph_quantizer,
              "rows": rows, "comparisons": comparisons(rows), "cold_start": cold, "errors": errors}  # fmt: skip
    write_result(args.out.with_suffix(""), result, markdown(result))
    return result


def _set_budgets(args: argparse.Namespace, p: argparse.ArgumentParser) -> None:
    """Apply --tiger-steps, --max-epochs and --model-config to `BUDGETS`."""
    BUDGETS["tiger"]["train"]["max_steps"] = args.tiger_steps
    for name in ("sasrec", "mmgrec", "tiger"):
        BUDGETS[name]["train"]["max_epochs"] = args.max_epochs
    for item in args.model_config:
        name, _, text = item.partition("=")
        if name not in BUDGETS:
            p.error(f"--model-config {item!r}: unknown model {name!r}; use MODEL=JSON")
        BUDGETS[name]["model"] = parse_json_object(text, "--model-config")


def _indexes_and_jobs(args: argparse.Namespace,
                      folders: dict[str, str]) -> tuple[list[dict[str, Any]], dict[str, Any]]:  # fmt: skip
    """Build (or, with --resume, reuse) each dataset's indexes; the train-and-test and cold-start
    jobs to run, and the seconds each index took."""
    jobs, index_seconds = [], {}
    for ds in args.datasets:
        dataset = load_dataset(ds)
        work = args.work / folders[ds]
        for kind in sorted({INDEX_OF[m] for m in args.models}):
            index = work / f"index-{kind}"
            if args.resume and index_exists(index):
                index_seconds[f"{ds}/{kind}"] = "reused"
                continue
            seconds = build_index(
                dataset, index, args.seed, kind == "graph", graph_quantizer=args.graph_quantizer
            )
            index_seconds[f"{ds}/{kind}"] = round(seconds, 1)
        for m in args.models:
            index = work / f"index-{INDEX_OF[m]}"
            jobs.append(
                {
                    "kind": "train_and_test",
                    "dataset": ds,
                    "model": m,
                    "index": str(index),
                    "run": str(work / m),
                    "seed": args.seed,
                    "max_history": args.max_history,
                    "reps": args.reps,
                    "checkpoint_every": args.checkpoint_every,
                    "resume": args.resume,
                    "threads": args.threads,
                }
            )
        for m in args.cold_start:
            jobs.append(
                {
                    "kind": "cold",
                    "dataset": ds,
                    "model": m,
                    "graph": INDEX_OF[m] == "graph",
                    "run": str(work / f"cold-{m}"),
                    "seed": args.seed,
                    "max_history": args.max_history,
                    "cold_frac": args.cold_frac,
                    "graph_quantizer": args.graph_quantizer,
                    "checkpoint_every": args.checkpoint_every,
                    "resume": args.resume,
                    "threads": args.threads,
                }
            )
    return jobs, index_seconds


def _safe(job: dict[str, Any]) -> dict[str, Any]:
    """Run one job; a failure is recorded (and shown) instead of losing the other jobs' results."""
    try:
        return {"train_and_test": train_and_test, "cold": cold_start}[job["kind"]](job)
    except Exception as e:  # noqa: BLE001  (any failure of one model must not sink the table)
        import traceback

        traceback.print_exc()
        return {
            "dataset": job["dataset"],
            "model": job["model"],
            "error": f"{type(e).__name__}: {e}",
        }


def _run_jobs(jobs: list[dict[str, Any]], workers: int) -> list[dict[str, Any]]:
    if workers <= 1:
        return [_safe(j) for j in jobs]
    # TIGER is the longest job: start it first so the side-by-side jobs end at about the same time
    order = sorted(range(len(jobs)), key=lambda i: jobs[i]["model"] != "tiger")
    with ProcessPoolExecutor(max_workers=workers) as pool:
        futures = {i: pool.submit(_safe, jobs[i]) for i in order}
        return [futures[i].result() for i in range(len(jobs))]


if __name__ == "__main__":
    main()
