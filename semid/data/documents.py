"""Document collections: one ``{"id": ..., "text": ..., "queries": [...]}`` record per document.

Files: JSON Lines (any extension but the table ones below; ``.gz`` allowed; a UTF-8 BOM is
skipped), or a CSV, TSV or Parquet table (semid.data.tables). Every format accepts the same fields
(JSON Lines) or columns (tables), named as below or with case, spaces and punctuation aside
(``Text``, ``DocID``, ``Doc ID``): the id as ``id``, ``doc_id``, ``docid``, ``_id``, ``docno`` or
``pid`` (strings; integers are converted); the text as ``text``, or else one of ``body``,
``contents``, ``content``, ``abstract``, ``passage``, ``article``, ``context``, ``description``;
an optional ``title`` goes before it, after a line break; the queries, optional, as ``queries``,
``query``, ``questions`` or ``question``: a list of strings, one string, or nothing (absent, null,
empty); a CSV or TSV cell holds a list as JSON (``["q1", "q2"]``) or as pandas writes a list
column (``['q1', 'q2']``). ``test_queries``,
optional and written the same way, give the collection's own test split: they are only evaluated
(`Document.test_queries`). Documents without queries can still be indexed. Ids must be unique. Reading checks every record and names the first bad one (its line, or
its row in Parquet), so a user's file fails with a message that says where and how to fix it.
``sha256`` is the hash of the file's bytes (`semid.data.tables.content_sha256`).
"""

from __future__ import annotations

import ast
import functools
import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from semid.atomic import atomic_file
from semid.data.tables import (
    Place,
    RowPlace,
    check_key_characters,
    content_sha256,
    file_stem,
    header_hint,
    matching_columns,
    read_table,
    table_format,
)
from semid.data.text_files import lines_of, not_utf8
from semid.errors import SemidError
from semid.json_values import is_key
from semid.notes import note
from semid.wording import counted, json_kind


@dataclass(frozen=True)
class Document:
    """One document: its id, its text and the queries known to be answered by it. The queries are
    split by semid (training or test, by document); ``test_queries``, given by a collection that
    ships its own test split (BEIR's ``qrels/test.tsv``), are only evaluated."""

    id: str
    text: str
    queries: tuple[str, ...] = ()
    test_queries: tuple[str, ...] = ()


@dataclass
class DocumentCollection:
    """An ordered list of documents with unique ids; ``sha256`` is the JSONL file's content hash;
    ``grades`` the relevance grade of a (document, query) judgement that is not 1 (`grade`)."""

    name: str
    documents: list[Document]
    sha256: str | None = None
    metadata: dict = field(default_factory=dict)
    # (document id, query text) -> relevance grade, where it is not 1 (BEIR's graded qrels)
    grades: dict[tuple[str, str], float] = field(default_factory=dict)
    # > 0: the queries are that many sentences per document, drawn from the texts (a corpus that
    # came without queries: semid.data.pseudo_queries); they train, and are never tested
    pseudo_queries: int = 0

    def __post_init__(self) -> None:
        ids = [d.id for d in self.documents]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise SemidError(f"document ids must be unique; {dup!r} appears twice in {self.name}")

    def __len__(self) -> int:
        return len(self.documents)

    @property
    def gives_test_queries(self) -> bool:
        """Whether a document gives test queries (`Document.test_queries`)."""
        return any(d.test_queries for d in self.documents)

    @property
    def has_test_split(self) -> bool:
        """Whether the collection's test queries are its given ones (`Document.test_queries`):
        when it gives some, and when its queries are pseudo-queries (then perhaps none)."""
        return self.pseudo_queries > 0 or self.gives_test_queries

    def pooled(self) -> DocumentCollection:
        """The collection with each document's given test queries appended to its queries, for a
        protocol that draws its own split (the same hash: the same data)."""
        docs = [Document(d.id, d.text, d.queries + d.test_queries) for d in self.documents]
        return DocumentCollection(self.name, docs, self.sha256, dict(self.metadata), self.grades,
                                  self.pseudo_queries)  # fmt: skip

    def grade(self, document_id: str, query: str) -> float:
        """The relevance grade of ``document_id`` for ``query``: 1 unless the collection grades it."""
        return self.grades.get((document_id, query), 1.0)

    @property
    def ids(self) -> list[str]:
        """Document ids, in order."""
        return [d.id for d in self.documents]

    @property
    def texts(self) -> list[str]:
        """Document texts, in order."""
        return [d.text for d in self.documents]

    def subset(self, rows: Sequence[int], name: str | None = None) -> DocumentCollection:
        """The documents at ``rows`` (in that order), as a new collection without a file hash."""
        docs = [self.documents[int(i)] for i in rows]
        return DocumentCollection(name or f"{self.name}[{len(docs)}]", docs, grades=self.grades,
                                  pseudo_queries=self.pseudo_queries)  # fmt: skip


