"""`semid predict`: top-k answers from a trained run, for users, histories or queries.

Output is JSON Lines with ``--out`` (one line per input: ``{"input", "keys", "scores", "ids"}``,
best first; a ``--queries`` line or row with an id gives its input an ``"id"``) and a readable table
otherwise."""

from __future__ import annotations

import argparse
import difflib
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semid import notes
from semid.answer_texts import check_texts, with_texts
from semid.atomic import check_output_file, is_stream, output_file
from semid.cli.common import add_device_argument
from semid.cli.table import format_table, shorten_to_width
from semid.data.documents import QUERY_FIELDS, QUERY_ID_FIELDS
from semid.data.tables import (
    USER_COLUMNS,
    RowPlace,
    column_name,
    find_column,
    key_strings,
    matching_columns,
    read_table,
    table_format,
)
from semid.data.text_files import read_lines
from semid.defaults import DEFAULT_K
from semid.errors import SemidError
from semid.json_values import is_key
from semid.manifest import check_out_of_run, read_manifest
from semid.progress import progress_bar
from semid.wording import counted, json_kind, short_answers_note

EXAMPLE = (
    "semid predict runs/ml-100k/mmgrec --user 42 --k 10\n"
    "  semid predict runs/ml-100k/mmgrec --history '50,181,1' --k 5   # a user the run has never seen\n"
    '  semid predict runs/mine/mmgrec --history "Sixth Sense, The (1999)" "Fargo (1996)"\n'
    "  semid predict runs/ml-100k/mmgrec --histories new_users.jsonl --out preds.jsonl\n"
    "  semid predict runs/ml-100k/mmgrec --users all --out preds.jsonl\n"
    "  semid predict runs/docs --query 'fast image viewer' --k 10\n"
    "  semid predict runs/docs --queries questions.txt --out answers.jsonl"
)


def add_arguments(p: argparse.ArgumentParser) -> None:
    """Arguments of `semid predict`."""
    p.add_argument("run_dir", type=Path, metavar="RUN", help="run directory from `semid train ...`")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--user", action="append",
                     help="recommenders: a user id of the run's data (repeat for several)")  # fmt: skip
    src.add_argument("--users", help="recommenders: a file of user ids, one a line, JSON Lines with "
                     "'user', or a CSV, TSV or Parquet table with a 'user' column; or 'all'")  # fmt: skip
    src.add_argument(
        "--history",
        nargs="+",
        metavar="KEY",
        help="recommenders: a new user's item keys, oldest first: one argument each, or one "
        "argument of comma-separated keys or a JSON list",
    )
    src.add_argument(
        "--histories",
        type=Path,
        help="recommenders: a file of new users' histories, one a line, each as --history takes it "
        "or JSON Lines with 'history'",
    )
    src.add_argument(
        "--query", action="append", help="retrievers: a query text (repeat for several)"
    )
    src.add_argument(
        "--queries",
        type=Path,
        help="retrievers: a file of queries, one a line, JSON Lines with 'query', or a CSV, TSV or "
        "Parquet table with a 'query' column",
    )
    p.add_argument(
        "--k",
        type=int,
        help=f"answers per input (default: {DEFAULT_K}, or the catalogue's size when smaller)",
    )
    p.add_argument(
        "--num-beams", type=int, help="beams for generators (default: the run's; always >= k)"
    )
    p.add_argument(
        "--batch-size", type=int, default=64, help="inputs per search (default: %(default)s)"
    )
    p.add_argument("--out", type=_out_path,
                   help="write JSON Lines here (-: to standard output) instead of printing a table")  # fmt: skip
    p.add_argument(
        "--texts",
        action="store_true",
        help="with --out: give each answer its items', documents' or images' texts too (\"texts\")",
    )
    add_device_argument(p)  # fmt: skip


def check_input_flag(args: argparse.Namespace, task: str) -> None:
    """SemidError naming the input flag if it does not suit the run's task."""
    user_flags = [
        f for f in ("user", "users", "history", "histories") if getattr(args, f) is not None
    ]
    query_flags = [f for f in ("query", "queries") if getattr(args, f) is not None]
    if task == "recommend" and query_flags:
        raise SemidError(f"--{query_flags[0]} is for retrieval runs; {args.run_dir} is a recommend run "
                         "(pass --user, --users, --history or --histories)")  # fmt: skip
    if task != "recommend" and user_flags:
        raise SemidError(f"--{user_flags[0]} is for recommendation runs; {args.run_dir} is a {task} run "
                         "(pass --query or --queries)")  # fmt: skip


