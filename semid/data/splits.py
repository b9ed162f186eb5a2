"""Leave-one-out split by time, and the fixed-length histories a sequential recommender reads.

Protocol (docs/protocols.md, "Recommendation"): each user's interactions are ordered by timestamp;
the last one is the test target, the second to last the validation target, the rest is train.
Users with fewer than 3 interactions keep all of them in train and are neither validated nor
tested (MovieLens has none: every user rated 20+ movies).

Ties: events of one user with the same timestamp are ordered by item key as a string (Python's
code-point order: "10" < "9"), or by item id when the log carries no keys. The order depends only
on the data, never on row order, so the same log with its rows shuffled gives the same split.
`chronological_order` is the one place this rule lives.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from semid.data.logs import InteractionLog

PAD = -1  # item id used for padding in histories; never a real item


@dataclass
class Histories:
    """Targets with the items each user saw just before them, left-padded with PAD.

    Row b is user `users[b]`; `items[b, -lengths[b]:]` are its last <= T items in time order, so
    the most recent item is always in the last column (the SASRec convention).
    """

    users: Tensor  # (B,) int64
    items: Tensor  # (B, T) int64, PAD on the left
    lengths: Tensor  # (B,) int64, number of real items per row
    targets: Tensor  # (B,) int64, the item to predict


@dataclass
class LeaveOneOutSplit:
    """Leave-one-out split of one log; see the module docstring for the protocol."""

    train: InteractionLog  # train events, grouped by user, in time order within a user
    valid_users: Tensor  # (V,) int64
    valid_items: Tensor  # (V,) int64
    test_users: Tensor  # (V,) int64, the same users as valid_users
    test_items: Tensor  # (V,) int64
    # The whole log in split order (CSR by user): user u's events, oldest first, are
    # sequence_items[ptr[u]:ptr[u + 1]]; its last two are its valid and test targets.
    sequence_users: Tensor  # (E,) int64
    sequence_items: Tensor  # (E,) int64
    ptr: Tensor  # (num_users + 1,) int64
    max_history: int = 50

    def histories(self, which: str) -> Histories:
        """Valid or test targets with up to `max_history` items before each (test sees valid's item)."""
        if which not in ("valid", "test"):
            raise ValueError(f"which must be 'valid' or 'test', got {which!r}")
        offset = 2 if which == "valid" else 1
        return self.histories_at(self.ptr[self.test_users + 1] - offset)

    def train_positions(self) -> Tensor:
        """(P,) sequence positions of train events with an earlier train event: next-item examples.

        `histories_at(train_positions())` gives every (history, next item) pair inside train.
        """
        train = train_mask(self.sequence_users, self.ptr)
        start = self.ptr[self.sequence_users]
        first = torch.arange(len(train)) == start
        return torch.nonzero(train & ~first).squeeze(1)

    def histories_at(self, positions: Tensor) -> Histories:
        """The event at each sequence position (B,) as target, with the <= max_history events before it."""
        users = self.sequence_users[positions]
        lengths = torch.clamp(positions - self.ptr[users], max=self.max_history)
        cols = torch.arange(-self.max_history, 0)  # (T,) offsets back from the target
        source = positions[:, None] + cols[None, :]  # (B, T)
        real = cols[None, :] >= -lengths[:, None]
        items = torch.where(real, self.sequence_items[source.clamp(min=0)], PAD)
        return Histories(users, items, lengths, self.sequence_items[positions])


def train_mask(sequence_users: Tensor, ptr: Tensor) -> Tensor:
    """(E,) bool over a user-grouped sequence: True for train events (all but each user's last two)."""
    counts = ptr[1:] - ptr[:-1]
    rank = torch.arange(len(sequence_users)) - ptr[sequence_users]  # position within the user
    per_user = counts[sequence_users]
    return (per_user < 3) | (rank < per_user - 2)


def chronological_order(log: InteractionLog) -> Tensor:
    """(E,) permutation grouping events by user, each user's in time order, ties by item key."""
    by_item = torch.sort(item_ranks(log)[log.items], stable=True).indices
    # Stable sorts by time, then by user, keep the previous order within each tie.
    by_time = by_item[torch.sort(log.timestamps[by_item], stable=True).indices]
    return by_time[torch.sort(log.users[by_time], stable=True).indices]


def item_ranks(log: InteractionLog) -> Tensor:
    """(num_items,) int64: each item's rank among the item keys in string order (ids if no keys)."""
    if log.item_keys is None:
        return torch.arange(log.num_items)
    if len(log.item_keys) != log.num_items:
        raise ValueError(f"{len(log.item_keys)} item keys for {log.num_items} items")
    order = sorted(range(log.num_items), key=lambda i: str(log.item_keys[i]))
    ranks = torch.empty(log.num_items, dtype=torch.int64)
    ranks[torch.tensor(order, dtype=torch.int64)] = torch.arange(log.num_items)
    return ranks


def leave_one_out(
    log: InteractionLog, max_history: int = 50, order: Tensor | None = None
) -> LeaveOneOutSplit:
    """Split `log` by the leave-one-out protocol; histories hold at most `max_history` items.

    ``order``: ``chronological_order(log)`` when the caller has it already (it sorts every event)."""
    if max_history < 1:
        raise ValueError(f"max_history must be >= 1, got {max_history}")
    if order is None:
        order = chronological_order(log)
    users, items, timestamps = log.users[order], log.items[order], log.timestamps[order]
    counts = torch.bincount(log.users, minlength=log.num_users)
    ptr = torch.zeros(log.num_users + 1, dtype=torch.int64)
    ptr[1:] = torch.cumsum(counts, 0)
    train = train_mask(users, ptr)
    evaluated = torch.nonzero(counts >= 3).squeeze(1)
    last = ptr[evaluated + 1]  # one past each evaluated user's final event
    return LeaveOneOutSplit(
        train=InteractionLog(
            users[train],
            items[train],
            timestamps[train],
            log.num_users,
            log.num_items,
            log.item_keys,
        ),
        valid_users=evaluated,
        valid_items=items[last - 2],
        test_users=evaluated,
        test_items=items[last - 1],
        sequence_users=users,
        sequence_items=items,
        ptr=ptr,
        max_history=max_history,
    )
