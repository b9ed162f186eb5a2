import torch

from semid.cooccurrence import NO_NEIGHBOUR, neighbour_table, pair_counts

# two users: 0 1 2 1 and 3 1 0 (CSR)
ITEMS = torch.tensor([0, 1, 2, 1, 3, 1, 0])
PTR = torch.tensor([0, 4, 7])


def test_counts_pairs_within_the_window_in_both_orders_and_never_across_users():
    rows, counts = neighbour_table(ITEMS, PTR, num_items=5, window=2, k=4)
    table = {
        (i, int(r)): int(c)
        for i in range(5)
        for r, c in zip(rows[i], counts[i], strict=True)
        if c > 0
    }
    # user 0: 0-1, 1-2, 2-1 (gap 1), 0-2 (gap 2; 1-1 is no pair); user 1: 3-1, 1-0, 3-0
    expected = {(0, 1): 2, (0, 2): 1, (0, 3): 1, (1, 2): 2, (1, 3): 1}
    expected = {**expected, **{(b, a): c for (a, b), c in expected.items()}}
    assert table == expected
    assert (rows[4] == NO_NEIGHBOUR).all() and (counts[4] == 0).all()  # item 4 never occurs
    # user 0's last item (1) and user 1's first (3) are adjacent in ITEMS but not a pair: 1-3 is
    # counted once, from user 1 (3 then 1)
    assert table[(1, 3)] == 1


def test_window_one_keeps_only_neighbouring_events():
    rows, counts = neighbour_table(ITEMS, PTR, num_items=5, window=1, k=4)
    assert int(counts[0][rows[0] == 2].sum()) == 0  # 0 and 2 are two events apart


def test_keeps_the_k_most_frequent_neighbours_ties_to_the_lower_row_sorted_by_row():
    rows, counts = neighbour_table(ITEMS, PTR, num_items=5, window=2, k=2)
    # item 0: 1 (2 times), then 2 and 3 once each: 2 wins the tie
    assert rows[0].tolist() == [1, 2] and counts[0].tolist() == [2, 1]
    assert (rows[:, :-1] <= rows[:, 1:]).all()  # each row sorted, for searchsorted


def test_pair_counts_look_up_every_pair_and_ignore_pad_and_rows_added_later():
    rows, counts = neighbour_table(ITEMS, PTR, num_items=5, window=2, k=4)
    history = torch.tensor([[-1, 0, 1, 7], [3, 1, 0, 2]])  # PAD, and row 7 added after fitting
    got = pair_counts(rows, counts, history)
    assert got.shape == (2, 4, 4)
    assert got[0, 1, 2] == 2 and got[0, 2, 1] == 2
    assert (got[0, 0] == 0).all() and (got[0, :, 0] == 0).all()  # PAD
    assert (got[0, 3] == 0).all() and (got[0, :, 3] == 0).all()  # unknown row
    assert got[1, 0, 1] == 1 and got[1, 0, 3] == 0 and got[1, 2, 2] == 0  # 3-2 never; no self pairs


def test_the_table_depends_on_the_events_not_on_the_order_of_users():
    a = neighbour_table(ITEMS, PTR, num_items=5, window=3, k=3)
    swapped = torch.cat([ITEMS[4:], ITEMS[:4]])
    b = neighbour_table(swapped, torch.tensor([0, 3, 7]), num_items=5, window=3, k=3)
    assert all(torch.equal(x, y) for x, y in zip(a, b, strict=True))
