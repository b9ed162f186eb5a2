"""Plain table files (CSV, TSV, Parquet, JSON Lines; each optionally gzipped) read with pyarrow.

The format follows the extension (``.csv``, ``.tsv``, ``.parquet``, ``.jsonl``, with ``.gz`` after
any of them; RecBole's ``.inter`` and ``.item`` are TSV). CSV and TSV cells are read as text, never
type-guessed, so ids such as ``007`` stay as written; TSV has no quoting (RecBole files hold bare
quotes in titles). JSON Lines and Parquet keep their own types. Every failure is one SemidError line
naming the file and, where it can be known, the line.

Columns are found by role (``user``, ``item``, ...) through a list of accepted names, or by an
explicit mapping parsed from ``user=a,item=b`` (`parse_columns`). RecBole's typed headers
(``user_id:token``) match by their name part.
"""

from __future__ import annotations

import ast
import csv
import gzip
import hashlib
import json
import os
import re
import sys
import zlib
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from semid.atomic import file_sha256
from semid.data.text_files import lines_of, not_utf8
from semid.errors import SemidError
from semid.wording import counted, json_kind

# Extension (after removing a trailing .gz) -> format.
TABLE_FORMATS = {
    ".csv": "csv",
    ".tsv": "tsv",
    ".inter": "tsv",
    ".item": "tsv",
    ".parquet": "parquet",
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "jsonl",  # Amazon's review files are JSON Lines named .json (a JSON array is refused)
}
ACCEPTED = ", ".join([*TABLE_FORMATS, "each optionally followed by .gz"])
LINE_FORMATS = ("csv", "tsv", "jsonl")  # formats of one row a line
RECBOLE_TYPES = ("token", "token_seq", "float", "float_seq")
# accepted names of the user column, in logs and in `semid predict --users` tables
# the names of public logs too: Amazon reviews (reviewerID), retail logs (customer_id, visitorid)
USER_COLUMNS = ("user", "user_id", "userId", "userid", "uid", "UserID", "reviewerID", "customer_id",
                "visitorid")  # fmt: skip


# line breaks (also U+0085, U+2028 and U+2029, which str.splitlines and terminals break at), tabs,
# NUL, ...: a key holding one breaks every table and file that lists keys one a line
CONTROL_CHARACTERS = "[\x00-\x1f\x7f-\x9f\u2028\u2029]"
KEY_RULE = "ids cannot hold line breaks, tabs or other control characters"


def check_key_characters(key: str, where: str, role: str) -> None:
    """SemidError, naming ``where`` (a file and its line or row) and the ``role`` of ``key`` ("item
    id"), when the key holds a control character (see `CONTROL_CHARACTERS`)."""
    found = re.search(CONTROL_CHARACTERS, key)
    if found is not None:
        raise SemidError(f"{where}: the {role} {key[:60]!r} holds a control character "
                         f"({found.group()!r}); {KEY_RULE}: remove it")  # fmt: skip


def file_stem(path: str | os.PathLike) -> str:
    """The file name without its extension and a trailing .gz: my_log.csv.gz -> my_log."""
    name = Path(path).name
    return Path(name[:-3] if name.lower().endswith(".gz") else name).stem


def table_format(path: str | os.PathLike) -> str | None:
    """'csv', 'tsv', 'parquet' or 'jsonl' from the file name (a trailing .gz is allowed), else None."""
    name = Path(path).name.lower()
    if name.endswith(".gz"):
        name = name[:-3]
    return TABLE_FORMATS.get(Path(name).suffix)


