"""The CLI's defaults on a collection they were not tuned on, run the way a new user runs them.

A slice of a MovieLens dataset (by default the last 1,200 users of ml-1m; the defaults were chosen on
ml-100k) is written out as plain files, ``interactions.csv`` (user,item,timestamp) and ``items.csv``
(item,title,genres, every movie, interacted with or not), and each seed runs the README's commands
for own data, each in a fresh process from the work folder:

    semid index build --dataset interactions.csv --items items.csv --seed S --out runs/sS/index
    semid index build ... --quantizer graph_rqvae:3x256 --collisions popularity --out runs/sS/index-graph
    semid train recommender ... --index runs/sS/index --model sasrec|mmgrec --seed S --out runs/sS/MODEL
    semid train recommender ... --index runs/sS/index-graph --model mmgrec --seed S --out runs/sS/mmgrec-graph
    semid eval runs/sS/RUN --split test

Every model trains with the CLI's defaults (early stopping on valid NDCG@10). A step whose output is
already there is not run again (``semid train`` resumes an interrupted run by itself). The table
gives test Recall@10 / NDCG@10 per seed, medians, and each generator against SASRec-CE of the same
seed. Seeds run side by side (``--jobs``), one torch thread each.

    python -m benchmarks.new_collection --seeds 0 1 2 --jobs 2

``--last-events N`` keeps each user's last N events, a log of short histories such as Amazon's
review logs (``--users 6040 --last-events 8``: every ml-1m user). ``--keep-share P`` keeps each
event with probability P, then only users and items with at least 5 events (5-core, as Amazon's
logs): a sparse log whose histories skip most of what each user watched (``--users 6040
--keep-share 0.1``).
"""

from __future__ import annotations

import argparse
import csv
import os
import random
import statistics
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

from benchmarks.results_files import command_line, cpu_description, write_result
from semid.atomic import atomic_file
from semid.cli import console_script
from semid.data import load_dataset
from semid.runs import read_metrics, read_run_config
from semid.saving import versions

RESULTS = Path(__file__).parent / "results"
GENRES = ". Genres: "  # how the MovieLens loaders join a title and its genres
# run name -> (index folder, model)
RUNS = {
    "sasrec": ("index", "sasrec"),
    "mmgrec": ("index", "mmgrec"),
    "mmgrec-graph": ("index-graph", "mmgrec"),
}
TESTED = "tested"  # marks an eval step: done when the run's metrics.json has the test split
INDEXES = {
    "index": [],
    "index-graph": ["--quantizer", "graph_rqvae:3x256", "--collisions", "popularity"],
}


CORE = 5  # a thinned log keeps users and items with at least this many events
THINNING_SEED = 0  # the collection is the same for every run seed


def write_collection(source: str, users: int, work: Path, last_events: int | None = None,
                     keep_share: float | None = None) -> dict[str, int]:  # fmt: skip
    """The last ``users`` users of ``source`` (each with its last ``last_events`` events, by time,
    when given; each event kept with probability ``keep_share``, then 5-core, when given) as
    interactions.csv and every item as items.csv."""
    data = load_dataset(source)
    log = data.interactions
    first = log.num_users - users
    kept = [(u, i, t) for u, i, t in zip(log.users.tolist(), log.items.tolist(), log.timestamps.tolist(),
                                         strict=True) if u >= first]  # fmt: skip
    if last_events is not None:
        kept = last_events_of_each_user(kept, last_events)
    if keep_share is not None:
        kept = k_core(thinned(kept, keep_share, THINNING_SEED), CORE)
    with atomic_file(work / "interactions.csv") as f:
        out = csv.writer(f)
        out.writerow(["user", "item", "timestamp"])
        out.writerows((f"user-{u}", f"m{i}", int(t)) for u, i, t in kept)
    with atomic_file(work / "items.csv") as f:
        out = csv.writer(f)
        out.writerow(["item", "title", "genres"])
        for i, text in enumerate(data.item_texts):
            title, _, genres = text.partition(GENRES)
            out.writerow([f"m{i}", title, genres])
    return {"users": users, "interactions": len(kept), "items": len({i for _, i, _ in kept}),
            "catalogue": len(data.item_texts), "last_events": last_events, "keep_share": keep_share,
            "kept_users": len({u for u, _, _ in kept})}  # fmt: skip


