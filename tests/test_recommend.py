import math

import pytest
import torch

from semid.data.logs import InteractionLog, RecDataset
from semid.data.sequences import CodeCollator, SequenceDataset, TargetDataset, prepare_data
from semid.errors import SemidError
from semid.ids import SemanticIDs
from semid.ranking import BeamRanker, Ranking, ranker_for, seen_mask
from semid.tasks.base import answers_of
from semid.tasks.recommend import evaluate_ranker, rank_split
from semid.tasks.recommend_predict import UserHistories


def tiny_dataset():
    """3 users; user 0: items 0,1,2,3,4 at times 10..50; user 1: 4,3,2 ; user 2: 1,0,2,3 (file order shuffled)."""
    events = [
        (0, 0, 10),
        (1, 4, 5),
        (0, 1, 20),
        (2, 1, 1),
        (0, 2, 30),
        (1, 3, 6),
        (0, 3, 40),
        (2, 0, 2),
    ]
    events += [(1, 2, 7), (0, 4, 50), (2, 2, 3), (2, 3, 4)]
    u, i, t = (torch.tensor(c) for c in zip(*events, strict=True))
    log = InteractionLog(u, i, t, num_users=3, num_items=5)
    keys = [f"m{j}" for j in range(5)]
    return RecDataset("tiny", ["u0", "u1", "u2"], keys, [f"movie {j}" for j in range(5)], log)