ID_FIELDS = ("id",)  # the id a user or history input carries to its answer (tasks.base.INPUT_ID)
USER_OPTIONS = ("split",)  # a users table's column answered as "split" (at that split's target)


@dataclass(frozen=True)
class Origin:
    """Where an input comes from: ``where`` names a file line (None: the command line itself);
    ``hint``: what to add to an error about it (a history read as comma-separated keys may have
    cut a key with a comma; line 1 of a users file may be a header)."""

    where: str | RowPlace | None = None
    hint: str = ""


TEXT_WIDTH = 60  # terminal columns of an item's text in the answers table
INPUT_WIDTH = 200  # terminal columns of an input shown above its answers (a long query or history)
HEADER_HINT = " (a header line? write user ids only, one a line)"
COMMA_HINT = (
    " (a key with a comma? write the history as a JSON list: "
    '\'["Sixth Sense, The (1999)", "Fargo (1996)"]\')'
)


def read_inputs(
    args: argparse.Namespace, predictor: Any
) -> tuple[list[dict[str, Any]], list[Origin]]:
    """The inputs the command line names, as the predictor's input dicts, and where each one comes
    from (``--users FILE line N``)."""
    if args.user is not None:
        return [{"user": u} for u in args.user], [Origin()] * len(args.user)
    if args.history is not None and len(args.history) > 1:  # one key per argument, as given
        return [{"history": args.history}], [Origin()]
    if args.history is not None:
        keys, split = parse_history(args.history[0], "--history")
        return [{"history": keys}], [Origin(hint=COMMA_HINT if split else "")]
    if args.query is not None:
        return [{"query": q} for q in args.query], [Origin()] * len(args.query)
    if args.users == "all":
        if not hasattr(predictor, "user_keys"):
            raise SemidError("--users all is for recommendation runs")
        return [{"user": u} for u in predictor.user_keys], [Origin()] * len(predictor.user_keys)
    if args.users is not None:
        path, flag = Path(args.users), "--users"
        rows = _input_table(path, flag, "user", USER_COLUMNS, ID_FIELDS, USER_OPTIONS)
        if rows is not None:
            return [_with_id(item, key) for _, item, key in rows], [
                Origin(RowPlace(path, row, f"{flag} {path} ")) for row, _, _ in rows
            ]
        lines = _numbered_lines(path, flag)
        if table_format(path) == "jsonl":
            parsed = [(_user_record(line, f"{flag} {path} line {number}"), "")
                      for number, line in lines]  # fmt: skip
        else:
            parsed = [
                ({"user": line}, HEADER_HINT if number == 1 else "") for number, line in lines
            ]
    elif args.histories is not None:
        path, flag = args.histories, "--histories"
        lines = _numbered_lines(path, flag)
        parsed = [_history_line(line, f"{flag} {path} line {number}") for number, line in lines]
    else:
        path, flag = args.queries, "--queries"
        rows = _input_table(path, flag, "query", QUERY_FIELDS, QUERY_ID_FIELDS)
        if rows is not None:
            return [_with_id(item, key) for _, item, key in rows], [
                Origin(RowPlace(path, row, f"{flag} {path} ")) for row, _, _ in rows
            ]
        lines = _numbered_lines(path, flag)
        json_lines = table_format(path) == "jsonl"  # every line an object, not only those with "{"
        parsed = [(_query_line(line, f"{flag} {path} line {number}", json_lines), "")
                  for number, line in lines]  # fmt: skip
    origins = [Origin(f"{flag} {path} line {number}", hint)
               for (number, _), (_, hint) in zip(lines, parsed, strict=True)]  # fmt: skip
    return [item for item, _ in parsed], origins


def parse_history(text: str, where: str) -> tuple[list[str], bool]:
    """Item keys of one history, and whether they were split at commas: a JSON list of keys
    (``["a, b", "c"]``: keys may hold commas), or comma-separated keys otherwise; SemidError naming
    ``where`` if the JSON list is malformed."""
    if not text.lstrip().startswith("["):
        keys = [key.strip() for key in text.split(",") if key.strip()]
        return keys, len(keys) > 1
    try:
        keys = json.loads(text)
    except json.JSONDecodeError as e:
        raise SemidError(f"{where} is not a valid JSON list ({e.msg}); "
                         'write it as ["key 1", "key 2"]') from None  # fmt: skip
    if not isinstance(keys, list) or not all(is_key(k) for k in keys):
        raise SemidError(f'{where} must be a JSON list of item keys, such as ["key 1", "key 2"]')
    return [str(k) for k in keys], False