def last_events_of_each_user(
    events: list[tuple[int, int, float]], n: int
) -> list[tuple[int, int, float]]:
    """Each user's last ``n`` (user, item, time) events by time (ties: log order), in log order."""
    by_user: dict[int, list[int]] = {}
    for row, (user, _, _) in enumerate(events):
        by_user.setdefault(user, []).append(row)
    keep = {r for rows in by_user.values() for r in sorted(rows, key=lambda r: events[r][2])[-n:]}
    return [e for r, e in enumerate(events) if r in keep]


def thinned(
    events: list[tuple[int, int, float]], share: float, seed: int
) -> list[tuple[int, int, float]]:
    """Each event kept with probability ``share`` (a seeded draw per event), in log order."""
    rng = random.Random(seed)
    return [e for e in events if rng.random() < share]


def k_core(events: list[tuple[int, int, float]], k: int) -> list[tuple[int, int, float]]:
    """The events left once users and items with fewer than ``k`` events are dropped, repeatedly,
    until every user and item left has at least ``k``."""
    while True:
        users = Counter(u for u, _, _ in events)
        items = Counter(i for _, i, _ in events)
        kept = [e for e in events if users[e[0]] >= k and items[e[1]] >= k]
        if len(kept) == len(events):
            return kept
        events = kept


def run_seed(work: Path, seed: int, epochs: int | None = None) -> None:
    """The README's commands for one seed, each in a fresh process from ``work``; done steps
    skipped. ``epochs``: cap training (a quick check, not the defaults' figures)."""
    runs, logs = Path("runs") / f"s{seed}", work / "logs"
    logs.mkdir(exist_ok=True)
    data = ["--dataset", "interactions.csv", "--items", "items.csv"]
    steps = []
    cap = [] if epochs is None else ["--epochs", str(epochs)]
    for index, extra in INDEXES.items():
        out = runs / index
        steps.append((out / "config.json", f"s{seed}-build-{index}",
                      ["index", "build", *data, "--seed", str(seed), *extra, "--out", str(out)]))  # fmt: skip
    for name, (index, model) in RUNS.items():
        out = runs / name
        steps.append((out / "config.json", f"s{seed}-train-{name}",
                      ["train", "recommender", *data, "--index", str(runs / index), "--model", model,
                       "--seed", str(seed), *cap, "--out", str(out)]))  # fmt: skip
        steps.append((out / TESTED, f"s{seed}-eval-{name}", ["eval", str(out), "--split", "test"]))
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    for done, log, args in steps:
        if is_done(work / done):
            continue
        print(f"[seed {seed}] semid {' '.join(args)}", flush=True)
        with open(logs / f"{log}.log", "w") as f:
            code = subprocess.run(
                [console_script(), *args], cwd=work, env=env, stdout=f, stderr=subprocess.STDOUT
            ).returncode
        if code:
            raise SystemExit(
                f"semid {args[0]} failed for seed {seed} (exit {code}); see {logs / log}.log"
            )


def is_done(path: Path) -> bool:
    """Whether a step's output is there: a file, or for ``RUN/TESTED`` the run's test metrics
    (`semid train` writes metrics.json with the valid split only)."""
    if path.name == TESTED:
        return "test" in read_metrics(path.parent)
    return path.is_file()


def collect(work: Path, seeds: list[int]) -> dict[str, dict[int, dict[str, float]]]:
    """Test metrics and epochs of every run: {run: {seed: {...}}}."""
    found: dict[str, dict[int, dict[str, float]]] = {}
    for name in RUNS:
        for seed in seeds:
            run = work / "runs" / f"s{seed}" / name
            test = read_metrics(run)["test"]
            result = read_run_config(run)["state"]["result"]
            found.setdefault(name, {})[seed] = {**test, "epochs": result["epochs"],
                                                "best_step": result["best_step"]}  # fmt: skip
    return found


