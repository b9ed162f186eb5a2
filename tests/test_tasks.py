"""The task layer: typed configs, one save format for every model, run manifests, the one search
path (against brute force), and `predict` agreeing with the evaluation protocol."""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import TINY_BERT, TINY_GENERATORS

import semid.quantizers  # noqa: F401  (registers rqkmeans)
from semid.cli.main import main
from semid.configs import RULES, config_from_dict, parse_json_object
from semid.cooccurrence import neighbour_table
from semid.data.logs import InteractionLog, RecDataset
from semid.data.registry import register_dataset
from semid.errors import SemidError
from semid.generators.mmgrec import MMGRecConfig
from semid.ids import SemanticIDs
from semid.models import (
    available_models,
    build_model,
    is_generator,
    load_model,
    model_class,
    model_config,
    save_model,
)
from semid.quantization import build_quantizer
from semid.ranking import BeamRanker, ScoreRanker, ranker_for
from semid.runs import command_line, load_run, read_metrics, update_metrics, write_run
from semid.tasks import EvalOptions, IndexSource, get_task, load_predictor
from semid.tasks import recommend as recommend_module
from semid.tasks.recommend import RecommendSpec, rank_split
from semid.training import TrainConfig

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [3, 4]
TINY = {  # one tiny config per registered model; a new model must add one here
    "avg": {"codebook_sizes": SIZES, "query_dim": 8, "d_model": 16},
    **{name: {"codebook_sizes": SIZES, **config} for name, config in TINY_GENERATORS.items()},
    "pop": {"num_items": 12},
    "promptdsi": {"codebook_sizes": SIZES, "encoder_config": TINY_BERT, "prompt_layer": 1, "prompt_length": 2,
                  "pool_sizes": [3], "top_n": 1, "d_model": 16, "num_heads": 2, "num_layers": 1, "d_ff": 32},
    "sasrec": {"num_items": 12, "max_len": 4, "dim": 16, "heads": 2, "layers": 1},
}  # fmt: skip


def one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message and "Traceback" not in message
    return message


# --- (a) typed configs ------------------------------------------------------------------------


def test_model_config_unknown_field_is_one_line_naming_it():
    with pytest.raises(SemidError) as error:
        RecommendSpec(dataset="tiny", model="mmgrec", model_config={"dim": 16, "bogus": 1})
    message = one_line(error)
    assert (
        message.startswith("--model-config") and "'bogus'" in message and "MMGRecConfig" in message
    )


def test_model_config_wrong_type_is_one_line_naming_it():
    with pytest.raises(SemidError) as error:
        RecommendSpec(dataset="tiny", model="mmgrec", model_config={"dim": "wide"})
    assert "--model-config: field 'dim' must be an integer" in one_line(error)
    with pytest.raises(SemidError, match=r"field 'codebook_sizes'\[1\] must be an integer"):
        config_from_dict(MMGRecConfig, {"codebook_sizes": [3, 2.5]}, "--model-config")
    with pytest.raises(SemidError, match="field 'trie_softmax' must be true or false"):
        config_from_dict(MMGRecConfig, {"trie_softmax": 1}, "--model-config")
    assert config_from_dict(MMGRecConfig, {"dropout": 0}, "x").dropout == 0.0  # an int is a number


def test_model_config_json_errors_are_one_line():
    with pytest.raises(SemidError, match="--model-config is not valid JSON"):
        parse_json_object("{dim: 1", "--model-config")
    with pytest.raises(SemidError, match="--model-config must be a JSON object"):
        parse_json_object("[1]", "--model-config")


