"""`semid predict`: top-k answers from a trained run, for users, histories or queries.

Output is JSON Lines with ``--out`` (one line per input: ``{"input", "keys", "scores", "ids"}``,
best first) and a readable table otherwise."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from semid.atomic import atomic_file, check_writable
from semid.cli.common import add_device_argument
from semid.cli.table import format_table
from semid.data.text_files import read_lines
from semid.errors import SemidError
from semid.progress import progress_bar
from semid.tasks import load_predictor

EXAMPLE = (
    "semid predict runs/ml-100k/mmgrec --user 42 --k 10\n"
    "  semid predict runs/ml-100k/mmgrec --history '50,181,1' --k 5   # a user the run has never seen\n"
    "  semid predict runs/ml-100k/mmgrec --users all --out preds.jsonl\n"
    "  semid predict runs/docs --query 'fast image viewer' --k 10\n"
    "  semid predict runs/docs --queries questions.txt --out answers.jsonl"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid predict`."""
    p.add_argument("run_dir", type=Path, metavar="RUN", help="run directory from `semid train ...`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--user", help="recommenders: a user id of the run's data")
    src.add_argument("--users", help="recommenders: a file of user ids (one a line), or 'all'")
    src.add_argument(
        "--history", help="recommenders: comma-separated item keys, oldest first (a new user)"
    )
    src.add_argument("--query", help="retrievers: one query text")
    src.add_argument(
        "--queries",
        type=Path,
        help="retrievers: a file of queries, one a line, or JSON Lines with 'query'",
    )
    p.add_argument("--k", type=int, default=10, help="answers per input (default: %(default)s)")
    p.add_argument(
        "--num-beams", type=int, help="beams for generators (default: the run's; always >= k)"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="inputs per search (default: %(default)s)"
    )
    p.add_argument("--out", type=Path, help="write JSON Lines here instead of printing a table")
    add_device_argument(p)  # fmt: skip


def check_input_flag(args: argparse.Namespace, task: str) -> None:
    """SemidError naming the input flag if it does not suit the run's task."""
    user_flags = [f for f in ("user", "users", "history") if getattr(args, f) is not None]
    query_flags = [f for f in ("query", "queries") if getattr(args, f) is not None]
    if task == "recommend" and query_flags:
        raise SemidError(f"--{query_flags[0]} is for retrieval runs; {args.run_dir} is a recommend run "
                         "(pass --user, --users or --history)")  # fmt: skip
    if task != "recommend" and user_flags:
        raise SemidError(f"--{user_flags[0]} is for recommendation runs; {args.run_dir} is a {task} run "
                         "(pass --query or --queries)")  # fmt: skip


def read_inputs(
    args: argparse.Namespace, predictor: Any
) -> tuple[list[dict[str, Any]], list[str | None]]:
    """The inputs the command line names, as the predictor's input dicts, and where each one comes
    from (``--users FILE line N``; None for an input given on the command line itself)."""
    if args.user is not None:
        return [{"user": args.user}], [None]
    if args.history is not None:
        return [{"history": [h.strip() for h in args.history.split(",") if h.strip()]}], [None]
    if args.query is not None:
        return [{"query": args.query}], [None]
    if args.users == "all":
        if not hasattr(predictor, "user_keys"):
            raise SemidError("--users all is for recommendation runs")
        return [{"user": u} for u in predictor.user_keys], [None] * len(predictor.user_keys)
    if args.users is not None:
        path, flag = Path(args.users), "--users"
        lines = _numbered_lines(path, flag)
        inputs = [{"user": line} for _, line in lines]
    else:
        path, flag = args.queries, "--queries"
        lines = _numbered_lines(path, flag)
        inputs = [_query_line(line, path, number) for number, line in lines]
    return inputs, [f"{flag} {path} line {number}" for number, _ in lines]


def check_inputs(predictor: Any, inputs: list[dict[str, Any]], sources: list[str | None]) -> None:
    """Check every input before the first search, so a bad line late in a long file costs no work
    and is named by its line."""
    for item, source in zip(inputs, sources, strict=True):
        try:
            predictor.check_input(item)
        except SemidError as e:
            raise SemidError(f"{source}: {e}" if source else str(e)) from None


def _numbered_lines(path: Path, flag: str) -> list[tuple[int, str]]:
    """The non-blank lines of an input file, stripped, with their line numbers (from 1)."""
    lines = [(n, line.strip()) for n, line in enumerate(read_lines(path, flag), 1) if line.strip()]
    if not lines:
        raise SemidError(f"{flag} {path} is empty; write one entry a line")
    return lines


def _query_line(line: str, path: Path, number: int) -> dict[str, Any]:
    if not line.startswith("{"):
        return {"query": line}
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise SemidError(f"{path} line {number} is not valid JSON ({e.msg})") from None
    if not isinstance(item, dict) or "query" not in item:
        raise SemidError(f'{path} line {number} has no "query" field')
    return {"query": item["query"]}


def run(args: argparse.Namespace) -> int:
    """Load the run once, answer every input in batches, print or write the answers."""
    if args.batch_size < 1:
        raise SemidError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out is not None:
        check_writable(args.out)
    predictor = load_predictor(args.run_dir, args.device)
    check_input_flag(args, predictor.task)
    inputs, sources = read_inputs(args, predictor)
    predictor.check_k(args.k, args.num_beams)
    check_inputs(predictor, inputs, sources)
    answers = []
    for lo in progress_bar(range(0, len(inputs), args.batch_size), desc="predict",
                   disable=len(inputs) <= args.batch_size):  # fmt: skip
        answers += predictor.predict(inputs[lo : lo + args.batch_size], args.k, args.num_beams)
    if args.out is not None:
        with atomic_file(args.out, "w") as f:
            f.writelines(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
        print(f"wrote {len(answers):,} answers to {args.out}")
        return 0
    for answer in answers:
        print(json.dumps(answer["input"], ensure_ascii=False))
        rows = [[i + 1, key, score, "-".join(map(str, code))]
                for i, (key, score, code) in enumerate(zip(answer["keys"], answer["scores"], answer["ids"], strict=True))]  # fmt: skip
        print(format_table(["rank", "key", "score", "semantic ID"], rows))
    return 0