def _history_line(line: str, where: str) -> tuple[dict[str, Any], str]:
    """One ``--histories`` line: keys as ``--history`` takes them, or ``{"history": [...]}``."""
    record: dict[str, Any] = {}
    if line.startswith("{"):  # its other fields ("id") are kept for the predictor to check
        record = _json_object(line, "history", where)
        history = _field_of(record, "history", where)
        if not isinstance(history, str | list):  # 5 or null would read as the key "5" or "null"
            raise SemidError(
                f'{where}: "history" must be a list of item keys, got {json.dumps(history)[:60]}'
            )
        line = history if isinstance(history, str) else json.dumps(history)
    keys, split = parse_history(line, where)
    return _with_id({**record, "history": keys}, _line_id(record, ID_FIELDS, where)), (
        COMMA_HINT if split else ""
    )


def check_inputs(predictor: Any, inputs: list[dict[str, Any]], origins: list[Origin]) -> None:
    """Check every input before the first search, so a bad line late in a long file costs no work
    and is named by its line."""
    for item, origin in zip(inputs, origins, strict=True):
        try:
            predictor.check_input(item)
        except SemidError as e:
            message = f"{e}{origin.hint}"
            raise SemidError(f"{origin.where}: {message}" if origin.where else message) from None


def _numbered_lines(path: Path, flag: str) -> list[tuple[int, str]]:
    """The non-blank lines of an input file, stripped, with their line numbers (from 1); a note
    names the blank lines among them, which get no answer (``--out`` has fewer lines)."""
    lines = [(n, line.strip()) for n, line in enumerate(read_lines(path, flag), 1) if line.strip()]
    if not lines:
        raise SemidError(f"{flag} {path} is empty; write one entry a line")
    numbered = {n for n, _ in lines}
    blank = [n for n in range(1, lines[-1][0]) if n not in numbered]
    if blank:
        notes.note(f"{flag} {path}: {counted(len(blank), 'blank line')} skipped (line {blank[0]}"
                   f"{', ...' if len(blank) > 1 else ''}); each other line gets an answer, in "
                   "order")  # fmt: skip
    return lines


def _input_table(
    path: Path,
    flag: str,
    field: str,
    names: tuple[str, ...],
    id_names: tuple[str, ...] = (),
    options: tuple[str, ...] = (),
) -> list[tuple[int, dict[str, Any], str | None]] | None:
    """(row number from 0, input, id) per row of a table of inputs: Parquet, or a CSV/TSV whose header
    names the ``field`` column (any of ``names``), with the row's id when a column is named as one
    of ``id_names`` (else None) and the non-empty cells of the columns named as ``options`` (a
    user's "split") in its input; None for a file of one input a line (a one-column CSV without
    that header, said on stderr: its first line is an input too). A CSV of several columns
    without one is refused."""
    fmt = table_format(path)
    if fmt not in ("csv", "tsv", "parquet"):
        return None
    if fmt != "parquet" and not path.name.lower().endswith(".gz"):
        first = next((line for line in read_lines(path, flag) if line.strip()), "")
        fields = re.split(r"[,;\t|]", first)
        if not matching_columns([c.strip(' "') for c in fields], names):
            if len(fields) > 1:
                raise SemidError(f'{flag} {path} has no "{field}" column (line 1: {first.strip()[:60]!r}); '
                                 f'name that column "{field}" (or, for one {field} a line, use a .txt file)')  # fmt: skip
            notes.note(f'{flag} {path} has no "{field}" header; each line is one {field}, '
                       f"line 1 ({first.strip()[:40]!r}) too")  # fmt: skip
            return None
    table = read_table(path, f"{flag} file")
    column = find_column(table, field, names, path, f"{flag} file", columns_option=False)
    values = key_strings(table[column], path, field, texts=True)
    _refuse_list_cells(values, column, path, flag, field)
    id_column = next(iter(matching_columns(table.column_names, id_names)), None)
    ids = key_strings(table[id_column], path, "id") if id_column else [None] * len(values)
    inputs: list[dict[str, Any]] = [{field: str(v)} for v in values]
    _note_misspelt_columns(
        table.column_names, (*id_names, *options), (column, id_column), path, flag
    )
    for option in options:  # a blank cell: not given for that row
        for column in matching_columns(table.column_names, (option,))[:1]:
            for item, cell in zip(inputs, table[column].to_pylist(), strict=True):
                if cell is not None and str(cell).strip():
                    item[option] = str(cell).strip()
    return [(i, item, key) for i, (item, key) in enumerate(zip(inputs, ids, strict=True))]