@pytest.mark.parametrize(
    ("name", "fields", "message"),
    [
        ("mmgrec", {"dim": 0}, "field 'dim' must be >= 1, got 0"),
        ("mmgrec", {"heads": 3}, "dim 64 must be divisible by heads 3"),
        ("sasrec", {"dropout": 1.5}, "field 'dropout' must be in [0, 1), got 1.5"),
        ("sasrec", {"dim": 30, "heads": 4}, "dim 30 must be divisible by heads 4"),
        ("tiger", {"num_layers": 0}, "field 'num_layers' must be >= 1"),
        ("tiger", {"attention_dropout": -0.1}, "field 'attention_dropout' must be in [0, 1)"),
        ("avg", {"temperature": 0}, "field 'temperature' must be > 0"),
        ("promptdsi", {"prompt_layer": -1}, "field 'prompt_layer' must be >= 0"),
        ("promptdsi", {"d_model": 100, "num_heads": 3}, "d_model 100 must be divisible by num_heads 3"),
        # JSON's NaN and Infinity parse in Python: refused for every float field
        ("mmgrec", {"item_loss": float("nan")}, "field 'item_loss' must be a finite number, got nan"),
        ("mmgrec", {"item_mix": float("inf")}, "field 'item_mix' must be a finite number, got inf"),
        ("sasrec", {"dropout": float("nan")}, "field 'dropout' must be a finite number"),
    ],
)  # fmt: skip
def test_model_config_values_a_model_cannot_be_built_with_are_one_line(name, fields, message):
    with pytest.raises(SemidError) as error:
        model_config(name, fields, "--model-config")
    assert one_line(error).startswith("--model-config: ") and message in one_line(error)


