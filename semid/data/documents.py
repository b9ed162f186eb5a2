"""Document collections as JSONL: one ``{"id": ..., "text": ..., "queries": [...]}`` object per line.

``queries`` is optional (documents without known queries can still be indexed). Ids are strings
(integers are accepted and converted) and must be unique. Reading checks every line and names the
first bad one, so a user's file fails with a message that says where and how to fix it.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from semid.atomic import atomic_file
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
    """Read a JSONL file of documents; a malformed line raises SemidError naming its line number."""
    path = Path(path)
    if not path.is_file():
        raise SemidError(f"{path} not found; pass a JSONL file with one document object per line")
    raw = path.read_bytes()
    docs, first_line = [], {}
    for number, line in enumerate(raw.decode("utf-8").splitlines(), start=1):
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
    return DocumentCollection(name or path.stem, docs, hashlib.sha256(raw).hexdigest())


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