def read_table(path: str | os.PathLike, what: str) -> pa.Table:
    """Read a table file (format by extension); `what` names it in errors ("interactions file")."""
    path = Path(path)
    if path.is_dir():
        raise SemidError(f"{what} {path} is a folder; give the table file inside it ({ACCEPTED})")
    if not path.is_file():
        raise SemidError(f"{what} {path} not found; check the path")
    fmt = table_format(path)
    if fmt is None:
        raise SemidError(f"{what} {path}: unknown extension; use one of {ACCEPTED}")
    try:
        if fmt == "parquet":
            table = _read_parquet(path)
        elif fmt == "jsonl":
            table = _read_json_lines(path, what)
        else:
            table = _read_delimited(path, fmt)
    except (pa.ArrowInvalid, UnicodeDecodeError) as e:
        raise _explain(path, fmt, what, e) from None
    except (OSError, EOFError, zlib.error) as e:  # gzip or Parquet containers that do not decode
        raise SemidError(f"cannot read {what} {path}: {e}; check or regenerate the file") from None
    if table.num_rows == 0:
        names = table.column_names
        header = ", ".join(map(repr, names[:3])) + (", ..." if len(names) > 3 else "")
        if fmt in ("csv", "tsv") and names:
            raise SemidError(f"{what} {path} has no rows, only a header line ({header}); if that "
                             "line is data, add a header line naming the columns above it")  # fmt: skip
        raise SemidError(f"{what} {path} has no rows{f' (columns: {header})' if names else ''}")
    unnamed = [i for i, name in enumerate(table.column_names) if not name.strip()]
    if unnamed and len(unnamed) < table.num_columns:  # trailing commas: columns no reader names
        table = table.select([i for i in range(table.num_columns) if i not in unnamed])
    if fmt in ("csv", "tsv"):
        table = _without_joined_files_marks(table, path, what)
    return table


def _without_joined_files_marks(table: pa.Table, path: Path, what: str) -> pa.Table:
    """A delimited table without the byte-order marks that files joined end to end leave at the
    start of a line (they would join the first cell: a user ``\ufeffu10`` beside ``u10``);
    SemidError for a line that repeats the header, which such a join leaves as a row of data."""
    first = table.column(0)
    if pc.any(pc.starts_with(first, "\ufeff")).as_py():
        table = table.set_column(0, table.column_names[0], pc.utf8_ltrim(first, "\ufeff"))
    repeats = None
    for name, column in zip(table.column_names, table.columns, strict=True):
        same = pc.equal(column, name)
        repeats = same if repeats is None else pc.and_(repeats, same)
        if not pc.any(repeats).as_py():
            return table
    row = int(np.flatnonzero(pc.fill_null(repeats, False).to_numpy(zero_copy_only=False))[0])
    raise SemidError(f"{what} {path} {row_label(path, row)} repeats the header line (files "
                     "joined?); remove it")  # fmt: skip


def _read_json_lines(path: Path, what: str) -> pa.Table:
    try:
        table = pajson.read_json(_source(path))
    except pa.ArrowInvalid as e:
        literals = _python_dict_lines(path)
        if literals or "changed from" in str(e):
            return _read_json_rows(path, what, e, literals)
        raise
    table.validate(full=True)  # the JSON reader does not check UTF-8 in strings
    return table


def _python_dict_lines(path: Path) -> bool:
    """Whether the file's first line is a Python dict literal that is not JSON, as in Amazon's 2014
    product metadata (``{'asin': '0205616461', 'title': ...}``)."""
    first = _first_line(path)
    try:
        json.loads(first)
        return False
    except json.JSONDecodeError:
        try:
            return isinstance(ast.literal_eval(first.strip()), dict)
        except (ValueError, SyntaxError, MemoryError, RecursionError):
            return False


def _read_json_rows(path: Path, what: str, error: pa.ArrowInvalid, literals: bool) -> pa.Table:
    """JSON Lines that pyarrow's reader refuses, read row by row: fields that change kind from row
    to row (Amazon's metadata has descriptions that are a string in some rows and a list in
    others) become lists of text or text (`_typed_or_text`) when they cannot be one typed column
    (a key column of such fields is then refused), and lines of Python
    dict literals (Amazon's 2014 metadata: ``literals``, see `_python_dict_lines`) are read as
    such."""
    rows = []
    lines = lines_of(_raw_text(path).decode("utf-8").removeprefix("\ufeff"))
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError:
            if not literals:
                raise _explain(path, "jsonl", what, error) from None  # names the line
            try:
                row = ast.literal_eval(line.strip())
            except (ValueError, SyntaxError, MemoryError, RecursionError):
                raise SemidError(f"{what} {path} line {number} is neither JSON nor a Python dict "
                                 "literal; write one JSON object per line") from None  # fmt: skip
        if not isinstance(row, dict):
            raise _explain(path, "jsonl", what, error)
        rows.append(row)
    names = dict.fromkeys(name for row in rows for name in row)
    return pa.table({name: _typed_or_text([row.get(name) for row in rows]) for name in names})