def markdown(result: dict) -> str:
    """The results table with the command and the collection."""
    runs, seeds = result["runs"], result["seeds"]
    c = result["collection"]
    lines = [
        "# The CLI's defaults on a new collection",
        "",
        f"Command: `{result['command']}`  ",
        f"Date: {result['date_utc']} UTC; {result['machine']}; torch {result['versions'].get('torch')}.  ",
        f"Collection: the last {c['users']:,} users of {result['source']}"
        + (f", each with its last {c['last_events']} events" if c.get("last_events") else "")
        + (
            f", each event kept with probability {c['keep_share']}, then {CORE}-core "
            f"({c['kept_users']:,} users left)"
            if c.get("keep_share")
            else ""
        )
        + f" ({c['interactions']:,} interactions, "
        f"{c['items']:,} of the {c['catalogue']:,} movies interacted with), written as interactions.csv and "
        "items.csv and run through the CLI as the README's own-data section shows (commands in "
        "`benchmarks/new_collection.py`). Test split, leave-one-out, all items ranked.",
        "",
        "| run | IDs | test R@10 per seed | median R@10 | median N@10 | R@10 / SASRec-CE per seed | median ratio | epochs (best step) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for name in RUNS:
        per = [runs[name][s] for s in seeds]
        ratios = [  # None: SASRec-CE found no target (a tiny --epochs check)
            r["recall@10"] / base if (base := runs["sasrec"][s]["recall@10"]) else None
            for r, s in zip(per, seeds, strict=True)
        ]
        known = [x for x in ratios if x is not None]
        ids = {"sasrec": "none used", "mmgrec": "auto (rqkmeans)"}.get(name, "graph_rqvae:3x256")
        cells = [
            name,
            ids,
            ", ".join(f"{r['recall@10']:.4f}" for r in per),
            f"{statistics.median(r['recall@10'] for r in per):.4f}",
            f"{statistics.median(r['ndcg@10'] for r in per):.4f}",
            ", ".join("-" if x is None else f"{x:.3f}" for x in ratios),
            f"{statistics.median(known):.3f}" if known else "-",
            ", ".join(f"{r['epochs']} ({r['best_step']})" for r in per),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    """Write the collection, run every seed's commands, tabulate."""
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--source", default="ml-1m", help="MovieLens dataset to slice (default: %(default)s)"
    )
    p.add_argument(
        "--users", type=int, default=1200, help="its last users kept (default: %(default)s)"
    )
    p.add_argument(
        "--last-events",
        type=int,
        default=None,
        help="keep each user's last N events: short histories, as in Amazon's 5-core logs",
    )
    p.add_argument(
        "--keep-share",
        type=float,
        default=None,
        help="keep each event with this probability, then 5-core: a sparse log",
    )
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument(
        "--jobs", type=int, default=2, help="seeds run side by side (default: %(default)s)"
    )
    p.add_argument(
        "--work", type=Path, help="files and runs, not committed (default: runs/new-collection)"
    )
    p.add_argument(
        "--epochs",
        type=int,
        help="cap each training at N epochs: a quick check that the commands run, whose figures "
        "are not the defaults' (default: the CLI's own, early stopping); needs its own --work "
        "and --out",
    )
    p.add_argument(
        "--out", type=Path, help="results stem (default: benchmarks/results/new-collection)"
    )
    args = p.parse_args(argv)
    if args.epochs is not None and (args.work is None or args.out is None):
        p.error("--epochs makes a quick check whose runs and figures are not the defaults': give "
                "it its own --work and --out (e.g. --work /tmp/nc --out /tmp/nc/result)")  # fmt: skip
    args.work = args.work or Path("runs/new-collection")
    args.out = args.out or RESULTS / "new-collection"
    args.work.mkdir(parents=True, exist_ok=True)
    if args.keep_share is not None and not 0 < args.keep_share <= 1:
        p.error("--keep-share must be in (0, 1]")
    collection = write_collection(
        args.source, args.users, args.work, args.last_events, args.keep_share
    )
    if collection["interactions"] == 0:
        p.error(
            f"--keep-share {args.keep_share} leaves no user and item with {CORE} events; raise it"
        )
    with ThreadPoolExecutor(max_workers=args.jobs) as pool:
        list(pool.map(lambda s: run_seed(args.work, s, args.epochs), args.seeds))
    result = {
        "command": command_line("new_collection", argv),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu_description()}, 1 torch thread per run",
        "versions": versions(),
        "source": args.source,
        "collection": collection,
        "seeds": args.seeds,
        "runs": collect(args.work, args.seeds),
    }
    write_result(args.out.with_suffix(""), result, markdown(result))


if __name__ == "__main__":
    main()
