"""The item head of a generator and the hybrid ranking that mixes it with beam search."""

import pytest
import torch
from conftest import random_ml100k_index, train_on_batch
from test_recommend import tiny_dataset

from semid.data.sequences import CodeCollator, TargetDataset, prepare_data
from semid.errors import SemidError
from semid.generator import Generator
from semid.hybrid import (
    MIX_GRID,
    Candidates,
    HybridRanker,
    choose_mix,
    choose_mixes,
    neighbour_weights,
)
from semid.ids import SemanticIDs
from semid.models import build_model
from semid.ranking import BeamRanker, ranker_for
from semid.tasks.recommend import RecommendSpec, evaluate_ranker, tune_item_mix

pytestmark = pytest.mark.usefixtures("one_thread")

SIZES = [4, 4]


def make_ids(n=12):
    codes = torch.tensor([[r // 4, r % 4] for r in range(n)])
    return SemanticIDs([f"m{r}" for r in range(n)], codes, SIZES)


def make(ids, **kw):
    torch.manual_seed(0)
    cfg = {"dim": 16, "heads": 2, "layers": 1, "ff_mult": 1, "dropout": 0.0, "item_loss": 1.0}
    config = {**cfg, **kw, "codebook_sizes": SIZES, "num_items": len(ids)}
    return build_model("mmgrec", config).eval()


def queries(ids, b=3, t=4):
    items = (torch.arange(b)[:, None] * 3 + torch.arange(t)) % len(ids)
    return {"items": items, "history_codes": ids.codes[items], "times": torch.zeros(b, t).long()}


def test_item_loss_sizes_the_head_and_trains_it():
    ids = make_ids()
    config = build_model("mmgrec", {"item_loss": 0.5, "codebook_sizes": SIZES}).config
    model_cls = type(build_model("mmgrec", {"codebook_sizes": SIZES}))
    assert model_cls.sized_for(config, ids).num_items == len(ids)
    model = make(ids).train()
    batch = queries(ids)
    nxt = (batch["items"] + 5) % len(ids)
    batch.update(next_items=nxt, next_codes=ids.codes[nxt])
    train_on_batch(model, batch)
    head = model.item_log_probs(batch)
    assert head.shape == (3, len(ids)) and torch.allclose(head.exp().sum(1), torch.ones(3))
    assert (head.argmax(1) == nxt[:, -1]).all()
    assert not build_model("mmgrec", {"codebook_sizes": SIZES}).has_item_head()


def test_score_codes_gives_the_beam_search_log_probs():
    ids = make_ids()
    model, batch = make(ids), queries(ids)
    trie = ids.trie(SIZES)
    codes, scores = model.generate(batch, trie, num_beams=5, top_k=5)
    assert torch.allclose(model.score_codes(batch, trie, codes), scores, atol=1e-5)


def test_mix_zero_is_plain_beam_search():
    ids = make_ids()
    model, batch = make(ids, item_mix=0.0), queries(ids)
    seen = torch.tensor([[0, 1], [-1, 4], [-1, -1]])
    ranker = ranker_for(model, ids, num_beams=4)
    assert type(ranker) is BeamRanker
    plain = BeamRanker(model, ids, num_beams=4).rank(batch, 3, seen)
    got = ranker.rank(batch, 3, seen)
    assert torch.equal(got.rows, plain.rows) and torch.equal(got.scores, plain.scores)
    model.config.item_mix = 1.0
    assert isinstance(ranker_for(model, ids, num_beams=4), HybridRanker)


def test_an_item_the_head_strongly_prefers_is_ranked_first_and_seen_items_never():
    ids = make_ids()
    model, batch = make(ids, item_mix=1.0), queries(ids)
    seen = torch.tensor([[0], [0], [0]])
    everything = BeamRanker(model, ids, num_beams=12).rank(batch, 11, seen).rows
    favourite = int(everything[0, -1])  # the ID decoder's least likely unseen row for query 0
    head = torch.full((3, len(ids)), -50.0)
    head[:, favourite] = 0.0
    head[:, 0] = 0.0  # also strongly preferred, but seen by every query
    model.item_log_probs = lambda inputs: head
    beams = BeamRanker(model, ids, num_beams=1).rank(batch, 1, seen).rows
    assert beams[0, 0] != favourite  # beam search alone does not find it
    top = HybridRanker(model, ids, num_beams=1, mix=1.0).rank(batch, 3, seen).rows
    assert (top[:, 0] == favourite).all() and not (top == 0).any()
    cands = HybridRanker(model, ids, num_beams=1).candidates(batch, 3, seen)
    assert not (cands.top(0.0, 3, ids).rows == 0).any()  # also with weight 0 over the candidates


def test_only_candidates_the_beams_missed_are_teacher_forced(monkeypatch):
    """The head's top rows that the beams found too were scored again (as row 0), as were the
    empty slots of queries with fewer new candidates."""
    ids = make_ids()
    model, batch = make(ids, item_mix=1.0), queries(ids)
    scored = []
    score_codes = model.score_codes
    monkeypatch.setattr(
        model, "score_codes", lambda b, t, c: scored.append(c) or score_codes(b, t, c)
    )
    cands = HybridRanker(model, ids, num_beams=4).candidates(batch, 3)
    beams = BeamRanker(model, ids, num_beams=4).rank(batch, 4).rows
    missed = [
        set(row.tolist()) - set(found.tolist()) - {-1}
        for row, found in zip(cands.rows, beams, strict=True)
    ]
    assert scored[0].shape[1] == max(map(len, missed))  # no column of empty slots only
    for row, found, new in zip(cands.rows, beams, missed, strict=True):
        assert set(row[4:].tolist()) - {-1} == new and (row[4 + len(new) :] == -1).all()
        assert torch.equal(row[:4], found)
    head = torch.full((3, len(ids)), float("-inf"))
    head.scatter_(1, beams, 0.0)  # the head knows the beams' rows only
    model.item_log_probs = lambda inputs: head
    scored.clear()
    HybridRanker(model, ids, num_beams=4).candidates(batch, 3)
    assert not scored  # the head found nothing new: nothing is teacher-forced


def test_mixed_ranking_encodes_each_history_once_with_the_same_answers(monkeypatch):
    ids = make_ids()
    model, batch = make(ids, item_mix=1.0), queries(ids)
    seen = torch.tensor([[0], [-1], [5]])
    calls = []
    encode = model._encode
    monkeypatch.setattr(model, "_encode", lambda *a: calls.append(1) or encode(*a))
    once = HybridRanker(model, ids, num_beams=4, mix=1.0).rank(batch, 3, seen)
    assert len(calls) == 1  # beam search, the head and the candidates' scores share it
    monkeypatch.setattr(type(model), "encoding_once", Generator.encoding_once)
    again = HybridRanker(model, ids, num_beams=4, mix=1.0).rank(batch, 3, seen)
    assert len(calls) == 4  # without reuse: one encoding per pass
    assert torch.equal(once.rows, again.rows) and torch.equal(once.scores, again.scores)
    model.train()
    with model.encoding_once():  # training never reuses an encoding
        model.encode(batch["history_codes"], batch["times"], batch["items"])
        model.encode(batch["history_codes"], batch["times"], batch["items"])
    assert len(calls) == 6


def test_choose_mix_picks_the_best_valid_ndcg_and_the_smallest_on_ties():
    ids = make_ids(4)
    rows = torch.tensor([[0, 1], [2, 3]])
    gen = torch.tensor([[-1.0, -2.0], [-1.0, -2.0]])
    item = torch.tensor([[-3.0, -0.1], [-3.0, -0.1]])  # the head prefers the second candidate
    parts = [Candidates(rows, gen, item)]
    best, ndcg = choose_mix(parts, torch.tensor([1, 3]), ids, grid=(0.0, 1.0, 2.0), k=1)
    assert best == 1.0 and ndcg == {"0.0": 0.0, "1.0": 1.0, "2.0": 1.0}
    best, _ = choose_mix(parts, torch.tensor([0, 2]), ids, grid=(0.0, 1.0), k=1)
    assert best == 0.0


def test_tuning_sets_the_mixing_weight_from_the_valid_split():
    dataset = tiny_dataset()
    ids = SemanticIDs(list(dataset.item_keys), torch.tensor([[0, 0], [0, 1], [1, 0], [1, 1], [2, 0]]),
                      [3, 2])  # fmt: skip
    data = prepare_data(dataset, ids, max_history=3)
    torch.manual_seed(0)
    model = build_model("mmgrec", {"codebook_sizes": [3, 2], "dim": 8, "heads": 2, "item_loss": 1.0,
                                   "num_items": 5, "item_mix": 123.0})  # fmt: skip
    spec = RecommendSpec(dataset="tiny", model="mmgrec", max_history=3, num_beams=2)
    ndcg, at_best = tune_item_mix(model, ids, data, spec)
    assert model.config.item_mix in {float(w) for w in ndcg}
    # the figures returned are the saved model's: an evaluation at the chosen weight gives them
    evaluated = evaluate_ranker(
        ranker_for(model, ids, 2), data, "valid", codes=ids.codes, max_len=3
    )
    for name in ("recall@5", "recall@10", "ndcg@5", "ndcg@10"):
        assert at_best[name] == pytest.approx(evaluated[name])
    assert at_best["ndcg@10"] == pytest.approx(ndcg[str(model.config.item_mix)])
    ds = TargetDataset(data, data.positions("valid"), 3, with_seen=True)
    batch = CodeCollator(ds.collate, ids.codes)(list(data.positions("valid")))
    seen = batch.pop("seen")
    assert ranker_for(model, ids, 2).rank(batch, 2, seen).rows.shape == (3, 2)


def test_item_mix_override_is_checked():
    ids = make_ids()
    model = make(ids, item_mix=1.0)
    assert type(ranker_for(model, ids, 4, item_mix=0.0)) is BeamRanker
    assert ranker_for(model, ids, 4, item_mix=2.0).mix == 2.0
    for bad in (-1.0, float("nan"), float("inf")):
        with pytest.raises(SemidError, match="must be a finite number >= 0"):
            ranker_for(model, ids, 4, item_mix=bad)
    with pytest.raises(SemidError, match="item head"):
        ranker_for(make(ids, item_loss=0.0), ids, 4, item_mix=1.0)


def test_cli_trains_the_head_tunes_the_weight_and_ranks_new_items(tmp_path):
    import json

    import numpy as np

    from semid.cli.main import main
    from semid.runs import load_run

    keys, x, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    config = {"dim": 16, "heads": 2, "layers": 1, "ff_mult": 1, "item_loss": 1.0, "item_mix": 99.0}
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model", "mmgrec",
                 "--users", "8", "--epochs", "1", "--num-beams", "10",
                 "--model-config", json.dumps(config), "--out", str(run)]) == 0  # fmt: skip
    loaded = load_run(run)
    assert loaded.model.config.item_mix in MIX_GRID  # chosen on valid, saved with the model
    assert "item_mix_valid_ndcg@10" in loaded.state["result"]
    for mix in (["--item-mix", "0"], []):
        assert main(["eval", str(run), "--split", "test", *mix]) == 0
    np.save(tmp_path / "new.npy", x[:2] + 0.01)
    (tmp_path / "new.txt").write_text("new-a\nnew-b\n")
    assert main(["index", "add", str(run), "--items", str(tmp_path / "new.npy"),
                 "--keys", str(tmp_path / "new.txt")]) == 0  # fmt: skip
    # rows beyond the head
    assert main(["eval", str(run), "--split", "test", "--item-mix", "1"]) == 0
    assert main(["predict", str(run), "--history", f"{keys[0]},{keys[1]}", "--k", "5"]) == 0


def test_runs_saved_before_the_item_head_load_without_one(tmp_path):
    import json

    from semid.models import load_model, save_model

    model = make(make_ids())
    assert model.has_item_head()
    save_model(model, tmp_path / "m")
    path = tmp_path / "m" / "config.json"
    saved = json.loads(path.read_text())
    fields = next(v for v in saved.values() if isinstance(v, dict) and "item_loss" in v)
    del fields["item_loss"]
    path.write_text(json.dumps(saved))
    assert not load_model(tmp_path / "m").has_item_head()


def test_lexical_scores_add_candidates_and_mix_into_the_ranking():
    ids = make_ids()
    model, batch = make(ids), queries(ids)
    every = ids.codes[None].expand(3, -1, -1)
    # the generator's last choice
    worst = model.score_codes(batch, ids.trie(SIZES), every).argmin(1)
    lexical = torch.full((3, len(ids)), -10.0)
    # a row the lexical view is sure of, whatever the beams say
    lexical[torch.arange(3), worst] = 0.0
    with_lexical = {**batch, "lexical": lexical}
    ranker = HybridRanker(model, ids, num_beams=2, mix=0.0, lexical_mix=1.0)
    found = ranker.candidates(with_lexical, 2)
    picked = found.rows == worst[:, None]
    assert picked.any(1).all()  # joined the candidates
    torch.testing.assert_close(found.lexical[picked], torch.zeros(3))
    assert torch.equal(ranker.rank(with_lexical, 1).rows[:, 0], worst)
    assert (
        HybridRanker(model, ids, num_beams=2, mix=0.0).rank(with_lexical, 1).rows[:, 0] != worst
    ).all()
    with pytest.raises(SemidError, match="lexical"):
        ranker.rank(batch, 1)  # the model mixes lexical scores but the batch has none
    # the weights are chosen jointly: the lexical weight wins when the lexical favourite is the answer
    (w, lex), ndcg = choose_mixes([found], worst, ids, grid=(0.0, 1.0), lexical_grid=(0.0, 1.0))
    assert lex == 1.0 and ndcg["0.0,1.0"] == 1.0 and ndcg["0.0,0.0"] < 1.0
    plain = HybridRanker(model, ids, num_beams=2).candidates(batch, 2)
    assert plain.lexical is None
    # no scores: no weight
    assert choose_mixes([plain], torch.zeros(3, dtype=torch.long), ids)[0][1] == 0.0


def test_neighbour_weights_average_the_longest_shared_prefix():
    codes = torch.tensor(
        [[0, 0, 0], [0, 0, 1], [0, 1, 0], [1, 0, 0], [0, 0, 2], [0, 1, 3], [2, 0, 0]]
    )
    w = neighbour_weights(codes, trained=4).to_dense()
    assert w.shape == (3, 4)
    assert w[0].tolist() == [0.5, 0.5, 0.0, 0.0]  # shares (0, 0) with rows 0 and 1
    assert w[1].tolist() == [0.0, 0.0, 1.0, 0.0]  # shares (0, 1) with row 2 only
    assert w[2].tolist() == [0.0, 0.0, 0.0, 0.0]  # first code 2: no trained neighbour


def test_added_rows_get_their_neighbours_head_score_and_can_be_recommended():
    """Rows added after training (beyond the head's rows) score as their ID-neighbours do: an added
    item next to the head's favourite reaches the top, one without neighbours stays at the floor."""
    trained = make_ids(6)  # IDs (0, 0..3), (1, 0), (1, 1)
    model, batch = make(trained, item_mix=8.0), queries(trained)
    grown = SemanticIDs(
        [*trained.keys, "new-near", "new-far"],
        torch.cat([trained.codes, torch.tensor([[1, 2], [3, 0]])]),
        SIZES,
    )
    head = torch.full((3, len(trained)), -20.0)
    head[:, 5] = -0.01  # the favourite is row 5, ID (1, 1): "new-near" (1, 2) shares its first code
    model.item_log_probs = lambda inputs: head
    ranker = HybridRanker(model, grown, num_beams=8, mix=8.0)
    scores = ranker._head(batch, None)
    assert scores.shape == (3, 8)
    expected = torch.log(torch.exp(head[0, 4:6]).mean())  # rows 4 and 5 share first code 1
    assert torch.allclose(scores[:, 6], expected.expand(3), atol=1e-5)
    assert torch.allclose(scores[:, 7], head.min(1).values)  # no neighbour: the floor
    top = ranker.rank(batch, 2, None).rows
    assert top.tolist() == [[5, 6]] * 3  # the new neighbour right after the favourite


def test_a_beam_wider_than_the_catalogue_is_searched_as_the_catalogue():
    """A beam per ID already finds every ID: `--num-beams 99999999` in training's validation
    (or anywhere) must not allocate beams that can never fill (it ran out of memory)."""
    ids = make_ids()
    model, batch = make(ids, item_mix=0.0), queries(ids)
    wide, exact = (
        ranker_for(model, ids, num_beams=10**8),
        ranker_for(model, ids, num_beams=len(ids)),
    )
    assert wide.num_beams == len(ids)
    assert torch.equal(wide.rank(batch, 5).rows, exact.rank(batch, 5).rows)