def _typed_or_text(values: list) -> pa.Array:
    """A field's values as pyarrow types them; else, when each is a string or a list (a caption
    in one row, a list of captions in another), lists of text, a string as a list of one, so that
    a reader of lists keeps the items apart and a reader of text joins them (`plain_text`); else
    text."""
    try:
        return pa.array(values)
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    if all(v is None or isinstance(v, str | list) for v in values):
        lists = [None if v is None else [t for t in map(plain_text, v if isinstance(v, list) else [v]) if t]
                 for v in values]  # fmt: skip
        return pa.array(lists, pa.list_(pa.string()))
    return pa.array([None if v is None else plain_text(v) for v in values], pa.string())


def plain_text(value: object) -> str:
    """A cell as text: lists joined with ", " (empty parts left out), objects as "key: value"
    pairs, None as ""; other values as ``str`` gives them, stripped."""
    if value is None:
        return ""
    if isinstance(value, (list, tuple)):
        return ", ".join(text for text in map(plain_text, value) if text)
    if isinstance(value, dict):
        return ", ".join(f"{k}: {text}" for k, v in value.items() if (text := plain_text(v)))
    return str(value).strip()


GZIP_MAGIC = b"\x1f\x8b"  # the first bytes of a gzip file

# Separators a ``.csv`` export may use instead of commas (spreadsheets in many locales write ';').
OTHER_CSV_SEPARATORS = (";", "\t", "|")


def _read_delimited(path: Path, fmt: str, use_threads: bool = True) -> pa.Table:
    # quoted cells may hold line breaks (newlines_in_values: else blocks over 1 MB split inside
    # them); a .tsv is read unquoted, as MovieLens and RecBole files hold bare quotes in titles
    parse = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else _csv_delimiter(path),
                               quote_char=False if fmt == "tsv" else '"', newlines_in_values=True)  # fmt: skip
    read = pacsv.ReadOptions(use_threads=use_threads)
    # The header names every column; a first streaming pass reads just it, to type all as text.
    with pacsv.open_csv(_source(path), read_options=read, parse_options=parse) as reader:
        names = reader.schema.names
    convert = pacsv.ConvertOptions(column_types={n: pa.string() for n in names})
    return pacsv.read_csv(_source(path), read_options=read, parse_options=parse,
                          convert_options=convert)  # fmt: skip


def _read_parquet(path: Path) -> pa.Table:
    if path.name.lower().endswith(".gz"):  # Parquet needs random access: decompress to memory
        return pq.read_table(pa.BufferReader(gzip.decompress(path.read_bytes())))
    return pq.read_table(path)


def _explain(path: Path, fmt: str, what: str, error: Exception) -> SemidError:
    """One line for a pyarrow failure, with the line number where it can be found."""
    message = str(error).splitlines()[0] if str(error) else type(error).__name__
    if fmt != "parquet" and not path.name.lower().endswith(".gz"):
        with path.open("rb") as f:
            if f.read(2) == GZIP_MAGIC:  # compressed, named without .gz
                return SemidError(f"{what} {path} is gzip-compressed; name it {path.name}.gz")
    if "Empty CSV file" in message or "Empty JSON file" in message:
        return SemidError(f"{what} {path} is empty; it needs at least one row")
    if fmt == "parquet":
        return SemidError(f"{what} {path} is not a readable Parquet file ({message})")
    data = _raw_text(path)
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        return not_utf8(data, e, f"{what} {path}")
    if fmt == "jsonl":
        if text.lstrip("\ufeff \t\r\n").startswith("["):
            return SemidError(
                f"{what} {path} is a JSON array; write JSON Lines, one object per line"
            )
        for number, line in enumerate(lines_of(text), start=1):
            if line.strip():
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as e:
                    return SemidError(
                        f"{what} {path} line {number} is not valid JSON ({e.msg}); write one object per line"
                    )
                if not isinstance(obj, dict):
                    return SemidError(
                        f"{what} {path} line {number} is {json_kind(obj)}, not a JSON object"
                    )
        return SemidError(f"cannot read {what} {path}: {message}")
    if "CSV parse error" in message:
        # Threaded reads do not know row numbers; a single-threaded read reports 'Row #N'.
        try:
            _read_delimited(path, fmt, use_threads=False)
        except pa.ArrowInvalid as e:
            message = str(e).splitlines()[0]
        where = message.split("Row #", 1)[1].split(":", 1)[0] if "Row #" in message else None
        detail = message.split(":", 2)[-1].strip()[:80] if where else message
        at = f" line {where}" if where else ""
        first = _first_line(path)
        if first.lstrip().startswith(("sep=", "SEP=")) or (
            first.lstrip().startswith("#") and where is not None and int(where) <= 3
        ):  # a preamble line read as the header: the rows below it do not fit it
            return SemidError(
                f"{what} {path}: its first line, {first[:60]!r}, is a comment or Excel's sep= line, "
                "not the header; remove that line"
            )
        return SemidError(
            f"{what} {path}{at} is malformed ({detail}); every row needs as many fields as the header"
        )
    return SemidError(f"cannot read {what} {path}: {message}")


