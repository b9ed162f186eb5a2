"""JSONL document loader: round trip, optional queries, and errors that name the line."""

from __future__ import annotations

import json

import pytest

from semid.data.documents import Document, DocumentCollection, read_documents, write_documents
from semid.errors import SemidError


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_keeps_order_queries_and_hash(tmp_path):
    docs = [Document("a", "first text", ("q1", "q2")), Document("b", "second ünïcode text")]
    sha = write_documents(tmp_path / "d.jsonl", docs)
    coll = read_documents(tmp_path / "d.jsonl")
    assert coll.documents == docs
    assert coll.sha256 == sha
    assert coll.ids == ["a", "b"] and coll.texts[1] == "second ünïcode text"


def test_integer_ids_and_blank_lines(tmp_path):
    path = _write(
        tmp_path / "d.jsonl",
        [json.dumps({"id": 7, "text": "x y"}), "", json.dumps({"id": "8", "text": "z"})],
    )
    assert read_documents(path).ids == ["7", "8"]


@pytest.mark.parametrize(
    "bad, words",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "not an object"),
        (json.dumps({"text": "no id"}), '"id"'),
        (json.dumps({"id": "x", "text": ""}), '"text"'),
        (json.dumps({"id": "x", "text": "t", "queries": "one"}), '"queries"'),
        (json.dumps({"id": "a", "text": "dup"}), "repeats id 'a' (first on line 1)"),
    ],
)
def test_malformed_line_names_its_number(tmp_path, bad, words):
    good = [
        json.dumps({"id": "a", "text": "ok"}),
        json.dumps({"id": "b", "text": "ok", "queries": ["q"]}),
    ]
    path = _write(tmp_path / "d.jsonl", [*good, bad])
    with pytest.raises(SemidError, match="line 3") as e:
        read_documents(path)
    assert words in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(SemidError, match="not found"):
        read_documents(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(SemidError, match="no documents"):
        read_documents(tmp_path / "e.jsonl")


def test_collection_subset_and_unique_ids():
    coll = DocumentCollection("c", [Document(str(i), f"t{i}") for i in range(5)])
    assert coll.subset([3, 1]).ids == ["3", "1"]
    with pytest.raises(SemidError, match="unique"):
        DocumentCollection("c", [Document("a", "x"), Document("a", "y")])
