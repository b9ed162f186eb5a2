"""Item co-occurrence in interaction sequences: for every item, its most frequent neighbours.

Two items co-occur when one follows the other within ``window`` events of the same user's
sequence (either order; an item never co-occurs with itself). Counts come from TRAINING
sequences only, so no validation or test target leaks in. Each item keeps its ``k`` most
frequent neighbours (ties: lower row first) in a fixed-size table, the form a model can save
as a buffer and look up in batches (:func:`pair_counts`). The cost is linear in the number of
events (``2 * window`` pairs each), never quadratic in the catalogue.
"""

from __future__ import annotations

import torch
from torch import Tensor

NO_NEIGHBOUR = torch.iinfo(torch.long).max  # fills a table row past an item's last neighbour


def neighbour_table(
    items: Tensor, ptr: Tensor, num_items: int, window: int, k: int
) -> tuple[Tensor, Tensor]:
    """Top-``k`` co-occurring neighbours of each item in the sequences ``items[ptr[u]:ptr[u + 1]]``.

    Returns ``neighbours`` (num_items, k) int64, each row sorted ascending and filled with
    ``NO_NEIGHBOUR`` past its last neighbour, and ``counts`` (num_items, k) int64 beside them
    (0 on filler)."""
    items, ptr = items.long(), ptr.long()
    user = torch.repeat_interleave(torch.arange(len(ptr) - 1), ptr[1:] - ptr[:-1])
    firsts, seconds = [], []
    for gap in range(1, window + 1):
        same_user = user[gap:] == user[:-gap]
        a, b = items[:-gap][same_user], items[gap:][same_user]
        distinct = a != b
        firsts += [a[distinct], b[distinct]]
        seconds += [b[distinct], a[distinct]]
    first, second = torch.cat(firsts), torch.cat(seconds)
    pairs, counts = torch.unique(first * num_items + second, return_counts=True)
    first, second = pairs // num_items, pairs % num_items
    # most frequent first within each item (unique's order is by item, then neighbour: stable sorts keep it)
    order = torch.sort(-counts, stable=True).indices
    order = order[torch.sort(first[order], stable=True).indices]
    first, second, counts = first[order], second[order], counts[order]
    starts = torch.searchsorted(first, first, side="left")
    rank = torch.arange(len(first)) - starts
    keep = rank < k
    neighbours = torch.full((num_items, k), NO_NEIGHBOUR, dtype=torch.long)
    table_counts = torch.zeros(num_items, k, dtype=torch.long)
    neighbours[first[keep], rank[keep]] = second[keep]
    table_counts[first[keep], rank[keep]] = counts[keep]
    neighbours, by_row = neighbours.sort(dim=1)
    return neighbours, table_counts.gather(1, by_row)


def pair_counts(neighbours: Tensor, counts: Tensor, rows: Tensor) -> Tensor:
    """Co-occurrence counts (B, T, T) between every pair of rows (B, T) of a table from
    :func:`neighbour_table`: count[b, i, j] is how often rows[b, j] is among rows[b, i]'s kept
    neighbours, 0 when it is not kept or either row is outside the table (PAD, items added later)."""
    num_items = neighbours.shape[0]
    known = (rows >= 0) & (rows < num_items)
    safe = rows.clamp(0, max(num_items - 1, 0))
    table = neighbours[safe]  # (B, T, K)
    query = rows[:, None, :].expand(-1, rows.shape[1], -1).contiguous()  # (B, T, T): column j
    slot = torch.searchsorted(table, query).clamp(max=table.shape[-1] - 1)
    hit = (table.gather(-1, slot) == query) & known[:, :, None] & known[:, None, :]
    return torch.where(hit, counts[safe].gather(-1, slot), 0)