def _csv_delimiter(path: Path) -> str:
    """A ``.csv``'s separator: a comma, or another the header holds without commas (a spreadsheet
    export)."""
    header = _first_line(path)
    separator = next((s for s in OTHER_CSV_SEPARATORS if s in header), None)
    return separator if "," not in header and separator is not None else ","


def _first_line(path: Path) -> str:
    """The file's first line that is not blank (the header, as the CSV reader finds it),
    decompressed and without a byte-order mark, read alone."""
    with gzip.open(path, "rb") if path.name.lower().endswith(".gz") else open(path, "rb") as f:
        for raw in f:
            line = raw.decode("utf-8", "replace").removeprefix("\ufeff").strip("\r\n")
            if line.strip():
                return line
    return ""


def _raw_text(path: Path) -> bytes:
    if path.name.lower().endswith(".gz"):
        return gzip.decompress(path.read_bytes())
    with open(path, "rb") as f:
        return f.read() if (end := _read_end(path)) is None else f.read(end)


# Files that `read_table` reads only up to a byte: logs that grew while served, up to the end of
# their last whole line (see `read_up_to`). A context variable: each server thread reads its own.
_READ_UP_TO: ContextVar[dict[str, int] | None] = ContextVar("read_up_to", default=None)


@contextmanager
def read_up_to(ends: dict[str, int]) -> Iterator[None]:
    """Within the block, `read_table` reads each CSV, TSV or JSON Lines file (not gzipped) named
    in ``ends`` only up to that byte: what a writer appended after it, such
    as a line it has not finished, is not read."""
    ends = {os.path.realpath(name): end for name, end in ends.items()}
    token = _READ_UP_TO.set({**(_READ_UP_TO.get() or {}), **ends})
    try:
        yield
    finally:
        _READ_UP_TO.reset(token)


def whole_lines_end(path: str | os.PathLike, size: int) -> int:
    """Where the last whole line of the file's first ``size`` bytes ends: after its last line
    feed (``size`` when the bytes end with one, or hold none: a file of one line)."""
    with open(path, "rb") as f:
        end = size
        while end > 0:
            start = max(0, end - (1 << 16))
            f.seek(start)
            block = f.read(end - start)
            if (found := block.rfind(b"\n")) >= 0:
                return start + found + 1
            end = start
    return size


def _read_end(path: Path) -> int | None:
    """The byte `read_up_to` reads ``path`` up to, or None (the whole file)."""
    ends = _READ_UP_TO.get()
    return None if not ends else ends.get(os.path.realpath(path))


def _source(path: Path) -> Path | pa.BufferReader:
    """What pyarrow reads for ``path``: the file, or its first bytes (`read_up_to`), read (not
    memory-mapped: a log truncated while mapped, by logrotate's copytruncate, say, would end the
    process with SIGBUS; read, it gives a short read, which the next read redoes)."""
    end = _read_end(path)
    if end is None or path.name.lower().endswith(".gz"):
        return path
    with pa.OSFile(str(path)) as f:
        return pa.BufferReader(f.read_buffer(end))


# --- columns ----------------------------------------------------------------------------------


