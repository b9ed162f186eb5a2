"""Sequential-recommendation data: a leave-one-out split whose items are index rows, and its batches.

Every item is referred to by its row in the semantic-ID index (``SemanticIDs``), so new items added
with ``semid index add`` are new rows. A batch is a dict of tensors:

- ``users`` (B,), ``items`` (B, T) history rows left-padded with PAD (-1), ``times`` (B, T) seconds
  (0 on padding), ``history_codes`` (B, T, L) (-1 on padding);
- one-target examples add ``targets`` (B,) and ``target_codes`` (B, L), and, for evaluation,
  ``seen`` (B, M): every row the user interacted with before the target (not only the last T),
  sorted, left-padded with PAD;
- whole-sequence examples (causal models such as SASRec train on every position at once) add
  ``next_items`` (B, T), the item after each position (PAD where none), and ``next_codes`` (B, T, L).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from semid.data.logs import RecDataset
from semid.data.splits import PAD, LeaveOneOutSplit, chronological_order, leave_one_out, train_mask
from semid.errors import SemidError
from semid.ids import SemanticIDs, codes_of_rows


@dataclass
class RecData:
    """A leave-one-out split whose items are index rows, plus the timestamp of every event."""

    split: LeaveOneOutSplit  # sequence_items hold index rows, not dataset item ids
    times: Tensor  # (E,) timestamps (int64 or float64 seconds) in the split's sequence order
    num_users: int
    num_items: int  # rows in the index

    def positions(self, which: str) -> Tensor:
        """Sequence positions (U,) of the valid or test targets, or of every train target ('train')."""
        s = self.split
        if which == "train":
            return s.train_positions()
        if which not in ("valid", "test"):
            raise SemidError(f"unknown split {which!r}; choose train, valid or test")
        return s.ptr[s.test_users + 1] - (2 if which == "valid" else 1)

    def seen_before(self, positions: Tensor, users: Tensor | None = None) -> Tensor:
        """Every row each user interacted with before each position (B,) -> (B, M) sorted, PAD-padded.

        ``users`` (B,): whose sequences the positions belong to (needed for a position just past a
        user's last event); default: read from the positions."""
        s = self.split
        users = s.sequence_users[positions] if users is None else users
        starts = s.ptr[users]
        lengths = positions - starts
        width = int(lengths.max()) if len(positions) else 0
        cols = torch.arange(width)
        real = cols < lengths[:, None]
        rows = torch.where(
            real,
            s.sequence_items[(starts[:, None] + cols).clamp(max=len(s.sequence_items) - 1)],
            PAD,
        )
        return rows.sort(dim=1).values

    def popularity(self) -> Tensor:
        """Train interactions per index row (num_items,) float."""
        return torch.bincount(self.train_items(), minlength=self.num_items).double()

    def train_items(self) -> Tensor:
        """Index rows of every train event (E_train,)."""
        return self.train_sequences()[0]

    def train_sequences(self) -> tuple[Tensor, Tensor]:
        """Every user's train events as CSR: index rows (E_train,) and ptr (num_users + 1,), user
        u's events being ``rows[ptr[u]:ptr[u + 1]]``, oldest first."""
        s = self.split
        train = train_mask(s.sequence_users, s.ptr)
        per_user = torch.bincount(s.sequence_users[train], minlength=len(s.ptr) - 1)
        ptr = torch.cat([per_user.new_zeros(1), per_user.cumsum(0)])
        return s.sequence_items[train], ptr


def prepare_data(dataset: RecDataset, ids: SemanticIDs, max_history: int = 50) -> RecData:
    """Split a RecDataset by leave-one-out and map its items to the rows of ``ids``."""
    log = dataset.interactions
    missing = [k for k in dataset.item_keys if k not in ids]
    if missing:
        padded = next((k for k in ids.keys if k != k.strip()), None)
        why = (f": the index keeps ids with spaces around them (e.g. {padded!r}), as semid read "
               "them before it trimmed them; rebuild the index (and retrain its runs) from the "
               "file") if padded is not None else (
               "; build the index from the same dataset (semid index build --dataset ...)")  # fmt: skip
        raise SemidError(f"{len(missing)} items of {dataset.name} are not in the index (e.g. "
                         f"{missing[0]!r}){why}")  # fmt: skip
    row_of_item = ids.rows_of_keys(dataset.item_keys)
    order = chronological_order(log)  # sorted once, for the split and for its times
    split = leave_one_out(log, max_history=max_history, order=order)
    split = dataclasses.replace(split, sequence_items=row_of_item[split.sequence_items])
    times = log.timestamps[order]
    return RecData(split, times, log.num_users, len(ids))


def gather_history(
    data: RecData, positions: Tensor, max_len: int, users: Tensor | None = None
) -> dict[str, Tensor]:
    """Histories of up to ``max_len`` events before each position (B,): users, items, times (B, T).

    ``users`` (B,): as in :meth:`RecData.seen_before`."""
    s = data.split
    users = s.sequence_users[positions] if users is None else users
    lengths = torch.clamp(positions - s.ptr[users], max=max_len)
    cols = torch.arange(-max_len, 0)
    source = (positions[:, None] + cols).clamp(min=0)  # (B, T)
    real = cols >= -lengths[:, None]
    items = torch.where(real, s.sequence_items[source], PAD)
    times = torch.where(real, data.times[source], 0)
    return {"users": users, "items": items, "times": times}


class TargetDataset(Dataset):
    """One example per target position: the history before it and the target row.

    ``with_seen`` adds ``seen`` (every earlier row of the user) for evaluation that excludes them."""

    def __init__(
        self, data: RecData, positions: Tensor, max_len: int, with_seen: bool = False
    ) -> None:
        self.data, self.positions, self.max_len = data, positions, max_len
        self.with_seen = with_seen

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> int:
        return int(self.positions[i])

    def collate(self, positions: list[int]) -> dict[str, Tensor]:
        """Batch of B positions -> history (B, T) and targets (B,)."""
        pos = torch.tensor(positions, dtype=torch.long)
        batch = gather_history(self.data, pos, self.max_len)
        batch["targets"] = self.data.split.sequence_items[pos]
        if self.with_seen:
            batch["seen"] = self.data.seen_before(pos)
        return batch


class SequenceDataset(Dataset):
    """Each user's train events cut into windows of ``max_len`` targets, newest window first.

    Window j of a user holds inputs e[a-1 .. b-2] and next items e[a .. b-1], so every train event
    but each user's first is a target exactly once per epoch."""

    def __init__(self, data: RecData, max_len: int) -> None:
        s = data.split
        counts = s.ptr[1:] - s.ptr[:-1]
        n_train = torch.where(counts < 3, counts, counts - 2)
        start, end = s.ptr[:-1] + 1, s.ptr[:-1] + n_train  # each user's targets lie in [start, end)
        windows = (end - start).clamp(min=0).add(max_len - 1).div(max_len, rounding_mode="floor")
        user = torch.repeat_interleave(torch.arange(len(counts)), windows)  # (W,) window's user
        first = torch.repeat_interleave(windows.cumsum(0) - windows, windows)  # its user's first
        newer = torch.arange(len(user)) - first  # (W,) windows of the user after this one
        self.data, self.max_len = data, max_len
        self.ends = end[user] - newer * max_len
        self.lengths = (self.ends - start[user]).clamp(max=max_len)

    def __len__(self) -> int:
        return len(self.ends)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, rows: list[int]) -> dict[str, Tensor]:
        """Batch of B windows -> items, times, next_items (B, T)."""
        idx = torch.tensor(rows, dtype=torch.long)
        ends, lengths = self.ends[idx], self.lengths[idx]
        batch = gather_history(
            self.data, ends - 1, self.max_len
        )  # the inputs end one before the last target
        cols = torch.arange(-self.max_len, 0)
        real = cols >= -lengths[:, None]
        batch["items"] = batch["items"].masked_fill(~real, PAD)
        batch["times"] = batch["times"].masked_fill(~real, 0)
        nxt = (ends[:, None] + cols).clamp(min=0)
        batch["next_items"] = torch.where(real, self.data.split.sequence_items[nxt], PAD)
        return batch


