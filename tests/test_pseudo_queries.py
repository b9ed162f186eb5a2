"""A corpus that comes without queries trains on sentences of its documents (pseudo-queries),
which are never tested: the run tests only given test queries, and says when it has none."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from _documents import tiny_spec

from semid.cli.main import main
from semid.data.documents import Document, DocumentCollection
from semid.data.pseudo_queries import (
    MAX_WORDS,
    given_documents,
    pseudo_queries,
    sentences,
    with_pseudo_queries,
)
from semid.errors import SemidError
from semid.runs import load_run
from semid.tasks import EvalOptions, get_task

TEXT = (
    "Foo is a fast image viewer. It reads PNG and JPEG files!\nSee also.\n"
    "Thumbnails are cached on disk for speed? " + " ".join(f"w{i}" for i in range(40)) + "."
)


def test_sentences_are_cut_and_short_fragments_dropped():
    found = sentences(TEXT)
    assert found[:3] == ["Foo is a fast image viewer.", "It reads PNG and JPEG files!",
                         "Thumbnails are cached on disk for speed?"]  # fmt: skip
    assert "See also." not in found  # two words: too short to find a document by
    assert len(found[3].split()) == MAX_WORDS and found[3].startswith("w0 w1")


def test_pseudo_queries_are_drawn_per_document_and_seed():
    doc = Document("foo", TEXT)
    picked = pseudo_queries(doc, 2, seed=0)
    assert len(picked) == 2 and set(picked) <= set(sentences(TEXT))
    assert picked == pseudo_queries(Document("foo", TEXT), 2, seed=0)  # deterministic
    draws = {pseudo_queries(doc, 2, seed) for seed in range(8)}
    assert len(draws) > 1  # the seed chooses
    assert pseudo_queries(doc, 10, 0) == tuple(sentences(TEXT))  # all, in text order
    assert pseudo_queries(Document("x", "tiny words"), 3, 0) == ("tiny words",)  # no sentence
    assert pseudo_queries(Document("y", "  "), 3, 0) == ()


def test_a_collection_with_pseudo_queries_tests_only_its_given_queries():
    docs = [
        Document("a", TEXT, test_queries=("image viewer",)),
        Document("b", "Bar is a mail reader."),
    ]
    coll = with_pseudo_queries(DocumentCollection("c", docs), 3, 0)
    assert coll.pseudo_queries == 3 and coll.has_test_split
    assert coll.documents[1].queries == ("Bar is a mail reader.",)
    assert coll.documents[0].test_queries == ("image viewer",)
    assert coll.subset([1]).pseudo_queries == 3
    assert [d.queries for d in given_documents(coll)] == [(), ()]  # written back as given
    assert given_documents(DocumentCollection("c", docs)) == docs


def write_plain_docs(path, n: int, test_every: int = 0) -> None:
    """Documents of id and text only (every ``test_every``-th with a given test query)."""
    words = "kernel audio python font game network editor printer camera database".split()
    with open(path, "w") as f:
        for i in range(n):
            topic = words[i % len(words)]
            doc = {
                "id": f"pkg{i}",
                "text": f"The {topic} tool pkg{i} helps. It uses {topic} files daily.",
            }
            if test_every and i % test_every == 0:
                doc["test_queries"] = [f"{topic} tool pkg{i}"]
            f.write(json.dumps(doc) + "\n")


def test_a_corpus_without_queries_trains_on_its_sentences(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    write_plain_docs(tmp_path / "docs.jsonl", 30)
    task = get_task("retrieve")
    summary = task.train(tiny_spec(tmp_path / "docs.jsonl"), tmp_path / "run")
    out = capsys.readouterr().out
    assert "no document has queries, so up to 3 sentences of each train as its queries" in out
    assert "no test queries" in out
    assert summary["test_queries"] == 0 and summary["test_split"] == "none"
    assert summary["train_examples"] > 24  # documents and their sentences, not the documents alone
    later = [json.loads(line) for line in (tmp_path / "run" / "later.jsonl").open()]
    assert len(later) == 6 and not any("queries" in d for d in later)  # as given
    run = load_run(tmp_path / "run")
    with pytest.raises(SemidError, match="has no test queries .its documents came without queries"):
        task.evaluate(run, EvalOptions(ks=(1,)))
    capsys.readouterr()
    assert (
        main(
            ["index", "add", str(tmp_path / "run"), "--docs", str(tmp_path / "run" / "later.jsonl")]
        )
        == 0
    )
    assert (
        "they have no queries, so up to 3 sentences of each trained as its queries"
        in capsys.readouterr().out
    )
    session = json.loads((tmp_path / "run" / "config.json").read_text())["state"]["sessions"][0]
    assert session["documents"] == 6 and session["test_queries"] == 0


def test_given_test_queries_are_scored_and_pseudo_queries_can_be_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    write_plain_docs(tmp_path / "docs.jsonl", 30, test_every=5)
    task = get_task("retrieve")
    spec = tiny_spec(tmp_path / "docs.jsonl", hold_out=0)
    summary = task.train(spec, tmp_path / "run")
    assert summary["test_queries"] == 6 and summary["test_split"] == "given"
    metrics = task.evaluate(load_run(tmp_path / "run"), EvalOptions(ks=(1, 10)))
    assert metrics["d0-test/num_queries"] == 6
    with pytest.raises(SemidError, match="no document of .* has queries.*--pseudo-queries 3"):
        task.train(replace(spec, pseudo_queries=0), tmp_path / "refused")