def parse_columns(text: str | None) -> dict[str, str]:
    """``"user=uid,item=movie"`` -> ``{"user": "uid", "item": "movie"}`` (None or "" -> {})."""
    if not text:
        return {}
    out: dict[str, str] = {}
    for part in text.split(","):
        role, sep, name = (s.strip() for s in part.partition("="))
        if not sep or not role or not name:
            raise SemidError(
                f"--columns {text!r}: {part.strip()!r} is not ROLE=COLUMN; write e.g. user=uid,item=movie"
            )
        if role in out:
            raise SemidError(f"--columns {text!r} names {role!r} twice; give each role once")
        # an item's key may be its text too (titles as keys); other roles need their own column
        same = next((other for other, column in out.items()
                     if column == name and {other, role} != {"item", "text"}), None)  # fmt: skip
        if same is not None:
            raise SemidError(f"--columns {text!r} gives column {name!r} to both {same} and {role}; "
                             "give each role its own column")  # fmt: skip
        out[role] = name
    return out


def column_name(header: str) -> str:
    """A header's name part: RecBole's ``user_id:token`` -> ``user_id``; others unchanged."""
    name, sep, kind = header.rpartition(":")
    return name.strip() if sep and kind.strip() in RECBOLE_TYPES else header.strip()


def find_column(
    table: pa.Table,
    role: str,
    aliases: Sequence[str],
    path: str | os.PathLike,
    what: str,
    explicit: str | None = None,
    required: bool = True,
    columns_option: bool = True,
) -> str | None:
    """The header of the column playing `role`: `explicit` if given, else the one accepted alias.

    Aliases match the name part of the header (see `column_name`) as written, else with case,
    spaces and punctuation aside (``CustomerID``, ``USER_ID``, ``Item Id``). Raises if a
    required column is missing or if several columns match; the message advises ``--columns``
    where the command takes it (``columns_option``), else renaming the column."""
    headers = table.column_names
    if explicit is not None:
        found = [h for h in headers if h == explicit or column_name(h) == explicit]
        if not found:
            raise SemidError(
                f"{what} {path} has no column {explicit!r} (given for {role}); columns: {', '.join(headers)}"
            )
    else:
        found = matching_columns(headers, aliases)
    if (
        len(found) > 1 and len(set(found)) == 1
    ):  # one name twice: neither --columns nor a reader tells them apart
        raise SemidError(f"{what} {path} has two columns named {found[0]!r}; rename one in the "
                         "header line")  # fmt: skip
    if explicit is not None:
        return found[0]
    if len(found) > 1:
        raise SemidError(
            f"{what} {path}: columns {', '.join(found)} could all be the {role}; "
            + (f"pick one with --columns {role}=NAME" if columns_option else "rename all but one")
        )
    if not found:
        if not required:
            return None
        rename = "; rename it" + (f" or pass --columns {role}=NAME" if columns_option else "")
        raise SemidError(
            f"{what} {path} lacks {'an' if role[0] in 'aeio' else 'a'} {role} column (accepted names: {', '.join(aliases)}; found: "
            f"{', '.join(headers)}){header_hint(headers) or rename}"
        )
    return found[0]


def matching_columns(headers: Sequence[str], aliases: Sequence[str]) -> list[str]:
    """The headers whose name part (`column_name`) is one of ``aliases`` as written, or, when none
    is, those that match one with case, spaces and punctuation aside."""
    found = [h for h in headers if column_name(h) in aliases]
    if not found:
        loose = {_loose(a) for a in aliases}
        found = [h for h in headers if _loose(column_name(h)) in loose]
    return found


def _loose(name: str) -> str:
    """A column name with case, spaces and punctuation aside: ``Customer_ID`` -> ``customerid``."""
    return re.sub(r"[^0-9a-z]", "", name.lower())


def data_files_hint(folder: Path) -> str:
    """For a folder passed where one data file was expected: the data files it holds and what to
    do ("" when it holds none), e.g. for a log split into train.csv and test.csv."""
    names = sorted(f.name for f in folder.iterdir()
                   if f.is_file() and not f.name.startswith(".") and table_format(f) is not None)  # fmt: skip
    if not names:
        return ""
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    return (f" (it holds the data files {shown}: pass one of them; join a log split into train and "
            "test files, as semid draws its own split)")  # fmt: skip