class CodeCollator:
    """Wraps a dataset's collate and adds the semantic-ID codes of every item column."""

    def __init__(self, collate: Any, codes: Tensor | None) -> None:
        self.collate, self.codes = collate, codes

    def __call__(self, examples: list[Any]) -> dict[str, Tensor]:
        batch = self.collate(examples)
        if self.codes is not None:
            for key, name in (
                ("items", "history_codes"),
                ("targets", "target_codes"),
                ("next_items", "next_codes"),
            ):
                if key in batch:
                    batch[name] = codes_of_rows(self.codes, batch[key])
        return batch


def slice_users(dataset: RecDataset, users: int) -> RecDataset:
    """A copy of a RecDataset with only the interactions of users 0..users-1."""
    log = dataset.interactions
    keep = log.users < users
    sliced = dataclasses.replace(
        log,
        users=log.users[keep],
        items=log.items[keep],
        timestamps=log.timestamps[keep],
        num_users=min(users, log.num_users),
    )
    return dataclasses.replace(dataset, interactions=sliced, user_keys=dataset.user_keys[:users])


def keep_indexed_items(dataset: RecDataset, ids: SemanticIDs) -> tuple[RecDataset, int]:
    """A copy of a RecDataset without the items ``ids`` has no row for, nor their events (users
    stay, maybe with no events); and how many events went."""
    indexed = torch.tensor([k in ids for k in dataset.item_keys], dtype=torch.bool)
    if bool(indexed.all()):
        return dataset, 0
    log = dataset.interactions
    keep = indexed[log.items]
    new_item = torch.cumsum(indexed.long(), 0) - 1  # old item id -> id among the kept items
    item_keys = [k for k, ok in zip(dataset.item_keys, indexed.tolist(), strict=True) if ok]
    texts = dataset.item_texts
    if texts is not None:
        texts = [t for t, ok in zip(texts, indexed.tolist(), strict=True) if ok]
    kept = dataclasses.replace(
        log,
        users=log.users[keep],
        items=new_item[log.items[keep]],
        timestamps=log.timestamps[keep],
        num_items=len(item_keys),
        item_keys=item_keys,
    )
    dataset = dataclasses.replace(dataset, interactions=kept, item_keys=item_keys, item_texts=texts)
    return dataset, int((~keep).sum())