# Accepted field (JSON Lines) and column (tables) names, the same for every format.
ID_FIELDS = ("id", "doc_id", "docid", "_id", "docno", "pid")  # docno: TREC; pid: MS MARCO passages
QUERY_FIELDS = ("queries", "query", "questions", "question")  # question(s): FAQ and QA sets
QUERY_ID_FIELDS = ("_id", "id", "qid", "query_id", "query-id")  # a query's id: BEIR, TREC, MS MARCO
TEST_QUERY_FIELDS = ("test_queries",)  # a given test split: evaluated, never trained on
GRADE_FIELD = "grades"  # {query: relevance grade > 0} where not 1 (graded judgements, as BEIR's)
# with an optional "title", when there is no "text"
BODY_FIELDS = (
    "body",
    "contents",
    "content",
    "abstract",
    "passage",
    "article",
    "context",
    "description",
)
READ_FIELDS = (
    *ID_FIELDS,
    "title",
    "text",
    *BODY_FIELDS,
    *QUERY_FIELDS,
    *TEST_QUERY_FIELDS,
    GRADE_FIELD,
    "metadata",
)  # fmt: skip  (BEIR's "metadata": known, and left unread)
QUERY_FIELDS_HELP = '"queries" (a list of strings, or one string; "query", "questions" and "question" are also accepted)'
EXAMPLE = '{"id": "d1", "text": "...", "queries": ["..."]}'


def _field(record: dict, names: Sequence[str], where: Place) -> tuple[str | None, object]:
    """(name, value) of the one field of ``names`` the record has, or (None, None); SemidError if
    it has several. Names match as written, else with case, spaces and punctuation aside (``Text``,
    ``DocID``, ``Doc ID``), as table headers do (`semid.data.tables.matching_columns`)."""
    found = [n for n in names if n in record]
    if not found:
        found = list(_loose_fields(tuple(k for k in record if isinstance(k, str)), tuple(names)))
    if len(found) > 1:
        raise SemidError(f"{where} has both {found[0]!r} and {found[1]!r}; keep one of them")
    return (found[0], record[found[0]]) if found else (None, None)


@functools.lru_cache(maxsize=4096)
def _loose_fields(keys: tuple[str, ...], names: tuple[str, ...]) -> tuple[str, ...]:
    """`matching_columns` of a record's keys, memoised: the records of a file share their keys."""
    return tuple(matching_columns(list(keys), names))


def _missing(where: Place, what: str, accepted: str, record: dict) -> SemidError:
    return SemidError(f"{where} has no {what} (accepted names: {accepted}; found: "
                      f"{', '.join(map(str, record)) or 'nothing'}); rename the field")  # fmt: skip


def _document(record: dict, where: Place) -> Document:
    """One document from a record (a JSON object, or a table row as a dict); SemidError naming
    ``where`` (file and line) if it is not one."""
    name, doc_id = _field(record, ID_FIELDS, where)
    if name is None:
        raise _missing(where, "document id", ", ".join(ID_FIELDS), record)
    if doc_id is not None and not is_key(doc_id):
        raise SemidError(f'{where}: "{name}" holds {type(doc_id).__name__} {doc_id!r}; give every '
                         "document a string or integer id")  # fmt: skip
    if doc_id is None or not str(doc_id).strip():
        raise SemidError(f'{where}: empty document id; give every document a non-empty "{name}" '
                         "(string or integer)")  # fmt: skip
    doc_id = str(doc_id).strip()  # as tables' ids: `" d1"` is the document d1
    check_key_characters(doc_id, str(where), "document id")
    doc = Document(doc_id, _text(record, where, doc_id), _queries(record, where),
                   _queries(record, where, TEST_QUERY_FIELDS))  # fmt: skip
    for name, value in (("id", doc.id), ("text", doc.text), *(("query", q) for q in doc.queries)):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError as e:  # JSON's "\ud800": half of a UTF-16 pair, no character
            raise SemidError(
                f"{where}: the {name} holds an unpaired surrogate escape "
                f"({json.dumps(value[e.start])}), half of a character; write the whole character"
            ) from None
    return doc