def header_hint(headers: Sequence[str]) -> str:
    """Why a header may lack the expected columns, for an error message ("" when nothing stands out):
    one column holding separators (the file uses another separator), or a first line of data. The
    hint is the fix: a message with one gives no other (renaming a column the file lacks)."""
    if len(headers) == 1 and any(c in headers[0] for c in ", ;\t|"):
        return " (the first line was read as one column: separate columns with commas in a .csv, tabs in a .tsv)"
    if any(_is_number(h) for h in headers):
        return " (the first line looks like data: add a header line naming the columns)"
    return ""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def row_label(path: Path, row: int) -> str:
    """Row `row` (0-based) as the user finds it: in CSV/TSV the line it starts on (counting the
    header, blank lines and the line breaks inside quoted cells), a row otherwise."""
    if table_format(path) not in ("csv", "tsv"):
        return f"row {row + 1}"
    line = _line_of_row(Path(path), row)
    return f"line {line if line is not None else row + 2}"


class RowPlace:
    """`row_label` of a table row, after ``prefix`` (say, the file's name), worked out when shown:
    finding the line a CSV row starts on reads the file up to it, which only an error needs."""

    __slots__ = ("path", "prefix", "row")

    def __init__(self, path: Path, row: int, prefix: str = "") -> None:
        self.path, self.row, self.prefix = path, row, prefix

    def __str__(self) -> str:
        return f"{self.prefix}{row_label(self.path, self.row)}"


Place = str | RowPlace  # where a record came from, for an error about it


def _line_of_row(path: Path, row: int) -> int | None:
    """The 1-based line data row ``row`` of a CSV or TSV file starts on, read as a stream that
    stops there, by the csv module, which splits rows as the table reader does: blank lines are
    no rows, a quote opens a cell only at its start (a TSV has none) and such a cell may hold line
    breaks. None when the file cannot be read (any more) or has fewer rows."""
    gz = path.name.lower().endswith(".gz")
    try:
        text = (gzip.open(path, "rt", encoding="utf-8-sig", errors="replace", newline="") if gz
                else open(path, encoding="utf-8-sig", errors="replace", newline=""))  # fmt: skip
    except OSError:
        return None
    quoting = {"delimiter": "\t", "quoting": csv.QUOTE_NONE} if table_format(path) == "tsv" else {
        "delimiter": _csv_delimiter(path)}  # fmt: skip
    limit = csv.field_size_limit(sys.maxsize)  # a document's text may pass 128 KiB
    try:
        with text:
            reader, index, end = csv.reader(text, **quoting), -1, 0  # index -1: the header
            for record in reader:
                if record:  # [] is a blank line
                    if index == row:
                        return end + 1
                    index += 1
                end = reader.line_num
    except (OSError, EOFError, csv.Error):  # a damaged file: the caller counts rows
        return None
    finally:
        csv.field_size_limit(limit)
    return None


def key_strings(
    column: pa.ChunkedArray, path: Path, role: str, trim: bool = False, texts: bool = False
) -> np.ndarray:
    """(N,) object array of strings (ids, paths, labels); an empty or null cell raises, naming its
    row, as does a control character (a line break, a tab) unless the cells are ``texts``
    (captions, queries). ``trim``: without the spaces around each (``1, 86, 883603013``, a
    comma-space export)."""
    strings = _checked_strings(column, path, role, trim)
    if not texts:
        _refuse_control_characters(strings, path, role)
    return np.asarray(strings.to_numpy(zero_copy_only=False), dtype=object)


def factorized_keys(
    column: pa.ChunkedArray, path: Path, role: str, trim: bool = False
) -> tuple[np.ndarray, np.ndarray]:
    """``pd.factorize(key_strings(...))`` without a Python string per row (millions of them take
    about 80 bytes each): int64 codes (N,) numbering the distinct keys in order of first
    appearance, and those keys (K,) as an object array of strings."""
    strings = _checked_strings(column, path, role, trim)
    # one array for one numbering; 64-bit offsets, as a file's ids may pass 2 GiB of text
    encoded = pc.dictionary_encode(strings.cast(pa.large_string()).combine_chunks())
    _refuse_control_characters(encoded.dictionary, path, role, strings)  # the K keys, not N rows
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int64)
    return codes, np.asarray(encoded.dictionary.to_numpy(zero_copy_only=False), dtype=object)