@pytest.mark.parametrize("name", sorted(TINY))
def test_model_limits_name_fields_and_rules_that_exist(name):
    cls = model_class(name).config_class
    fields = {f.name for f in dataclasses.fields(cls)}
    assert set(getattr(cls, "LIMITS", {})) <= fields
    assert set(getattr(cls, "LIMITS", {}).values()) <= set(RULES)
    assert set(getattr(cls, "DIVIDES", ())) <= fields
    config_from_dict(cls, TINY[name], "tiny")  # the tests' tiny configs are within the limits


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ('{"bogus": 1}', "'bogus'"),
        ('{"dim": "wide"}', "field 'dim'"),
        ('{"heads": 5}', "divisible"),
        ('{"item_loss": NaN}', "field 'item_loss' must be a finite number"),
    ],
)
def test_cli_model_config_errors_before_any_work(tmp_path, capsys, config, field):
    code = main(["train", "recommender", "--dataset", "ml-100k", "--index", str(tmp_path / "idx"),
                 "--model", "mmgrec", "--model-config", config, "--out", str(tmp_path / "run")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and len(err.strip().splitlines()) == 1 and field in err
    assert not (tmp_path / "run").exists()


# --- (b) one save format for every registered model --------------------------------------------


def test_every_registered_model_has_a_tiny_config():
    assert set(available_models()) == set(TINY)


@pytest.mark.parametrize("name", sorted(TINY))
def test_save_load_round_trip_of_every_model(name, tmp_path):
    torch.manual_seed(0)
    model = build_model(name, TINY[name])
    if name == "pop":
        model.fit_counts_(torch.tensor([0, 3, 3, 7]))  # a fitted buffer must survive the trip
    save_model(model, tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    assert meta["format_version"] == 2 and meta["kind"] == "model" and meta["name"] == name
    loaded = load_model(tmp_path / "m")
    assert type(loaded) is type(model) and not loaded.training
    assert loaded.config == model.config
    before, after = model.state_dict(), loaded.state_dict()
    assert before.keys() == after.keys()
    for key, value in before.items():
        assert torch.equal(value, after[key]), key


def test_load_model_refuses_another_kind_and_a_newer_format(tmp_path):
    q = build_quantizer("rqkmeans:2x4").fit(
        torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    )
    q.save_pretrained(tmp_path / "q")
    with pytest.raises(SemidError) as error:
        load_model(tmp_path / "q")
    assert "holds a quantizer, not a model" in one_line(error)

    save_model(build_model("pop", TINY["pop"]), tmp_path / "m")
    meta = json.loads((tmp_path / "m" / "config.json").read_text())
    (tmp_path / "m" / "config.json").write_text(json.dumps({**meta, "format_version": 3}))
    with pytest.raises(SemidError) as error:
        load_model(tmp_path / "m")
    assert "newer semid (format 3)" in one_line(error)
    with pytest.raises(SemidError, match="is not a saved model"):
        load_model(tmp_path / "nothing")


# --- (c) run manifests --------------------------------------------------------------------------


def tiny_run(path, model="pop"):
    """A recommend run folder over 12 items (index, model, manifest), written without training."""
    ids = SemanticIDs(
        [f"m{j}" for j in range(12)], torch.cartesian_prod(*map(torch.arange, SIZES)), SIZES
    )
    q = build_quantizer("rqkmeans:2x4").fit(
        torch.randn(40, 8, generator=torch.Generator().manual_seed(0))
    )
    ids.save(path / "index", quantizer=q)
    save_model(build_model(model, TINY[model]), path / "model")
    write_run(path, "recommend", RecommendSpec(dataset="none", model=model), {"trained_items": 12})
    return ids


def test_load_run_without_a_manifest(tmp_path):
    tiny_run(tmp_path)
    (tmp_path / "manifest.json").unlink()
    with pytest.raises(SemidError) as error:
        load_run(tmp_path)
    assert "not a run directory (no manifest.json)" in one_line(error)
    with pytest.raises(SemidError) as error:  # an index folder passed where a run goes
        load_run(tmp_path / "index")
    assert (
        "is an index (from `semid index build`), not a run; pass the folder `semid train` wrote"
        in one_line(error)
    )


def test_load_run_with_a_damaged_manifest(tmp_path):
    tiny_run(tmp_path)
    (tmp_path / "manifest.json").write_text('{"format_version": 1, "task": ')
    with pytest.raises(SemidError) as error:
        load_run(tmp_path)
    assert "manifest.json is damaged" in one_line(error)
    (tmp_path / "manifest.json").write_text('["not", "a", "manifest"]')
    with pytest.raises(SemidError) as error:
        load_run(tmp_path)
    assert "is not a semid run manifest" in one_line(error)


def test_runs_of_every_earlier_format_load_and_a_newer_one_is_refused(tmp_path):
    """A run is written in the current format; one of format 1 (before 2026-12-05) still loads, and
    one a newer semid wrote is refused with the fix, not misread."""
    from semid.manifest import RUN_FORMAT, read_manifest

    tiny_run(tmp_path)
    manifest = json.loads((tmp_path / "manifest.json").read_text())
    assert manifest["format_version"] == RUN_FORMAT == 2
    for version in range(1, RUN_FORMAT + 1):
        (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format_version": version}))
        assert read_manifest(tmp_path)["task"] == manifest["task"]
    (tmp_path / "manifest.json").write_text(json.dumps({**manifest, "format_version": 3}))
    with pytest.raises(
        SemidError, match=r"written by a newer semid \(run format 3\); upgrade semid"
    ):
        load_run(tmp_path)


def test_load_run_of_another_task(tmp_path):
    tiny_run(tmp_path)
    assert load_run(tmp_path, "recommend").task == "recommend"
    with pytest.raises(SemidError) as error:
        load_run(tmp_path, "retrieve")
    assert "is a recommend run, not a retrieve run" in one_line(error)


# --- (d) the search path against brute force ---------------------------------------------------


def catalogue() -> SemanticIDs:
    """10 of the 12 possible IDs, rows in a shuffled order."""
    every = torch.cartesian_prod(*map(torch.arange, SIZES))
    codes = every[torch.randperm(len(every), generator=torch.Generator().manual_seed(0))[:10]]
    return SemanticIDs([f"m{j}" for j in range(10)], codes, SIZES)


def histories(ids: SemanticIDs) -> tuple[dict, torch.Tensor]:
    """A batch of 3 histories (with ID codes) and what each query has seen (B, M), PAD = -1."""
    rows = torch.tensor([[-1, -1, 2, 5], [1, 3, 4, 0], [-1, 7, 7, 9]])
    batch = {
        "users": torch.arange(3),
        "items": rows,
        "times": torch.arange(4).repeat(3, 1) * 10,
        "history_codes": ids.codes[rows.clamp(min=0)].masked_fill((rows < 0)[..., None], -1),
    }
    seen = torch.tensor([[-1, -1, 2, 5], [0, 1, 3, 4], [-1, -1, 7, 9]])
    return batch, seen


def brute_force(
    scores: torch.Tensor, seen: torch.Tensor, k: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Rows and scores (B, k) of the k best unseen rows of full scores (B, N), by plain sorting."""
    out_rows, out_scores = [], []
    for b in range(len(scores)):
        allowed = [r for r in range(scores.shape[1]) if r not in seen[b].tolist()]
        best = sorted(allowed, key=lambda r: -float(scores[b, r]))[:k]
        out_rows.append(best + [-1] * (k - len(best)))
        out_scores.append([float(scores[b, r]) for r in best] + [float("-inf")] * (k - len(best)))
    return torch.tensor(out_rows), torch.tensor(out_scores)


@pytest.mark.parametrize("k", [3, 7])
def test_score_ranker_matches_brute_force(k):
    ids = catalogue()
    batch, seen = histories(ids)
    torch.manual_seed(0)
    model = build_model("sasrec", {**TINY["sasrec"], "num_items": len(ids)}).eval()
    ranker = ranker_for(model, ids)
    assert isinstance(ranker, ScoreRanker)
    got = ranker.rank(batch, k, seen)
    rows, scores = brute_force(model.score_rows(batch).detach(), seen, k)
    assert torch.equal(got.rows, rows)
    torch.testing.assert_close(got.scores, scores)
    assert torch.equal(got.codes[got.rows >= 0], ids.codes[got.rows[got.rows >= 0]])
    assert (got.codes[got.rows < 0] == -1).all()  # user 1 has only 6 unseen items: padding


@pytest.mark.parametrize("k", [3, 7])
def test_beam_ranker_matches_brute_force(k):
    """With as many beams as IDs the search is exact: it must equal scoring every ID."""
    ids = catalogue()
    batch, seen = histories(ids)
    torch.manual_seed(0)
    model = build_model("mmgrec", TINY["mmgrec"]).eval()
    ranker = ranker_for(model, ids, num_beams=len(ids))
    assert isinstance(ranker, BeamRanker)
    got = ranker.rank(batch, k, seen)
    steps = model.search_steps(ids.trie(model.codebook_sizes))  # the step model generate searches
    full = []
    with torch.no_grad():
        for code in ids.codes:
            logits, state = steps.start(batch)
            total = torch.log_softmax(logits.float(), -1)[:, code[0]]
            logits, state = steps.step(state, code[0].repeat(len(total)), 1)
            full.append(total + torch.log_softmax(logits.float(), -1)[:, code[1]])
    rows, scores = brute_force(torch.stack(full, 1), seen, k)
    assert torch.equal(got.rows, rows)
    torch.testing.assert_close(got.scores, scores, atol=1e-4, rtol=1e-4)
    for b in range(3):
        assert not set(got.rows[b].tolist()) & set(seen[b][seen[b] >= 0].tolist())


# --- (e) predict agrees with the evaluation protocol -------------------------------------------


def tiny_interactions() -> RecDataset:
    """8 users with 4-7 interactions each over 12 items (deterministic); u8 stands for a user
    loading left out for too few interactions."""
    g = torch.Generator().manual_seed(3)
    users, items, times = [], [], []
    for u in range(8):
        n = 4 + u % 4
        chosen = torch.randperm(12, generator=g)[:n]
        users += [u] * n
        items += chosen.tolist()
        times += [100 * u + t for t in range(n)]
    log = InteractionLog(torch.tensor(users), torch.tensor(items), torch.tensor(times), 8, 12)
    keys = [f"m{j}" for j in range(12)]
    texts = [f"item {j}" for j in range(12)]
    return RecDataset("tiny-tasks", [f"u{u}" for u in range(8)], keys, texts, log,
                      left_out_users=frozenset({"u8"}))  # fmt: skip


@pytest.fixture
def recommend_run(tmp_path):
    """Train a tiny recommend run of ``name`` (one epoch) on a registered tiny dataset."""
    register_dataset("tiny-tasks", tiny_interactions, "test only", kind="interactions")
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(0))
    q = build_quantizer("rqkmeans:2x4").fit(x, seed=0)
    ids = SemanticIDs.from_codes(
        [f"m{j}" for j in range(12)], q.encode(x), q.codebook_sizes, "extra-level"
    )
    ids.save(tmp_path / "idx", quantizer=q)

    def train(name: str, **overrides):
        config = {k: v for k, v in TINY[name].items() if k not in ("codebook_sizes", "num_items")}
        config.update(overrides)
        spec = RecommendSpec(dataset="tiny-tasks", model=name, model_config=config, max_history=4,
                             train=TrainConfig(max_epochs=1, batch_size=8, early_stopping_patience=None))  # fmt: skip
        out = tmp_path / name
        get_task("recommend").train(spec, out, tmp_path / "idx", device="cpu")
        return out

    return train


def test_a_user_left_out_for_few_interactions_is_read_apart_and_an_unknown_one_refused(
    recommend_run,
):
    """A user left out at training is answered from its events as the data is now (u8 has none on
    the index's items, so it is refused saying so); any other unknown user is refused."""
    predictor = load_predictor(recommend_run("pop"))
    with pytest.raises(SemidError, match=r"^user 'u8' has no events on items of the run's index"):
        predictor.check_input({"user": "u8"})
    with pytest.raises(
        SemidError,
        match=r"^unknown user 'ghost'; pass a user of the run's data, such as 'u\d+', or a history$",
    ):
        predictor.check_input({"user": "ghost"})


def test_an_unknown_key_is_answered_with_a_key_that_holds_it(recommend_run):
    """A user who drops a key's prefix ('3' for 'u3') is shown the key meant, and a history of an
    unknown item a key of the index."""
    predictor = load_predictor(recommend_run("pop"))
    with pytest.raises(
        SemidError, match=r"^unknown user '3'; pass a user of the run's data, such as 'u3', or"
    ):
        predictor.check_input({"user": "3"})
    with pytest.raises(
        SemidError,
        match=r"^unknown item 'ghost' in the history; use keys of the run's index, such as '\w+'$",
    ):
        predictor.check_input({"history": ["ghost"]})


@pytest.mark.parametrize("name", ["mmgrec", "pop"])
def test_predict_for_a_test_user_is_the_evaluated_ranking(recommend_run, name):
    out = recommend_run(name)
    predictor = load_predictor(out)
    k = 3
    answers = predictor.predict([{"user": f"u{u}", "split": "test"} for u in range(8)], k=k)

    task = get_task("recommend")
    run = load_run(out)
    spec = task.spec_of(run)
    data = task.load_data(spec, run.ids, run)
    codes = run.ids.codes if is_generator(run.model) else None
    users, ranking, _, _ = rank_split(
        task.ranker(run, spec, EvalOptions()), data, "test", k, codes, spec.max_history
    )
    assert users.tolist() == list(range(8))
    for u, answer in enumerate(answers):
        expected = [run.ids.keys[r] for r in ranking.rows[u].tolist() if r >= 0]
        assert answer["keys"] == expected, f"user u{u}"
        torch.testing.assert_close(torch.tensor(answer["scores"]), ranking.scores[u][: len(expected)].float(),
                                   atol=1e-5, rtol=1e-5)  # fmt: skip


def test_a_retrain_interrupted_while_writing_the_run_leaves_the_earlier_run(
    recommend_run, tmp_path, monkeypatch
):
    """The run's index, model and config are written as one change: a retrain on another index
    stopped (Ctrl-C) between the index and the model leaves the earlier run, not a new index beside
    the old model."""
    out = recommend_run("mmgrec")
    files = ["index/codes.safetensors", "model/model.safetensors", "config.json", "manifest.json"]
    before = {name: (out / name).read_bytes() for name in files}
    x = torch.randn(12, 8, generator=torch.Generator().manual_seed(5))
    q = build_quantizer("rqkmeans:2x4").fit(x, seed=5)
    other = SemanticIDs.from_codes(
        [f"m{j}" for j in range(12)], q.encode(x), q.codebook_sizes, "extra-level"
    )
    other.save(tmp_path / "idx2", quantizer=q)

    def interrupted(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(recommend_module, "save_model", interrupted)
    config = {k: v for k, v in TINY["mmgrec"].items() if k not in ("codebook_sizes", "num_items")}
    spec = RecommendSpec(dataset="tiny-tasks", model="mmgrec", model_config=config, max_history=4,
                         train=TrainConfig(max_epochs=1, batch_size=8, early_stopping_patience=None))  # fmt: skip
    with pytest.raises(KeyboardInterrupt):
        get_task("recommend").train(spec, out, tmp_path / "idx2", resume=False, device="cpu")
    assert {name: (out / name).read_bytes() for name in files} == before
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]
    load_run(out)


def test_evaluate_and_add_name_the_argument_a_caller_got_wrong(recommend_run, tmp_path):
    """evaluate's options as a dict, or add's source as an IndexSource, are told as such (they
    failed with an AttributeError and a TypeError)."""
    run, task = recommend_run("pop"), get_task("recommend")
    with pytest.raises(SemidError, match="options must be an EvalOptions, got dict"):
        task.evaluate(run, {"split": "valid"})
    with pytest.raises(
        SemidError, match="source must be the path of the items' file or folder, got IndexSource"
    ):
        task.add(run, IndexSource(dataset="tiny-tasks"))


@pytest.mark.parametrize("device", ["gpu", "cuda:99"])
def test_train_refuses_a_device_it_would_not_train_on(tmp_path, device):
    """Task.train checks its device as the CLI does: "gpu" (or a GPU this machine lacks) trained
    on the CPU without a word."""
    spec = RecommendSpec(dataset="ml-100k", model="pop")
    with pytest.raises(SemidError, match=f"--device.*{device}"):
        get_task("recommend").train(spec, tmp_path / "run", tmp_path / "idx", device=device)
    assert not (tmp_path / "run").exists()


def test_a_retrain_drops_the_metrics_of_the_model_it_replaces(recommend_run):
    """metrics.json holds figures of the run's model: a retrain replaces the model, so the test
    figures of the earlier one are not kept beside it."""
    out = recommend_run("mmgrec")
    update_metrics(out, "test", {"ndcg@10": 0.5})
    recommend_run("mmgrec")
    assert "test" not in read_metrics(out)


def test_mmgrec_distance_relation_reaches_the_run_history_length(recommend_run):
    model = load_run(recommend_run("mmgrec")).model  # max_history 4, max_distance left out
    assert model.config.max_distance == 4 and model.relation_emb["distance"].num_embeddings == 5
    # resuming that run with another distance would load weights of the wrong shape: refused
    with pytest.raises(
        SemidError,
        match="model config changed since the checkpoint .*max_distance 4 -> 2; it follows "
        "--model-config and options such as --max-history\\); restore them",
    ):
        recommend_run("mmgrec", max_distance=2)


def test_training_fits_the_cooccurrence_table_from_train_events_only(recommend_run):
    out = recommend_run("mmgrec", relations=["time", "cooccur"])
    run = load_run(out)
    data = get_task("recommend").load_data(get_task("recommend").spec_of(run), run.ids, run)
    rows, ptr = data.train_sequences()
    expected = neighbour_table(rows, ptr, len(run.ids), window=8, k=32)
    assert torch.equal(run.model.cooccur_rows, expected[0])
    assert torch.equal(run.model.cooccur_counts, expected[1])
    assert int(run.model.cooccur_counts.sum()) > 0
    (answer,) = load_predictor(out).predict([{"history": ["m3", "m0", "m7"]}], k=4)
    assert len(answer["keys"]) == 4


@pytest.mark.parametrize("name", ["mmgrec", "pop"])
def test_predict_for_a_new_history_gives_k_valid_unseen_items(recommend_run, name):
    predictor = load_predictor(recommend_run(name))
    history = ["m3", "m0", "m7", "m3"]
    (answer,) = predictor.predict([{"history": history}], k=5)
    keys = answer["keys"]
    assert len(keys) == 5 == len(set(keys)) and not set(keys) & set(history)
    assert all(k in {f"m{j}" for j in range(12)} for k in keys)
    assert answer["scores"] == sorted(answer["scores"], reverse=True)
    with pytest.raises(SemidError, match="unknown item 'nope'"):
        predictor.predict([{"history": ["nope"]}], k=5)


def test_subset_positions_spread_evenly_over_the_whole_range():
    """``--users N`` / ``--queries N``: N positions from the first to the last, in order (the first
    N would be a biased estimate: a collection's first documents, the lowest-numbered users)."""
    from semid.tasks.base import subset_positions

    assert subset_positions(10, 3).tolist() == [0, 4, 9]
    assert subset_positions(5, None).tolist() == subset_positions(5, 9).tolist() == [0, 1, 2, 3, 4]
    assert subset_positions(1000, 4).tolist() == [0, 333, 666, 999]


def test_relative_data_paths_given_to_the_library_are_kept_absolute(tmp_path, monkeypatch):
    """A run trained from the library on `RecommendSpec(dataset="data/log.csv")` kept the path as
    given, and was "gone" when evaluated from another folder (the CLI resolved it)."""
    (tmp_path / "data").mkdir()
    rows = [f"u{u},m{(u * 3 + t) % 12},{100 * u + t}" for u in range(8) for t in range(5)]
    (tmp_path / "data" / "log.csv").write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    monkeypatch.chdir(tmp_path)
    task = get_task("recommend")
    source = IndexSource(dataset=Path("data/log.csv"))  # a Path as well as a str
    task.build_index(source, "rqkmeans:2x4", tmp_path / "idx")
    assert SemanticIDs.load(tmp_path / "idx").metadata["dataset"] == str(
        tmp_path / "data" / "log.csv"
    )
    spec = RecommendSpec(dataset="data/log.csv", model="pop", train=TrainConfig(max_epochs=1))
    task.train(spec, tmp_path / "run", tmp_path / "idx", device="cpu")
    assert load_run(tmp_path / "run").spec["dataset"] == str(tmp_path / "data" / "log.csv")
    monkeypatch.chdir(tmp_path / "data")
    assert "recall@10" in task.evaluate(load_run(tmp_path / "run"), EvalOptions(ks=(10,)))
    by_folder, loaded = task.evaluate(tmp_path / "run"), task.evaluate(load_run(tmp_path / "run"))
    assert by_folder["recall@10"] == loaded["recall@10"]  # a run's folder is loaded


@pytest.mark.parametrize(
    "options, words",
    [
        ({"ks": ()}, r"ks must hold at least one cut-off, e.g. ks=\(5, 10\)"),
        ({"ks": 10}, r"ks must be a sequence, got 10; write e.g. ks=\(5, 10\)"),
        ({"ks": (2.5,)}, "k must be an integer, got 2.5"),
        ({"ks": (0,)}, "k must be >= 1, got 0"),
        ({"num_beams": 0}, "num_beams must be an integer >= 1, got 0"),
        ({"max_users": 0}, "max_users must be an integer >= 1, got 0"),
        ({"device": "tpu"}, "--device must be cpu, cuda, cuda:N or auto"),
    ],
)
def test_eval_options_given_by_the_library_are_checked(options, words):
    """They failed inside the evaluation (``max() arg is an empty sequence``), or were read as
    something else (``num_beams=0`` as the run's)."""
    with pytest.raises(SemidError, match=words):
        EvalOptions(**options)
    assert EvalOptions(ks=[np.int64(3)], device="auto").ks == (3,)
    assert EvalOptions(ks=np.array([5, 10])).ks == (5, 10)  # an array of cut-offs is a sequence


@pytest.mark.parametrize(
    ("argv0", "recorded"),
    [
        ("/usr/bin/semid", "semid"),
        ("/site-packages/semid/__main__.py", "semid"),
        ("run.py", "run.py"),
    ],
)
def test_the_recorded_command_names_the_program_as_typed(monkeypatch, argv0, recorded):
    """`python -m semid train ...` is recorded as `semid train ...` (it was `__main__.py train ...`)."""
    monkeypatch.setattr(sys, "argv", [argv0, "train", "recommender"])
    assert command_line() == f"{recorded} train recommender"


def test_eval_options_take_the_splits_semid_eval_takes():
    """``split="train"`` evaluated the training targets without a word; neither the command line
    nor the docs offer it."""
    assert EvalOptions(split="valid").split == "valid"
    with pytest.raises(SemidError, match="split must be 'valid' or 'test', got 'train'"):
        EvalOptions(split="train")


@pytest.mark.parametrize(
    "options, flag", [({"item_mix": 1.0}, "--item-mix"), ({"cold_share": 0.2}, "--cold-share")]
)
def test_a_generator_only_option_on_a_scorer_names_the_option_given(tmp_path, options, flag):
    """Both options were named whichever was given, with no fix."""
    tiny_run(tmp_path, model="sasrec")
    run = load_run(tmp_path)
    task = get_task("recommend")
    with pytest.raises(SemidError, match=f"^{flag} needs a generator run .one that generates semantic IDs.; "
                                         f"this sasrec run scores items directly: leave out {flag}$"):  # fmt: skip
        task.ranker(run, task.spec_of(run), EvalOptions(**options))