def _text(record: dict, where: Place, doc_id: str) -> str:
    """The record's "title" (if any) and its "text" or body, joined by a line break."""
    body_name, body = _field(record, ("text",), where)  # BEIR's corpus: a title and a text
    if body_name is None:
        body_name, body = _field(record, BODY_FIELDS, where)
    if body_name is None:  # a title alone is refused: a misnamed body column would pass unseen
        accepted = f"text, or title with one of {', '.join(BODY_FIELDS)}"
        raise _missing(where, "document text", accepted, record)
    parts = [_field(record, ("title",), where), (body_name, body)]
    for name, value in parts:
        if value is not None and not isinstance(value, str):
            raise SemidError(f'{where}: "{name}" holds {type(value).__name__}, not a string')
    text = "\n".join(v.strip() for _, v in parts if v and v.strip())
    if not text:
        raise SemidError(f"{where}: document {doc_id!r} has an empty text; give it one or drop it")
    return text


def _queries(record: dict, where: Place, names: Sequence[str] = QUERY_FIELDS) -> tuple[str, ...]:
    """The record's queries (or its test queries, by their ``names``): a list of strings, one
    string, or nothing (absent, null or empty)."""
    name, value = _field(record, names, where)
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, list) and all(isinstance(q, str) or q is None for q in value):
        return tuple(q for q in value if q and q.strip())
    raise SemidError(f'{where}: "{name}" must be a list of strings or one string')


def _listed_queries(row: dict) -> dict:
    """The table row with a queries cell that holds a list as text (``["q1", "q2"]`` as JSON, or
    ``['q1', 'q2']`` as pandas writes a list column) read as that list, and a grades cell that
    holds an object (``{"q1": 2}``) read as that object."""
    for names in (QUERY_FIELDS, TEST_QUERY_FIELDS, (GRADE_FIELD,)):
        name = next(iter(_loose_fields(tuple(row), tuple(names))), None)
        cell = row.get(name)
        brackets = "{}" if names == (GRADE_FIELD,) else "[]"
        if not (
            isinstance(cell, str)
            and cell.strip()[:1] == brackets[0]
            and cell.strip()[-1:] == brackets[1]
        ):
            continue
        try:
            row[name] = json.loads(cell)
        except ValueError:
            try:
                row[name] = ast.literal_eval(cell.strip())
            except (ValueError, SyntaxError):
                continue  # one query that happens to be in brackets
    return row


def read_documents(path: str | os.PathLike, name: str | None = None) -> DocumentCollection:
    """Read documents from JSON Lines or a CSV/TSV/Parquet table; a bad record raises SemidError
    naming its line (or row)."""
    path = Path(path)
    if path.is_dir():
        raise SemidError(
            f"{path} is a folder; pass the documents file (JSON Lines, CSV, TSV or Parquet with id and "
            "text), or a BEIR folder with corpus.jsonl, queries.jsonl and qrels/*.tsv"
        )
    if not path.is_file():
        raise SemidError(
            f"{path} not found; pass a JSONL file with one document object per line "
            "(or a CSV/Parquet table with id and text columns)"
        )
    fmt = table_format(path)
    if fmt in ("csv", "tsv", "parquet"):
        table = read_table(path, "documents file")
        read = matching_columns(table.column_names, (*ID_FIELDS, "title", "text", *BODY_FIELDS,
                                                     *QUERY_FIELDS, *TEST_QUERY_FIELDS, GRADE_FIELD))  # fmt: skip
        twice = next((name for name in read if table.column_names.count(name) > 1), None)
        if twice is not None:  # a row read as a dict would keep the last of them, unsaid
            raise SemidError(
                f"{path} has two columns named {twice!r}; rename one in the header line"
            )
        if not matching_columns(table.column_names, ID_FIELDS):  # said of the header, not of row 1
            raise SemidError(f"{path} has no document id column (accepted names: {', '.join(ID_FIELDS)}; found: "
                             f"{', '.join(table.column_names)})"
                             f"{header_hint(table.column_names) or '; rename it'}")  # fmt: skip
        rows = table.to_pylist()
        if fmt != "parquet":  # CSV and TSV cells are text; a list of queries is written in one
            rows = [_listed_queries(row) for row in rows]
        records = ((RowPlace(path, i), RowPlace(path, i, f"{path} "), row)
                   for i, row in enumerate(rows))  # fmt: skip
        docs, grades = _collect(records, path)
        return DocumentCollection(
            name or file_stem(path), docs, content_sha256(path), grades=grades
        )
    raw, text = _json_lines_text(path)
    records = _json_records(text, path)
    docs, grades = _collect(records, path)
    if not docs:
        raise SemidError(f"{path} holds no documents; write one JSON object per line")
    return DocumentCollection(
        name or file_stem(path), docs, hashlib.sha256(raw).hexdigest(), grades=grades
    )


