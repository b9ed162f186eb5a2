"""A corpus without queries: PromptDSI trained on sentences of its documents (pseudo-queries)
against the same documents trained with their real queries, scored on the same real test queries.

A seeded sample of a registered collection (debian-docs or manpages: each document has real
queries) is written out as two documents files of the same documents:

- ``with-queries.jsonl``: 80% of the documents give their queries (training), the other 20% give
  them as ``test_queries`` (the test split; nothing else is tested);
- ``pseudo.jsonl``: the same, without any training queries (ids and texts, and the test
  documents' ``test_queries``): the run trains on up to 3 sentences of each document.

Each file runs the README's commands in fresh processes from the work folder (every document
indexed, ``--hold-out 0``, so all test queries are scored):

    semid train retriever --dataset FILE --model promptdsi --hold-out 0 --seed S --out runs/NAME
    semid eval runs/NAME --k 1 10

BM25 over the same documents is scored on the same queries. A step whose output is there is not
run again.

    python -m benchmarks.pseudo_queries --dataset debian-docs --docs 2000
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import torch

from benchmarks.results_files import command_line, cpu_description, write_result
from benchmarks.text_baselines import BM25
from semid.atomic import atomic_file
from semid.cli import console_script
from semid.data import load_dataset
from semid.metrics import mrr_at_k, recall_at_k
from semid.runs import read_metrics
from semid.saving import versions

RESULTS = Path(__file__).parent / "results"
RUNS = {"with-queries": "with-queries.jsonl", "pseudo": "pseudo.jsonl"}
TEST_SHARE = 0.2


def write_files(dataset: str, docs: int, seed: int, work: Path) -> list[tuple[str, str]]:
    """The two documents files in ``work``; returns the (test query, document id) pairs."""
    documents = load_dataset(dataset).documents
    rows = random.Random(seed).sample(range(len(documents)), min(docs, len(documents)))
    n_test = round(len(rows) * TEST_SHARE)
    tests: list[tuple[str, str]] = []
    with (
        atomic_file(work / RUNS["with-queries"]) as real,
        atomic_file(work / RUNS["pseudo"]) as pseudo,
    ):
        for i, row in enumerate(rows):
            d = documents[row]
            record = {"id": d.id, "text": d.text}
            if i < n_test:
                record["test_queries"] = list(d.queries)
                tests += [(q, d.id) for q in d.queries]
                real.write(json.dumps(record) + "\n")
                pseudo.write(json.dumps(record) + "\n")
            else:
                real.write(json.dumps(record | {"queries": list(d.queries)}) + "\n")
                pseudo.write(json.dumps(record) + "\n")
    return tests


def run_cli(argv: list[str], work: Path, log: Path) -> None:
    """One `semid` command in a fresh process from ``work``, its output appended to ``log``; the
    command and the log are named on the console, and a failure shows the log's last lines."""
    line = f"semid {' '.join(argv)}"
    print(f"$ {line}   (in {work}; output in {log})", flush=True)
    started = len(log.read_text()) if log.is_file() else 0
    with open(log, "a") as out:
        out.write(f"$ {line}\n")
        out.flush()
        done = subprocess.run([console_script(), *argv], cwd=work, stdout=out,
                              stderr=subprocess.STDOUT, env=os.environ)  # fmt: skip
    if done.returncode != 0:
        tail = log.read_text()[started:].splitlines()[-15:]
        sys.exit(f"`{line}` failed (exit {done.returncode}); the end of {log}:\n" + "\n".join(tail))


def bm25_scores(work: Path, tests: list[tuple[str, str]]) -> dict[str, float]:
    """BM25 over every document of the files, on the test queries (one relevant document each)."""
    records = [json.loads(line) for line in (work / RUNS["pseudo"]).open()]
    ids = [r["id"] for r in records]
    ranked = BM25([r["text"] for r in records]).search([q for q, _ in tests], 10)
    rel = ranked == torch.tensor([ids.index(d) for _, d in tests])[:, None]
    return {"recall@1": recall_at_k(rel, 1).mean().item(), "recall@10": recall_at_k(rel, 10).mean().item(),
            "mrr@10": mrr_at_k(rel, 10).mean().item()}  # fmt: skip


def main(argv: list[str] | None = None) -> int:
    """Write the files, train and evaluate both runs, write the table."""
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--dataset", default="debian-docs", choices=["debian-docs", "manpages"])
    p.add_argument("--docs", type=int, default=2000)
    p.add_argument("--seed", type=int, default=0, help="the sample's and the runs' seed")
    p.add_argument("--work", type=Path, default=Path("runs/pseudo-queries"))
    p.add_argument(
        "--out", type=Path, help="results stem (default: benchmarks/results/pseudo-queries-DATASET)"
    )
    args = p.parse_args(argv)
    started = {
        "command": command_line("pseudo_queries", argv),
        "date_utc": datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M"),
        "machine": f"{cpu_description()} (shared; load average {os.getloadavg()[0]:.1f} at start)",
        "versions": versions(),
    }
    work = args.work.resolve() / f"{args.dataset}-{args.docs}-s{args.seed}"
    work.mkdir(parents=True, exist_ok=True)
    tests = write_files(args.dataset, args.docs, args.seed, work)
    rows = {"BM25": bm25_scores(work, tests)}
    for name, file in RUNS.items():
        run = work / "runs" / name
        if not (run / "manifest.json").is_file():
            run_cli(["train", "retriever", "--dataset", file, "--model", "promptdsi", "--hold-out", "0",
                     "--seed", str(args.seed), "--out", str(run.relative_to(work))], work, work / "log.txt")  # fmt: skip
        if "test" not in read_metrics(run):
            run_cli(["eval", str(run.relative_to(work)), "--k", "1", "10"], work, work / "log.txt")
        test = read_metrics(run)["test"]
        rows[f"PromptDSI, {name}"] = {
            m: test[f"d0-test/{m}"] for m in ("recall@1", "recall@10", "mrr@10")
        }
    stem = args.out or RESULTS / f"pseudo-queries-{args.dataset}"
    lines = [f"# A corpus without queries: {args.dataset}, {args.docs} documents, seed {args.seed}", "",
             f"Command: `{started['command']}`  ",
             f"Date: {started['date_utc']} UTC; machine: {started['machine']}; "
             + ", ".join(f"{k} {v}" for k, v in started["versions"].items()), "",
             f"{len(tests)} real test queries of the {TEST_SHARE:.0%} test documents; every document indexed.", "",
             "| method | R@1 | R@10 | MRR@10 |", "|---|---|---|---|"]  # fmt: skip
    lines += [
        f"| {name} | {r['recall@1']:.4f} | {r['recall@10']:.4f} | {r['mrr@10']:.4f} |"
        for name, r in rows.items()
    ]
    result = {
        **started,
        "args": {k: str(v) for k, v in vars(args).items()},
        "test_queries": len(tests),
        "rows": rows,
    }
    write_result(stem.with_suffix(""), result, "\n".join(lines) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