def _refuse_list_cells(values: list[str], column: str, path: Path, flag: str, field: str) -> None:
    """SemidError for a cell that holds a JSON list (a documents file's ``"queries"``, written
    as a table): it would be answered as one text, brackets and quotes included."""
    for row, value in enumerate(values):
        text = value.strip()
        if not (text.startswith("[") and text.endswith("]")):
            continue
        try:
            listed = json.loads(text)
        except ValueError:
            continue
        if isinstance(listed, list):
            raise SemidError(f'{flag} {path} row {row + 1}: the "{column}" cell holds a list '
                             f"({text[:40]!r}); give one {field} a row, in a column named "
                             f'"{field}"')  # fmt: skip


def _note_misspelt_columns(
    headers: list[str], names: tuple[str, ...], used: tuple[str | None, ...], path: Path, flag: str
) -> None:
    """A note for each column of a table of inputs that is not read but is named much like a
    column that would be (``"splt"`` for ``"split"``): tables carry other columns, which are
    ignored, so a typo would pass unseen. Names of under 4 letters are left out: ``"id"`` is
    much like ``"uid"``, ``"pid"`` and other columns of their own."""
    names = tuple(name for name in names if len(name) >= 4)
    for header in headers:
        if header in used or matching_columns([header], names):
            continue
        near = difflib.get_close_matches(column_name(header).lower(), names, n=1, cutoff=0.75)
        if near:
            notes.note(f'{flag} {path}: column "{header}" is not read; name it "{near[0]}" if it '
                       f"is meant as one")  # fmt: skip


def _query_line(line: str, where: str, json_lines: bool) -> dict[str, Any]:
    """One ``--queries`` line as an input: a line of text, or a JSON object with "query" (or
    "text", as BEIR's queries.jsonl names it) and perhaps an id (`QUERY_ID_FIELDS`)."""
    if not (json_lines or line.startswith("{")):
        return {"query": line}
    record = _json_object(line, "query", where)
    if "query" not in record and "queries" in record:  # a documents file's line, not a query's
        raise SemidError(f'{where} has "queries" (as a documents file has), not "query"; give one '
                         '{"query": TEXT} a line')  # fmt: skip
    query = _field_of(record, "query", where, alias="text")
    # other fields (BEIR's "metadata", a "title") are not the run's to check: left out
    return _with_id({"query": query}, _line_id(record, QUERY_ID_FIELDS, where))


def _line_id(record: dict[str, Any], names: tuple[str, ...], where: str) -> str | int | None:
    """The id a JSON Lines object gives its input (its first field named as one of ``names``
    that holds a string or an integer), or None when it has no such field; SemidError naming
    ``where`` if it has some, none of them a string or an integer."""
    given = [n for n in names if n in record]
    key = next((record[n] for n in given if is_key(record[n])), None)
    if given and key is None:
        raise SemidError(f'{where}: "{given[0]}" must be a string or an integer, got '
                         f"{json.dumps(record[given[0]])[:40]}")  # fmt: skip
    return key


def _with_id(item: dict[str, Any], key: str | int | None) -> dict[str, Any]:
    """The input with the id its file gives it (as a string), echoed in its answer's "input"."""
    return item if key is None else {**item, "id": str(key)}


def _user_record(line: str, where: str) -> dict[str, Any]:
    """A ``--users`` JSON Lines line as an input: its user id (a string, or an integer read as its
    digits) with the line's other fields (``"split"``, ``"id"``), which the predictor checks."""
    record = _json_object(line, "user", where)
    user = _field_of(record, "user", where)
    if not is_key(user):
        raise SemidError(
            f'{where}: "user" must be a user id (a string or an integer), got {json.dumps(user)[:40]}'
        )
    return _with_id({**record, "user": str(user)}, _line_id(record, ID_FIELDS, where))


def _json_object(line: str, name: str, where: str) -> dict[str, Any]:
    """A JSON Lines line as an object; SemidError naming ``where`` (and the ``name`` field it
    should hold) if it is not one."""
    try:
        item = json.loads(line)
    except json.JSONDecodeError as e:
        raise SemidError(f"{where} is not valid JSON ({e.msg})") from None
    if not isinstance(item, dict):
        raise SemidError(f'{where} is {json_kind(item)}, not a JSON object with a "{name}" field')
    return item