def first_record_fields(path: Path) -> list[str]:
    """The fields of the first record of a JSON Lines file (SemidError, naming its line, if it is
    no JSON object): what a file tells of its kind when pyarrow cannot read it whole."""
    for _, _, record in _json_records(_json_lines_text(path)[1], path):
        return [str(name) for name in record]
    raise SemidError(f"{path} holds no records; write one JSON object per line")


def _json_lines_text(path: Path) -> tuple[bytes, str]:
    """A JSON Lines file's bytes as stored (for its hash) and its text (gunzipped, decoded, without
    a byte-order mark, which is no content)."""
    raw = path.read_bytes()
    text = _decode(_gunzip(raw, path) if path.name.lower().endswith(".gz") else raw, path)
    return raw, text.removeprefix("\ufeff")


def _json_records(text: str, path: Path) -> Iterator[tuple[str, str, dict]]:
    """("line N", "PATH line N", object) for every non-blank line of JSON Lines; a byte-order mark
    that starts a line (files joined end to end) is no content."""
    first = True
    for number, line in enumerate(lines_of(text), start=1):
        line = line.removeprefix("\ufeff")
        if not line.strip():
            continue
        label, where = f"line {number}", f"{path} line {number}"
        if first and line.lstrip().startswith("["):
            raise SemidError(
                f"{path} is a JSON array; write JSON Lines (one object per line), e.g. {EXAMPLE}"
            )
        first = False
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as e:
            raise SemidError(
                f"{where} is not valid JSON ({e.msg}); write one object per line, e.g. {EXAMPLE}"
            ) from None
        if not isinstance(obj, dict):
            raise SemidError(f"{where} is {json_kind(obj)}, not a JSON object; write {EXAMPLE}")
        yield label, where, obj


def _collect(records: Iterable[tuple[Place, Place, dict]],
             path: Path) -> tuple[list[Document], dict[tuple[str, str], float]]:  # fmt: skip
    """The documents of (line or row label, the same after the file's name, record) triples, in
    order (ids must be unique), and the grades they give that are not 1."""
    docs, first, grades = [], {}, {}
    unread: dict[str, tuple[str, int]] = {}  # a body field beside "text": (first label, count)
    unknown: dict[str, str] = {}  # a field of no accepted name: the first label that has it
    for label, where, record in records:
        doc = _document(record, where)
        for name in _unread_bodies(record):
            first_label, count = unread.get(name, (label, 0))
            unread[name] = (first_label, count + 1)
        for name in _unknown_fields(record):
            unknown.setdefault(name, label)
        if doc.id in first:
            raise SemidError(
                f"{path} {label} repeats id {doc.id!r} (first at {first[doc.id]}); ids must be unique"
            )
        first[doc.id] = label
        docs.append(doc)
        grades |= _grades(record, where, doc)
    for name, (label, count) in unread.items():
        note(f"{path}: {counted(count, 'document gives', 'documents give')} both \"text\" and \"{name}\" (first: "
             f'{label}); "text" is the document text and "{name}" is left unread')  # fmt: skip
    if unknown:
        names = ", ".join(f'"{name}"' for name in list(unknown)[:5])
        note(f"{path}: {counted(len(unknown), 'field')} of no accepted name left unread: {names} "
             f"(first: {next(iter(unknown.values()))}); queries are read from \"queries\" (or "
             '"query", "questions", "question") and the text from "text" (or "body", '
             '"description", ...): rename a field to use it')  # fmt: skip
    import numpy as np  # noqa: PLC0415  (with pyarrow, loaded when a corpus is read)

    from semid.data.interaction_files import twin_key_notes

    for told in twin_key_notes(np.asarray(list(first), dtype=object), "document"):
        note(f"{path}: {told}")
    if (told := _same_text_note(docs)) is not None:
        note(f"{path}: {told}")
    return docs, grades