def _checked_strings(column: pa.ChunkedArray, path: Path, role: str, trim: bool) -> pa.ChunkedArray:
    """The column as strings (trimmed with ``trim``); SemidError for another type or an empty or
    null cell, naming its row."""
    try:
        strings = pc.cast(column, pa.string())
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        raise SemidError(
            f"{path}: the {role} column holds {column.type} values; use strings or integers"
        ) from None
    if trim:
        strings = pc.utf8_trim_whitespace(strings)
    blank = pc.fill_null(pc.equal(pc.utf8_trim_whitespace(strings), ""), True)
    bad = np.flatnonzero(blank.to_numpy(zero_copy_only=False))  # empty, spaces or null
    if bad.size:
        raise SemidError(f"{path} {row_label(path, int(bad[0]))}: empty {role} "
                         f"({counted(bad.size, 'row')}); give every row one")  # fmt: skip
    return strings


def _refuse_control_characters(
    values: pa.Array | pa.ChunkedArray, path: Path, role: str, rows: pa.ChunkedArray | None = None
) -> None:
    """SemidError naming the first row whose id holds a control character (`KEY_RULE`): of
    ``values``, or, when they are the distinct ids of ``rows``, of ``rows``."""
    hit = pc.fill_null(pc.match_substring_regex(values, CONTROL_CHARACTERS), False)
    if not pc.any(hit).as_py():
        return
    value = values[int(np.flatnonzero(hit.to_numpy(zero_copy_only=False))[0])].as_py()
    row = pc.index(values if rows is None else rows, value).as_py()
    check_key_characters(value, f"{path} {row_label(path, row)}", role)


# files that mark a folder semid wrote: a run, an index, a training folder (before its run exists)
SEMID_OUTPUT_MARKERS = ("manifest.json", "codes.safetensors", "train_config.json")


def folder_data_files(folder: Path, _holders: frozenset[Path] = frozenset()) -> list[Path]:
    """The files below ``folder`` that are data, sorted: hidden entries (``.DS_Store``, semid's
    lock and temporary files) and the folders semid writes (a run or index made inside the data
    folder, ``--dataset . --out runs/x``) are left out, so that writing one changes no hash. A
    linked folder is followed unless it holds the folder that links to it (a loop)."""
    holders = _holders | {folder.resolve()}
    files = []
    for entry in sorted(folder.iterdir()):
        if entry.name.startswith("."):
            continue
        if entry.is_dir():
            semid_output = any((entry / marker).is_file() for marker in SEMID_OUTPUT_MARKERS)
            if not semid_output and entry.resolve() not in holders:
                files += folder_data_files(entry, holders)
        elif entry.is_file():
            files.append(entry)
    return files


def content_sha256(paths: str | os.PathLike | Iterable[str | os.PathLike],
                   files_of: Callable[[Path], list[Path]] = folder_data_files) -> str:  # fmt: skip
    """The sha256 of the data's bytes: for one file, of its bytes (``sha256sum``'s digest).

    Several paths or a folder hash one ``<digest>  <name>`` line per file (folders: the files
    ``files_of`` gives, by default every data file below, sorted, by relative path; see
    `folder_data_files`), so renaming a class folder changes the hash but moving the data
    elsewhere does not."""
    items = [paths] if isinstance(paths, (str, os.PathLike)) else list(paths)
    files: list[tuple[str, Path]] = []
    for item in map(Path, items):
        if item.is_dir():
            files += [(p.relative_to(item).as_posix(), p) for p in files_of(item)]
        elif item.is_file():
            files.append((item.name, item))
        else:
            raise SemidError(f"{item} not found; cannot hash the data")
    if len(files) == 1 and not Path(items[0]).is_dir():
        return _file_sha256(files[0][1])
    lines = "".join(f"{_file_sha256(p)}  {name}\n" for name, p in files)
    return hashlib.sha256(lines.encode("utf-8")).hexdigest()


def _file_sha256(path: Path) -> str:
    """The file's SHA-256, of its bytes up to `read_up_to`'s end within that block: a line its
    writer has not finished is not read, so it does not change the hash either."""
    end = _read_end(path)
    try:
        if end is None or path.name.lower().endswith(".gz"):  # a gzipped file is read whole
            return file_sha256(path)
        digest = hashlib.sha256()
        with open(path, "rb") as f:
            while end > 0 and (block := f.read(min(end, 1 << 20))):
                digest.update(block)
                end -= len(block)
        return digest.hexdigest()
    except OSError as e:
        raise SemidError(f"cannot read {path} to hash the data: {e.strerror or e}; make it readable "
                         "or restore it") from None  # fmt: skip
