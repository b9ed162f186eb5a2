"""Sequential recommendation on MovieLens: pop, SASRec-CE, TIGER and MMGRec in one harness, one split.

Protocol (docs/protocols.md): leave-one-out by timestamp (stable sort), histories of <= 50 items, full
ranking over all items, Recall@5/10 and NDCG@5/10 on the test targets; generators take their top-10
from trie-constrained beam search with 20 beams. Models are selected on valid NDCG@10 (early stopping).

Also measures the cold-start rate: the newest ``--cold-frac`` of items (by first interaction) are
removed from the data and the index, the generator is trained without them, the items are then added
with ``semid index add`` logic (saved quantizer, no retraining), and we report Recall@10 on the test
users whose target is one of those new items (pop and SASRec cannot recommend them at all: 0).

Run: python -m benchmarks.recommend --datasets ml-100k --jobs 3
(each model trains in its own process with 1 torch thread; ``--jobs`` run side by side).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import platform
import statistics
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch

import semid.quantizers  # noqa: F401  (registers the quantizers)
from semid.atomic import atomic_file, write_json
from semid.configs import parse_json_object
from semid.data import load_dataset
from semid.data.registry import register_dataset
from semid.data.splits import leave_one_out
from semid.encoders import TextEncoder
from semid.indexing import add_items, build_ids
from semid.runs import load_run
from semid.saving import versions
from semid.tasks import EvalOptions, get_task
from semid.tasks.recommend import RecommendSpec, evaluate_ranker, rank_split
from semid.training import TrainConfig

RESULTS = Path(__file__).parent / "results"
RECBOLE_SASREC_R10 = {
    "ml-100k": 0.1220,
    "ml-1m": 0.1856,
}  # docs/baselines.md, RecBole 1.2.1 on this machine
QUANTIZER = "rqkmeans:3x256"
# MMGRec's index: Graph RQ-VAE, or (results before it landed) rqkmeans over graph-smoothed features
GRAPH_QUANTIZERS = ("graph_rqvae:3x256", "smoothed-rqkmeans:3x256")
COLD_SHARES = (0.0, 0.1, 0.2)  # top-10 slots open to new items under a generated prefix (TIGER)
INDEX_OF = {
    "mmgrec": "graph",
    "tiger": "text",
    "sasrec": "text",
    "pop": "text",
}  # IDs do not matter to pop/sasrec

# Training budgets that fit 2 shared CPU cores. Sequence models (sasrec, mmgrec) train on every
# position of each window at once; TIGER needs one encoder pass per target, so it gets a step cap.
BUDGETS: dict[str, dict[str, Any]] = {
    "sasrec": {
        "train": {"max_epochs": 30, "batch_size": 64, "lr": 1e-3, "early_stopping_patience": 5}
    },
    "mmgrec": {
        "train": {"max_epochs": 30, "batch_size": 64, "lr": 1e-3, "early_stopping_patience": 5}
    },
    "tiger": {"train": {"max_epochs": 1, "max_steps": 300, "batch_size": 128, "lr": 1e-3}},
    "pop": {"train": {}},
}


def graph_features(x: torch.Tensor, train: Any) -> torch.Tensor:
    """Item features smoothed over the user-item graph of the train interactions (N, D), L2-normalized.

    mean of x, A x and A^2 x with A the symmetric-normalized item-user-item propagation (LightGCN
    style): a stand-in for ``graph_rqvae`` (MMGRec's Graph RQ-VAE) until that quantizer lands. Items
    without interactions keep their own features."""
    n_users, n_items = train.num_users, train.num_items
    r = torch.sparse_coo_tensor(
        torch.stack([train.users, train.items]), torch.ones(len(train)), (n_users, n_items)
    )
    r = r.coalesce()
    du = torch.bincount(train.users, minlength=n_users).clamp(min=1).float().sqrt()[:, None]
    di = torch.bincount(train.items, minlength=n_items).clamp(min=1).float().sqrt()[:, None]

    def propagate(h: torch.Tensor) -> torch.Tensor:
        users = torch.sparse.mm(r, h / di) / du
        return torch.sparse.mm(r.t(), users / du) / di

    unit = torch.nn.functional.normalize
    h1 = propagate(x)
    return unit(unit(x, dim=1) + unit(h1, dim=1) + unit(propagate(h1), dim=1), dim=1)


def build_index(
    dataset: Any,
    out: Path,
    seed: int = 0,
    graph: bool = False,
    x: torch.Tensor | None = None,
    graph_quantizer: str = GRAPH_QUANTIZERS[0],
) -> float:
    """Embed item texts (cached), fit the quantizer, make IDs unique, save; returns seconds.

    ``graph``: MMGRec's recipe, ``graph_quantizer`` over the train user-item graph and popularity
    collisions; otherwise TIGER's, rqkmeans on text embeddings and an extra disambiguation level
    numbering collisions."""
    started = time.perf_counter()
    if x is None:  # (N, D) text embeddings of dataset.item_texts
        x = TextEncoder().encode(dataset.item_texts, show_progress=False)
    train = leave_one_out(dataset.interactions).train  # valid/test targets must not shape the IDs
    spec = graph_quantizer if graph else QUANTIZER
    fit_kwargs: dict[str, Any] = {}
    if spec == GRAPH_QUANTIZERS[0]:
        fit_kwargs["interactions"] = train
    else:
        if graph:
            x = graph_features(x, train)
        spec = QUANTIZER
    popularity = torch.bincount(train.items, minlength=len(dataset.item_keys))
    strategy = "popularity" if graph else "extra-level"
    ids, q = build_ids(list(dataset.item_keys), x, spec, strategy, seed, popularity=popularity,
                       **fit_kwargs)  # fmt: skip
    ids.save(out, quantizer=q)
    return time.perf_counter() - started


def spec_for(name: str, dataset: str, seed: int) -> RecommendSpec:
    """The benchmark's spec of one model: its budget on top of TrainConfig's defaults."""
    train = TrainConfig(**{**BUDGETS[name]["train"], "seed": seed, "checkpoint_every": 10**6})
    return RecommendSpec(dataset=dataset, model=name, model_config=BUDGETS[name].get("model", {}),
                         train=train)  # fmt: skip


def train_and_test(job: dict[str, Any]) -> dict[str, Any]:
    """One model on one dataset: train (early stopping on valid), then test metrics and median queries/s."""
    torch.set_num_threads(1)
    task = get_task("recommend")
    name, run = job["model"], Path(job["run"])
    summary = task.train(spec_for(name, job["dataset"], job["seed"]), run, Path(job["index"]), resume=False)
    loaded = load_run(run)
    reps = [task.evaluate(loaded, EvalOptions(split="test")) for _ in range(job["reps"])]
    metrics = reps[0]  # deterministic: every repetition ranks the same
    metrics["queries_per_s"] = statistics.median(r["queries_per_s"] for r in reps)
    return {"dataset": job["dataset"], "model": name, **metrics, **_train_summary(summary)}


def _train_summary(summary: dict[str, Any]) -> dict[str, Any]:
    return {k: summary.get(k) for k in ("train_seconds", "epochs", "steps", "best_step")}


def cold_start(job: dict[str, Any]) -> dict[str, Any]:
    """Train a generator without the newest items, add them with the saved quantizer, test on them."""
    torch.set_num_threads(1)
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
    build_index(
        old, work / "old-index", job["seed"], job["graph"], x_full[keep], job["graph_quantizer"]
    )
    name = job["model"]
    spec = spec_for(name, held_out, job["seed"])
    summary = task.train(spec, work / "run", work / "old-index", resume=False)
    keys = [full.item_keys[i] for i in new.tolist()]
    # new items have no interactions: graph smoothing leaves them their own (normalized) text vectors
    loaded = load_run(work / "run")
    add_items(loaded.index_path, keys, x_full[new], loaded.model)
    loaded = load_run(work / "run")
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


def newest_items(log: Any, frac: float) -> torch.Tensor:
    """Item ids (M,) whose first interaction is the latest: the last ``frac`` of items to appear."""
    first = torch.full((log.num_items,), torch.iinfo(torch.long).max, dtype=torch.long)
    first = first.scatter_reduce(0, log.items, log.timestamps, reduce="amin")
    order = torch.sort(first, stable=True).indices
    return order[len(order) - max(1, int(frac * log.num_items)) :]


def without_items(dataset: Any, drop: torch.Tensor) -> Any:
    """A RecDataset without the items ``drop`` and their interactions (items renumbered)."""
    log = dataset.interactions
    keep_item = torch.ones(log.num_items, dtype=torch.bool)
    keep_item[drop] = False
    new_id = torch.cumsum(keep_item.long(), 0) - 1
    keep = keep_item[log.items]
    sliced = dataclasses.replace(
        log,
        users=log.users[keep],
        items=new_id[log.items[keep]],
        timestamps=log.timestamps[keep],
        num_items=int(keep_item.sum()),
    )
    kept = keep_item.nonzero().squeeze(1).tolist()
    if log.item_keys is not None:
        sliced = dataclasses.replace(sliced, item_keys=[log.item_keys[i] for i in kept])
    return dataclasses.replace(
        dataset,
        interactions=sliced,
        item_keys=[dataset.item_keys[i] for i in kept],
        item_texts=[dataset.item_texts[i] for i in kept],
    )


def environment(threads: int) -> dict[str, Any]:
    """Versions and machine, for the record."""
    return {
        **versions(),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPUs (shared; load average {os.getloadavg()[0]:.1f} at start)",
        "torch_threads_per_job": threads,
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "command": " ".join(["python -m benchmarks.recommend", *sys.argv[1:]]),
    }


def markdown(result: dict[str, Any]) -> str:
    """The results as Markdown tables with provenance."""
    env = result["environment"]
    lines = [
        "# Sequential recommendation (MovieLens, leave-one-out, full ranking)",
        "",
        f"Command: `{env['command']}`  ",
        f"Date: {env['date_utc']}; machine: {env['machine']}; semid {env['semid']}, torch {env['torch']}, "
        f"transformers {env['transformers']}, Python {env['python']}; {env['torch_threads_per_job']} torch thread per job, "
        f"{result['jobs']} jobs side by side.  ",
        f"Indexes: {QUANTIZER} on MiniLM text embeddings with extra-level collisions (tiger; TIGER's recipe) and "
        + (
            "graph_rqvae:3x256 over the same embeddings and the train user-item graph"
            if result.get("graph_quantizer", GRAPH_QUANTIZERS[1]) == GRAPH_QUANTIZERS[0]
            else f"{QUANTIZER} on the same embeddings smoothed over the train user-item graph (a stand-in for graph_rqvae)"
        )
        + f" with popularity collisions (mmgrec; MMGRec's recipe); seed {result['seed']}; generators: 20 beams, "
        "trie-constrained, trie softmax. "
        "Budgets: "
        + "; ".join(
            f"{m}: {b['train']}" for m, b in result.get("budgets", BUDGETS).items() if b["train"]
        )
        + ".",
        "",
        "| dataset | model | R@5 | R@10 | N@5 | N@10 | invalid IDs | train s | epochs (steps) | queries/s |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in result["rows"]:
        lines.append(
            f"| {r['dataset']} | {r['model']} | {r['recall@5']:.4f} | {r['recall@10']:.4f} | {r['ndcg@5']:.4f} | "
            f"{r['ndcg@10']:.4f} | {r['invalid_id_rate']:.3f} | {r['train_seconds']:.0f} | {r['epochs']} ({r['steps']}) | "
            f"{r['queries_per_s']:.0f} |"
        )
    lines += [
        "",
        "| dataset | best generator | R@10 / SASRec-CE (same run) | R@10 / RecBole SASRec-CE | target (>= 1.10 and > RecBole) |",
        "|---|---|---|---|---|",
    ]
    for c in result["comparisons"]:
        lines.append(
            f"| {c['dataset']} | {c['best_generator']} | {c['vs_sasrec']:.3f} | {c['vs_recbole']:.3f} | {'met' if c['target_met'] else 'not met'} |"
        )
    if result.get("cold_start"):
        lines += ["", "Cold start (new items added with the saved quantizer, no retraining; 'cold share': top-10 "
                  "slots open to new items whose ID extends a generated prefix, TIGER's epsilon):", "",
                  "| dataset | model | new items | test users with a new target | cold share | cold R@10 | cold N@10 | new items' share of all top-10 slots | overall R@10 |",
                  "|---|---|---|---|---|---|---|---|---|"]  # fmt: skip
        for c in result["cold_start"]:
            for r in c["by_cold_share"]:
                lines.append(
                    f"| {c['dataset']} | {c['model']} | {c['new_items']} | {c['new_item_test_users']} | {r['cold_share']:.1f} | "
                    f"{r['cold_recall@10']:.4f} | {r['cold_ndcg@10']:.4f} | {r['share_of_new_items_in_top10']:.4f} | "
                    f"{r['overall_recall@10']:.4f} |"
                )
        lines.append(
            "\nPop and SASRec-CE score only items seen in training: their cold R@10 is 0 by construction."
        )
    lines += [
        "",
        "Notes: one seed per model (training is the cost on this CPU); one standard error of R@10 is about 0.01 "
        "on ml-100k (943 test users) and 0.005 on ml-1m (6,040), so smaller differences are noise. "
        "Like RecBole's full-sort evaluation, every model ranks all items except those the user interacted with "
        "before the target (generators: beam search drops every prefix whose IDs are all seen), so the RecBole "
        "column compares like with like. TIGER trains on one target per encoder pass, so its step budget covers "
        "only a fraction of the epochs the sequence models get.",
    ]
    for e in result.get("errors", []):
        lines.append(f"\nFAILED: {e['dataset']} {e['model']}: {e['error']}")
    return "\n".join(lines) + "\n"


def aggregate(results: list[dict[str, Any]]) -> str:
    """Markdown: per-seed test metrics of each (dataset, model) over several result files, with medians."""
    lines = [
        "# Sequential recommendation: medians over seeds",
        "",
        "Files: "
        + ", ".join(f"seed {r['seed']} ({r['environment']['date_utc']})" for r in results)
        + ". "
        "Same harness and budgets as recommend.md; per-seed values in brackets.",
        "",
        "| dataset | model | R@5 | R@10 | N@5 | N@10 | R@10 / SASRec-CE (per seed) |",
        "|---|---|---|---|---|---|---|",
    ]
    keys = sorted({(row["dataset"], row["model"]) for r in results for row in r["rows"]})
    for ds, model in keys:
        rows = [
            row
            for r in results
            for row in r["rows"]
            if (row["dataset"], row["model"]) == (ds, model)
        ]
        sas = [
            row
            for r in results
            for row in r["rows"]
            if (row["dataset"], row["model"]) == (ds, "sasrec")
        ]
        cells = []
        for m in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
            values = [row[m] for row in rows]
            cells.append(
                f"{statistics.median(values):.4f} [{', '.join(f'{v:.4f}' for v in values)}]"
            )
        ratio = "-"
        if len(sas) == len(rows):
            ratios = [a["recall@10"] / b["recall@10"] for a, b in zip(rows, sas, strict=True)]
            ratio = f"{statistics.median(ratios):.3f} [{', '.join(f'{v:.3f}' for v in ratios)}]"
        lines.append(f"| {ds} | {model} | " + " | ".join(cells) + f" | {ratio} |")
    return "\n".join(lines) + "\n"


def comparisons(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Best generator vs same-run SASRec and vs the RecBole figure, per dataset."""
    out = []
    for ds in sorted({r["dataset"] for r in rows}):
        by = {r["model"]: r for r in rows if r["dataset"] == ds}
        gens = [r for m, r in by.items() if m not in ("pop", "sasrec")]
        if not gens or "sasrec" not in by:
            continue
        best = max(gens, key=lambda r: r["recall@10"])
        vs_sas = best["recall@10"] / max(by["sasrec"]["recall@10"], 1e-12)
        vs_rb = best["recall@10"] / RECBOLE_SASREC_R10.get(ds, float("nan"))
        out.append(
            {
                "dataset": ds,
                "best_generator": best["model"],
                "vs_sasrec": vs_sas,
                "vs_recbole": vs_rb,
                "target_met": vs_sas >= 1.10 and vs_rb > 1.0,
            }
        )
    return out


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Build indexes, train and test every model, write JSON and Markdown under benchmarks/results/."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--datasets", nargs="+", default=["ml-100k"])
    p.add_argument("--models", nargs="*", default=["pop", "sasrec", "mmgrec", "tiger"])
    p.add_argument(
        "--cold-start",
        nargs="*",
        default=["mmgrec"],
        help="generators to run the cold-start experiment with",
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
        "--reps",
        type=int,
        default=3,
        help="test passes for the median queries/s (default: %(default)s)",
    )
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--tiger-steps", type=int, default=BUDGETS["tiger"]["train"]["max_steps"])
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
        help="epoch cap of sasrec and mmgrec, which early-stop on valid NDCG@10 (default: %(default)s)",
    )
    p.add_argument(
        "--work",
        type=Path,
        default=Path("runs/bench-recommend"),
        help="run directories (not committed)",
    )
    p.add_argument("--out", type=Path, default=RESULTS / "recommend")
    p.add_argument(
        "--render", type=Path, help="only rewrite the Markdown of an existing results JSON"
    )
    p.add_argument(
        "--aggregate",
        type=Path,
        nargs="+",
        help="only write medians over these results JSONs to --out",
    )
    args = p.parse_args(argv)
    if args.aggregate:
        text = aggregate([json.loads(f.read_text()) for f in args.aggregate])
        with atomic_file(args.out.with_suffix(".md")) as f:
            f.write(text)
        print(text)
        return {}
    if args.render is not None:
        result = json.loads(args.render.read_text())
        with atomic_file(args.render.with_suffix(".md")) as f:
            f.write(markdown(result))
        return result
    BUDGETS["tiger"]["train"]["max_steps"] = args.tiger_steps
    for name in ("sasrec", "mmgrec"):
        BUDGETS[name]["train"]["max_epochs"] = args.max_epochs
    for item in args.model_config:
        name, _, text = item.partition("=")
        if name not in BUDGETS:
            p.error(f"--model-config {item!r}: unknown model {name!r}; use MODEL=JSON")
        BUDGETS[name]["model"] = parse_json_object(text, "--model-config")

    env = environment(threads=1)
    jobs, index_seconds = [], {}
    for ds in args.datasets:
        dataset = load_dataset(ds)
        for kind in ("text", "graph"):
            index = args.work / ds / f"index-{kind}"
            seconds = build_index(
                dataset, index, args.seed, kind == "graph", graph_quantizer=args.graph_quantizer
            )
            index_seconds[f"{ds}/{kind}"] = round(seconds, 1)
        for m in args.models:
            index = args.work / ds / f"index-{INDEX_OF[m]}"
            jobs.append(
                {
                    "kind": "train_and_test",
                    "dataset": ds,
                    "model": m,
                    "index": str(index),
                    "run": str(args.work / ds / m),
                    "seed": args.seed,
                    "reps": args.reps,
                }
            )
        for m in args.cold_start:
            jobs.append(
                {
                    "kind": "cold",
                    "dataset": ds,
                    "model": m,
                    "graph": INDEX_OF[m] == "graph",
                    "run": str(args.work / ds / f"cold-{m}"),
                    "seed": args.seed,
                    "cold_frac": args.cold_frac,
                    "graph_quantizer": args.graph_quantizer,
                }
            )
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
    result = {"environment": env, "jobs": args.jobs, "seed": args.seed, "index_seconds": index_seconds, "budgets": BUDGETS,
              "graph_quantizer": args.graph_quantizer,
              "rows": rows, "comparisons": comparisons(rows), "cold_start": cold, "errors": errors}  # fmt: skip
    write_json(args.out.with_suffix(".json"), result)
    with atomic_file(args.out.with_suffix(".md")) as f:
        f.write(markdown(result))
    print(markdown(result))
    return result


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