def _same_text_note(docs: Sequence[Document]) -> str | None:
    """What to tell of documents whose text is another's, word for word (a corpus exported twice
    under two ids): a query of one then has two equally good answers, and the one it does not list
    counts as a miss. None when every text is its own."""
    first: dict[str, str] = {}
    copies = []
    for doc in docs:
        original = first.setdefault(doc.text, doc.id)
        if original != doc.id:
            copies.append((doc.id, original))
    if not copies:
        return None
    copy, original = copies[0]
    return (f"{counted(len(copies), 'document has', 'documents have')} the text of an earlier "
            f"one (e.g. {copy[:60]!r}, as {original[:60]!r}); a query of one counts the other as "
            "a miss: drop the copies, or give their queries to both")  # fmt: skip


def _unknown_fields(record: dict) -> list[str]:
    """The record's fields of no accepted name (`READ_FIELDS`, matched loosely)."""
    # one key at a time: among several keys, matching keeps the exact names only ("id" hid "Text")
    return [k for k in map(str, record) if not _loose_fields((k,), READ_FIELDS)]


def _unread_bodies(record: dict) -> list[str]:
    """The body fields (`BODY_FIELDS`) with a text that a record's "text" leaves unread."""
    if _field(record, ("text",), "")[0] is None:
        return []
    return [name for name in _loose_fields(tuple(k for k in record if isinstance(k, str)), BODY_FIELDS)
            if isinstance(record[name], str) and record[name].strip()]  # fmt: skip


def _grades(record: dict, where: Place, doc: Document) -> dict[tuple[str, str], float]:
    """(document id, query) -> grade for the record's ``grades`` object, those that are not 1;
    SemidError naming ``where`` for a grade that is no number > 0 or a query the document lacks."""
    _, value = _field(record, (GRADE_FIELD,), where)
    if value is None or (isinstance(value, str) and not value.strip()):  # a table's empty cell
        return {}
    if isinstance(value, list) and all(isinstance(p, tuple | list) and len(p) == 2 for p in value):
        value = dict(value)  # a Parquet map column
    if not isinstance(value, dict):
        raise SemidError(f'{where}: "{GRADE_FIELD}" must be an object of query -> relevance grade, '
                         'e.g. {"the query": 2}')  # fmt: skip
    listed = {*doc.queries, *doc.test_queries}
    out = {}
    for query, grade in value.items():
        if grade is None:  # a Parquet struct column (pandas' dicts) gives every row every key
            continue
        if query not in listed:
            raise SemidError(f'{where}: "{GRADE_FIELD}" grades {query!r}, which is not one of the '
                             "document's queries; grade its own queries")  # fmt: skip
        if isinstance(grade, bool) or not isinstance(grade, (int, float)) or not grade > 0:
            raise SemidError(f'{where}: the grade of {query!r} is {grade!r}; give a number above 0 '
                             "(a query that is not relevant is not listed)")  # fmt: skip
        if grade != 1:
            out[doc.id, query] = float(grade)
    return out


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise SemidError(f"{path} is not a readable gzip file ({e}); recompress it") from None


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise not_utf8(raw, e, str(path)) from None


def write_documents(path: str | os.PathLike, documents: Sequence[Document],
                    grades: dict[tuple[str, str], float] | None = None) -> str:  # fmt: skip
    """Write documents as JSONL, atomically, with the ``grades`` of their queries that are not 1
    (`DocumentCollection.grades`); returns the file's sha256."""
    h = hashlib.sha256()
    grades = grades or {}
    with atomic_file(path, "wb") as f:
        for d in documents:
            obj: dict[str, object] = {"id": d.id, "text": d.text}
            if d.queries:
                obj["queries"] = list(d.queries)
            if d.test_queries:
                obj["test_queries"] = list(d.test_queries)
            graded = {
                q: grades[d.id, q] for q in (*d.queries, *d.test_queries) if (d.id, q) in grades
            }
            if graded:
                obj[GRADE_FIELD] = graded
            line = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
            h.update(line)
            f.write(line)
    return h.hexdigest()