def _field_of(item: dict[str, Any], name: str, where: str, alias: str | None = None) -> Any:
    """Field ``name`` (else ``alias``) of a line's object; SemidError naming ``where`` if absent."""
    if name not in item and alias in item:
        return item[alias]
    if name not in item:
        raise SemidError(f'{where} has no "{name}" field' + (f' (nor "{alias}")' if alias else ""))
    return item[name]


def _out_path(value: str) -> Path:
    """``--out``'s file; ``-`` is standard output, as for many commands."""
    return Path("/dev/fd/1") if value == "-" else Path(value)


def run(args: argparse.Namespace) -> int:
    """Load the run once, answer every input in batches, print or write the answers."""
    if args.batch_size < 1:
        raise SemidError(f"--batch-size must be >= 1, got {args.batch_size}")
    if args.out is not None:
        check_output_file(args.out)
    read_manifest(args.run_dir)  # a wrong RUN is told before the task layer (torch) loads
    if args.out is not None:
        check_out_of_run(args.out, args.run_dir)
    from semid.tasks import load_predictor

    predictor = load_predictor(args.run_dir, args.device)
    check_input_flag(args, predictor.task)
    if (unsearched := predictor.unsearched_note()) is not None:
        notes.note(unsearched)
    inputs, origins = read_inputs(args, predictor)
    if args.k is None:
        args.k = predictor.default_k()
    predictor.check_k(args.k, args.num_beams, names=("--k", "--num-beams"))
    check_inputs(predictor, inputs, origins)  # reads users' histories (and so the data) first
    if args.texts:
        check_texts(predictor, "--texts")
        if args.out is None:  # the table shows the texts already
            notes.note(
                "--texts adds texts to --out's JSON lines; the table below shows them anyway"
            )
    answers = []
    for lo in progress_bar(range(0, len(inputs), args.batch_size), desc="predict",
                   disable=len(inputs) <= args.batch_size):  # fmt: skip
        answers += predictor.predict(inputs[lo : lo + args.batch_size], args.k, args.num_beams)
    note_short_answers(answers, args.k, predictor.max_k(), predictor.task)
    if args.out is not None:
        if args.texts:
            answers = with_texts(predictor, answers)
        with output_file(args.out, "w") as f:
            f.writelines(json.dumps(a, ensure_ascii=False) + "\n" for a in answers)
        if not is_stream(args.out):  # /dev/stdout: the answers alone, for the next command
            print(f"wrote {counted(len(answers), 'answer')} to {args.out}")
        return 0
    print_answers(answers, predictor)
    return 0


def note_short_answers(answers: list[dict[str, Any]], k: int, catalogue: int, task: str) -> None:
    """A note on stderr when some inputs got fewer than ``k`` answers (:func:`short_answers_note`)."""
    note = short_answers_note(answers, k, catalogue, task, "--num-beams")
    if note is not None:
        notes.note(note)


def print_answers(answers: list[dict[str, Any]], predictor: Any) -> None:
    """Each input (and its answer's note), then a table of its answers: rank, key, score, semantic
    ID, and the item's text (shortened) when the run's data has item texts."""
    for answer, texts in zip(answers, _item_texts(answers, predictor), strict=True):
        shown = json.dumps(answer["input"], ensure_ascii=False)  # in full in --out and serve
        print(shorten_to_width(shown, INPUT_WIDTH))
        if "note" in answer:  # how the input was read (history items a sasrec run leaves out)
            print(f"note: {answer['note']}")
        rows = [[i + 1, key, score, "-".join(map(str, code))]
                for i, (key, score, code) in enumerate(zip(answer["keys"], answer["scores"], answer["ids"], strict=True))]  # fmt: skip
        headers = ["rank", "key", "score", "semantic ID"]
        if texts is not None:
            headers.append("text")
            for row, text in zip(rows, texts, strict=True):
                row.append(shorten_to_width(" ".join(text.split()), TEXT_WIDTH))
        print(format_table(headers, rows))


def _item_texts(answers: list[dict[str, Any]], predictor: Any) -> list[list[str] | None]:
    """The texts of each answer's items, or None per answer when the run has none or they cannot
    be read (an items file moved away: a one-line note says so)."""
    try:
        return [predictor.item_texts(a["keys"]) for a in answers]
    except SemidError as e:
        notes.note(f"answers shown without item texts: {e}")
        return [None] * len(answers)