def tiny_ids(order=(4, 3, 2, 1, 0)):
    """Index rows in another order than the dataset's items, to check the mapping."""
    keys = [f"m{j}" for j in order]
    codes = torch.tensor([[r // 2, r % 2] for r in range(5)])
    return SemanticIDs(keys, codes, [3, 2])


def test_prepare_maps_items_to_index_rows():
    data = prepare_data(tiny_dataset(), tiny_ids(), max_history=3)
    row = {f"m{j}": r for r, j in enumerate((4, 3, 2, 1, 0))}
    batch = TargetDataset(data, data.positions("test"), 3).collate(list(data.positions("test")))
    assert batch["users"].tolist() == [0, 1, 2]
    assert batch["targets"].tolist() == [row["m4"], row["m2"], row["m3"]]
    assert batch["items"][0].tolist() == [
        row["m1"],
        row["m2"],
        row["m3"],
    ]  # the last 3 items before the target
    assert batch["items"][1].tolist() == [-1, row["m4"], row["m3"]]
    assert batch["times"][1].tolist() == [0, 5, 6]
    valid = TargetDataset(data, data.positions("valid"), 3).collate(list(data.positions("valid")))
    assert valid["targets"].tolist() == [row["m3"], row["m3"], row["m2"]]


def test_train_sequences_hold_each_users_train_events_in_time_order():
    data = prepare_data(tiny_dataset(), tiny_ids(), max_history=3)
    rows, ptr = data.train_sequences()
    row = {f"m{j}": r for r, j in enumerate((4, 3, 2, 1, 0))}
    per_user = [rows[ptr[u] : ptr[u + 1]].tolist() for u in range(3)]
    # each user's last two events are valid and test targets
    assert per_user == [[row["m0"], row["m1"], row["m2"]], [row["m4"]], [row["m1"], row["m0"]]]


def test_user_histories_count_each_users_events():
    """events and answerable come from one count per read (asked per input of a changed log); a
    user without events on indexed items is not answerable."""
    dataset = tiny_dataset()
    log = dataset.interactions
    log.num_users = 4  # a fourth user, with no events
    data = prepare_data(dataset, tiny_ids())
    histories = UserHistories(data, ["u0", "u1", "u2", "u3"], live=True)
    assert [histories.events(u) for u in ("u0", "u1", "u2", "u3")] == [5, 3, 4, 0]
    assert histories.answerable() == ["u0", "u1", "u2"]


def test_missing_items_are_reported():
    ids = SemanticIDs(["m0", "m1"], torch.tensor([[0, 0], [0, 1]]), [3, 2])
    with pytest.raises(SemidError, match="not in the index"):
        prepare_data(tiny_dataset(), ids)


def test_sequence_windows_cover_every_train_target_once():
    data = prepare_data(tiny_dataset(), tiny_ids(), max_history=2)
    ds = SequenceDataset(data, max_len=2)
    batch = ds.collate(list(range(len(ds))))
    nxt = batch["next_items"]
    # train targets: user 0 has items 0,1,2 in train -> targets 1,2; user 1: 4 -> none; user 2: 1,0 -> 0
    assert int((nxt >= 0).sum()) == 3
    # every next item is the item that follows the input in time
    s = data.split
    for user, items, nexts in zip(
        batch["users"].tolist(), batch["items"].tolist(), nxt.tolist(), strict=True
    ):
        seq = s.sequence_items[s.ptr[user] : s.ptr[user + 1]].tolist()
        for a, b in zip(items, nexts, strict=True):
            if b >= 0:
                assert seq[seq.index(a) + 1] == b


@pytest.mark.parametrize("max_len", [1, 2, 3, 7])
def test_sequence_windows_match_a_loop_over_users(max_len):
    """Oracle: each user's targets [first + 1, first + train events) cut from the newest end into
    windows of max_len, users in id order; users with 0, 1, 2 and many events."""
    counts = [0, 1, 2, 3, 4, 9, 17]
    users = torch.repeat_interleave(torch.arange(len(counts)), torch.tensor(counts))
    items = torch.arange(len(users)) % 5
    log = InteractionLog(users, items, torch.arange(len(users)), len(counts), 5)
    keys = [f"m{j}" for j in range(5)]
    data = prepare_data(RecDataset("t", [f"u{u}" for u in range(len(counts))], keys, None, log),
                        tiny_ids())  # fmt: skip
    ends, lengths, first = [], [], 0
    for n in counts:
        start, end = first + 1, first + (n if n < 3 else n - 2)
        while end > start:
            ends.append(end)
            lengths.append(min(max_len, end - start))
            end -= max_len
        first += n
    ds = SequenceDataset(data, max_len)
    assert (ds.ends.tolist(), ds.lengths.tolist()) == (ends, lengths)


class FixedRanking:
    def __init__(self, ranked):
        self.ranked = ranked

    def rank(self, batch, k, seen=None):
        rows = self.ranked[: batch["items"].shape[0], :k]
        return Ranking(rows, torch.zeros(rows.shape), torch.zeros(*rows.shape, 2, dtype=torch.long))


def test_evaluate_on_a_hand_made_case():
    data = prepare_data(tiny_dataset(), tiny_ids(), max_history=3)
    targets = TargetDataset(data, data.positions("test"), 3).collate(list(data.positions("test")))[
        "targets"
    ]
    t = targets.tolist()
    other = [r for r in range(5) if r not in t]
    ranked = torch.tensor(
        [
            [t[0], -1, -1],  # hit at rank 1
            [other[0], -1, t[1]],  # hit at rank 3; two invalid IDs returned
            [other[0], other[1], -1],  # miss
        ]
    )
    m = evaluate_ranker(FixedRanking(ranked), data, "test", ks=(1, 3), max_len=3)
    assert m["recall@1"] == pytest.approx(1 / 3)
    assert m["recall@3"] == pytest.approx(2 / 3)
    assert m["ndcg@3"] == pytest.approx((1 + 1 / math.log2(4)) / 3)
    assert m["invalid_id_rate"] == pytest.approx(4 / 9)
    assert m["num_queries"] == 3


def test_rank_split_answers_every_query_whatever_the_batch_size():
    """Answers written batch by batch into one ranking equal the rankers' answers in query order,
    also when the batch size does not divide the number of queries; targets follow the queries."""

    class ByUser:  # each query's answers name its user, so misplaced rows show
        def rank(self, batch, k, seen=None):
            rows = batch["users"][:, None] * 10 + torch.arange(k)
            return Ranking(rows, -rows.float(), torch.stack([rows, rows + 1], -1))

    data = prepare_data(tiny_dataset(), tiny_ids(), max_history=3)
    users, whole, targets, _ = rank_split(ByUser(), data, "test", 2, batch_size=100)
    for size in (1, 2):
        _, ranking, batched_targets, _ = rank_split(ByUser(), data, "test", 2, batch_size=size)
        for name in ("rows", "scores", "codes"):
            assert torch.equal(getattr(ranking, name), getattr(whole, name))
        assert torch.equal(batched_targets, targets)
    assert whole.rows.tolist() == [[10 * u, 10 * u + 1] for u in users.tolist()]
    assert torch.equal(targets, data.split.sequence_items[data.positions("test")])


def test_collator_adds_codes_with_padding():
    ids = tiny_ids()
    data = prepare_data(tiny_dataset(), ids, max_history=3)
    ds = TargetDataset(data, data.positions("test"), 3)
    batch = CodeCollator(ds.collate, ids.codes)([int(p) for p in data.positions("test")])
    assert batch["history_codes"].shape == (3, 3, 2)
    assert (batch["history_codes"][1, 0] == -1).all()
    assert torch.equal(batch["target_codes"], ids.codes[batch["targets"]])


def test_seen_holds_every_earlier_item_of_the_user():
    data = prepare_data(tiny_dataset(), tiny_ids(), max_history=2)
    row = {f"m{j}": r for r, j in enumerate((4, 3, 2, 1, 0))}
    ds = TargetDataset(data, data.positions("test"), 2, with_seen=True)
    seen = ds.collate(list(data.positions("test")))["seen"]
    # user 0 saw m0..m3 before its test target (more than max_history=2), user 1 m4 and m3
    assert sorted(r for r in seen[0].tolist() if r >= 0) == sorted(row[f"m{j}"] for j in range(4))
    assert sorted(r for r in seen[1].tolist() if r >= 0) == sorted([row["m4"], row["m3"]])
    assert (seen[1] == -1).sum() == 2 and seen[1].tolist() == sorted(seen[1].tolist())


def test_popularity_and_sasrec_never_return_seen_items():
    from semid.models import build_model

    ids = tiny_ids()
    data = prepare_data(tiny_dataset(), ids, max_history=3)
    batch = TargetDataset(data, data.positions("test"), 3, with_seen=True).collate(
        list(data.positions("test"))
    )
    seen = batch.pop("seen")
    torch.manual_seed(0)
    pop = build_model("pop", {"num_items": 5})
    pop.fit_counts_(data.train_items())
    sasrec = build_model("sasrec", {"num_items": 5, "max_len": 3}).eval()
    for model in (pop, sasrec):
        top = ranker_for(model, ids).rank(batch, 1, seen).rows
        for user in range(3):
            assert int(top[user, 0]) not in seen[user].tolist()
    # user 0 has seen 4 of 5 items: the only one left is its test target
    m = evaluate_ranker(ranker_for(pop, ids), data, "test", ks=(1,), max_len=3)
    kept = evaluate_ranker(
        ranker_for(pop, ids), data, "test", ks=(1,), max_len=3, exclude_seen=False
    )
    assert m["recall@1"] >= 1 / 3 and m["recall@1"] > kept["recall@1"]
    masked = seen_mask(torch.tensor([[-1, 2], [0, 3]]), 4)
    assert masked.tolist() == [[False, False, True, False], [True, False, False, True]]


def test_generator_beam_search_skips_seen_items_without_losing_slots():
    from semid.models import build_model

    ids = tiny_ids()
    data = prepare_data(tiny_dataset(), ids, max_history=3)
    ds = TargetDataset(data, data.positions("test"), 3, with_seen=True)
    batch = CodeCollator(ds.collate, ids.codes)(list(data.positions("test")))
    seen = batch.pop("seen")
    torch.manual_seed(0)
    model = build_model("mmgrec", {"codebook_sizes": [3, 2], "dim": 8, "heads": 2})
    rec = BeamRanker(model, ids, num_beams=2)
    unseen = [5 - int((s >= 0).sum()) for s in seen]  # user 0: 1 item left; others: 3, 1
    top = rec.rank(batch, 2, seen).rows
    for user in range(3):
        returned = [r for r in top[user].tolist() if r >= 0]
        assert len(returned) == min(2, unseen[user])  # every unseen item fits: no slot lost
        assert not set(returned) & set(seen[user].tolist())


class FixedGenerator:
    """Fake generator: always returns the same IDs, best first."""

    codebook_sizes = [3, 3]

    def __init__(self, codes):
        self.codes = torch.tensor(codes)

    def generate(self, batch, trie, num_beams, top_k, exclude=None):
        b = batch["items"].shape[0]
        codes = self.codes[None, :top_k].expand(b, -1, -1)
        return codes, -torch.arange(float(top_k)).expand(b, -1)  # best first


def test_cold_items_under_a_generated_prefix_take_the_reserved_slots():
    # rows 0-3 trained; rows 4 and 5 added later: 4 shares its first code with row 1, 5 with row 0
    codes = torch.tensor([[0, 0], [1, 0], [2, 0], [2, 1], [1, 2], [0, 1]])
    ids = SemanticIDs([f"m{j}" for j in range(6)], codes, [3, 3])
    model = FixedGenerator([[0, 0], [1, 0], [2, 0]])  # generates rows 0, 1, 2
    batch = {"items": torch.full((2, 1), -1)}
    seen = torch.tensor([[-1], [5]])

    def top(share, trained=4):
        return BeamRanker(model, ids, 3, trained, share).rank(batch, 3, seen).rows

    assert top(0.0).tolist() == [[0, 1, 2]] * 2
    # one slot: the new item under the best generated prefix, placed right after it (user 1 saw 5)
    assert top(0.34).tolist() == [[0, 5, 1], [0, 1, 4]]
    # two slots: both new items move in and push out the lowest generated IDs
    assert top(0.67).tolist() == [[0, 5, 4], [0, 1, 4]]
    assert top(0.34, trained=6).tolist() == [[0, 1, 2]] * 2  # nothing was added after training
    with pytest.raises(SemidError, match="cold-share"):
        top(1.5)
    with pytest.raises(SemidError, match="cold-prefix"):
        BeamRanker(model, ids, 3, 4, 0.5, cold_prefix=2)


def test_cold_items_fill_each_slot_once_and_pass_over_seen_ones():
    # rows 0-2 trained; rows 3, 4 and 5 added later: 3 and 5 under first code 0, 4 under code 1
    codes = torch.tensor([[0, 0], [0, 1], [1, 0], [0, 2], [1, 1], [0, 3]])
    ids = SemanticIDs([f"m{j}" for j in range(6)], codes, [3, 4])
    model = FixedGenerator([[0, 0], [0, 1], [1, 0]])  # rows 0 and 1 share their first code
    model.codebook_sizes = [3, 4]
    batch = {"items": torch.full((2, 1), -1)}
    seen = torch.tensor([[-1], [3]])  # user 1 saw row 3, the first new item under code 0

    def top(share):
        return BeamRanker(model, ids, 3, 3, share).rank(batch, 3, seen).rows.tolist()

    # code 0's new items follow row 0, the first ID under it, and fill a slot each once; user 1's
    # seen row 3 is passed over for row 5
    assert top(0.67) == [[0, 3, 5], [0, 5, 4]]
    assert top(0.34) == [[0, 3, 1], [0, 5, 1]]
    no_queries = {"items": torch.full((0, 1), -1)}
    assert BeamRanker(model, ids, 3, 3, 0.67).rank(no_queries, 3).rows.shape == (0, 3)


def test_answers_drop_missing_entries_and_keep_each_inputs_row():
    """answers_of: row i answers input i, best first; -1 rows (fewer answers than k) are left out."""
    ranking = Ranking(
        rows=torch.tensor([[2, 0, -1], [-1, -1, -1]]),
        scores=torch.tensor([[-0.1234567, -2.0, float("-inf")], [float("-inf")] * 3]),
        codes=torch.tensor([[[1, 0], [0, 0], [-1, -1]], [[-1, -1]] * 3]),
    )
    answers = answers_of([{"user": "a"}, {"user": "b"}], ["k0", "k1", "k2"], ranking)
    assert answers == [
        {"input": {"user": "a"}, "keys": ["k2", "k0"], "scores": [-0.123457, -2.0],
         "ids": [[1, 0], [0, 0]]},
        {"input": {"user": "b"}, "keys": [], "scores": [], "ids": []},
    ]  # fmt: skip
