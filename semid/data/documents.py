"""Document collections: one ``{"id": ..., "text": ..., "queries": [...]}`` record per document.

Files: JSON Lines (any extension but the table ones below; ``.gz`` allowed), or a CSV, TSV or
Parquet table (semid.data.tables) with ``id`` and ``text`` columns and an optional ``queries``
column (a list, or a string holding one query). ``queries`` is optional (documents without known
queries can still be indexed). Ids are strings (integers are accepted and converted) and must be
unique. Reading checks every record and names the first bad one (its line, or its row in Parquet),
so a user's file fails with a message that says where and how to fix it. ``sha256`` is the hash
of the file's bytes (`semid.data.tables.content_sha256`).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import zlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa

from semid.atomic import atomic_file
from semid.data.tables import (
    content_sha256,
    find_column,
    key_strings,
    read_table,
    row_label,
    table_format,
)
from semid.errors import SemidError


@dataclass(frozen=True)
class Document:
    """One document: its id, its text and the queries known to be answered by it."""

    id: str
    text: str
    queries: tuple[str, ...] = ()


@dataclass
class DocumentCollection:
    """An ordered list of documents with unique ids; ``sha256`` is the JSONL file's content hash."""

    name: str
    documents: list[Document]
    sha256: str | None = None
    metadata: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        ids = [d.id for d in self.documents]
        if len(set(ids)) != len(ids):
            seen: set[str] = set()
            dup = next(i for i in ids if i in seen or seen.add(i))
            raise SemidError(f"document ids must be unique; {dup!r} appears twice in {self.name}")

    def __len__(self) -> int:
        return len(self.documents)

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
        return DocumentCollection(name or f"{self.name}[{len(docs)}]", docs)


def _parse_line(line: str, number: int, path: Path) -> Document:
    where = f"{path} line {number}"
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise SemidError(
            f"{where} is not valid JSON ({e.msg}); write one object per line, e.g. "
            '{"id": "d1", "text": "...", "queries": ["..."]}'
        ) from None
    if not isinstance(obj, dict):
        raise SemidError(
            f'{where} is a JSON {type(obj).__name__}, not an object; write {{"id": ..., "text": ...}}'
        )
    doc_id, text, queries = obj.get("id"), obj.get("text"), obj.get("queries", [])
    if isinstance(doc_id, bool) or not isinstance(doc_id, (str, int)) or str(doc_id) == "":
        raise SemidError(f'{where} needs a non-empty "id" (string or integer)')
    if not isinstance(text, str) or not text.strip():
        raise SemidError(f'{where} needs a non-empty "text" string')
    if not isinstance(queries, list) or not all(isinstance(q, str) and q.strip() for q in queries):
        raise SemidError(f'{where}: "queries" must be a list of non-empty strings (or left out)')
    return Document(str(doc_id), text, tuple(queries))


def read_documents(path: str | os.PathLike, name: str | None = None) -> DocumentCollection:
    """Read documents from JSON Lines or a CSV/TSV/Parquet table; a bad record raises SemidError
    naming its line (or row)."""
    path = Path(path)
    if not path.is_file():
        raise SemidError(
            f"{path} not found; pass a JSONL file with one document object per line "
            "(or a CSV/Parquet table with id and text columns)"
        )
    if table_format(path) in ("csv", "tsv", "parquet"):
        docs = _table_documents(path)
        return DocumentCollection(name or _stem(path), docs, content_sha256(path))
    raw = path.read_bytes()
    text = _decode(_gunzip(raw, path) if path.name.lower().endswith(".gz") else raw, path)
    docs, first_line = [], {}
    for number, line in enumerate(text.splitlines(), start=1):
        if not line.strip():
            continue
        doc = _parse_line(line, number, path)
        if doc.id in first_line:
            raise SemidError(
                f"{path} line {number} repeats id {doc.id!r} (first on line {first_line[doc.id]}); ids must be unique"
            )
        first_line[doc.id] = number
        docs.append(doc)
    if not docs:
        raise SemidError(f"{path} holds no documents; write one JSON object per line")
    return DocumentCollection(name or _stem(path), docs, hashlib.sha256(raw).hexdigest())


def _stem(path: Path) -> str:
    return Path(path.name[:-3] if path.name.lower().endswith(".gz") else path.name).stem


def _gunzip(raw: bytes, path: Path) -> bytes:
    try:
        return gzip.decompress(raw)
    except (OSError, EOFError, zlib.error) as e:
        raise SemidError(f"{path} is not a readable gzip file ({e}); recompress it") from None


def _decode(raw: bytes, path: Path) -> str:
    try:
        return raw.decode("utf-8")
    except UnicodeDecodeError as e:
        line = raw.count(b"\n", 0, e.start) + 1
        raise SemidError(f"{path} line {line} is not UTF-8 text; save the file as UTF-8") from None


def _table_documents(path: Path) -> list[Document]:
    """Documents from a table with id, text and optional queries columns."""
    what = "documents file"
    table = read_table(path, what)
    id_col = find_column(table, "id", ("id", "doc_id", "docid"), path, what)
    text_col = find_column(table, "text", ("text",), path, what)
    query_col = find_column(table, "queries", ("queries", "query"), path, what, required=False)
    ids = key_strings(table[id_col], path, "document id")
    if not (
        pa.types.is_string(table[text_col].type) or pa.types.is_large_string(table[text_col].type)
    ):
        raise SemidError(f"{path}: the text column holds {table[text_col].type}, not strings")
    texts = table[text_col].to_pylist()
    queries = table[query_col].to_pylist() if query_col else [None] * len(ids)
    docs, first_row = [], {}
    for row, (doc_id, text, q) in enumerate(zip(ids, texts, queries, strict=True)):
        where = f"{path} {row_label(path, row)}"
        if doc_id in first_row:
            raise SemidError(
                f"{where} repeats id {doc_id!r} (first at {row_label(path, first_row[doc_id])}); ids must be unique"
            )
        first_row[doc_id] = row
        if text is None or not text.strip():
            raise SemidError(
                f"{where}: document {doc_id!r} has an empty text; give it one or drop the row"
            )
        docs.append(Document(doc_id, text, _queries(q, where)))
    return docs


def _queries(value: object, where: str) -> tuple[str, ...]:
    """A cell of the queries column: a list of strings, one string, or nothing."""
    if value is None:
        return ()
    if isinstance(value, str):
        return (value,) if value.strip() else ()
    if isinstance(value, list) and all(isinstance(q, str) or q is None for q in value):
        return tuple(q for q in value if q and q.strip())
    raise SemidError(f"{where}: queries must be a list of strings or one string")


def write_documents(path: str | os.PathLike, documents: Sequence[Document]) -> str:
    """Write documents as JSONL, atomically; returns the file's sha256."""
    h = hashlib.sha256()
    with atomic_file(path, "wb") as f:
        for d in documents:
            obj = {"id": d.id, "text": d.text}
            if d.queries:
                obj["queries"] = list(d.queries)
            line = (json.dumps(obj, ensure_ascii=False) + "\n").encode("utf-8")
            h.update(line)
            f.write(line)
    return h.hexdigest()
