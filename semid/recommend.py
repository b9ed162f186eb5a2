"""Sequential recommendation on a leave-one-out split: datasets, batches, and full-ranking evaluation.

Every item is referred to by its row in the semantic-ID index (``SemanticIDs``), so new items added
with ``semid index add`` are new rows. A batch is a dict of tensors:

- ``users`` (B,), ``items`` (B, T) history rows left-padded with PAD (-1), ``times`` (B, T) seconds
  (0 on padding), ``history_codes`` (B, T, L) (-1 on padding);
- one-target examples add ``targets`` (B,) and ``target_codes`` (B, L), and, for evaluation,
  ``seen`` (B, M): every row the user interacted with before the target (not only the last T),
  sorted, left-padded with PAD;
- whole-sequence examples (causal models such as SASRec train on every position at once) add
  ``next_items`` (B, T), the item after each position (PAD where none), and ``next_codes`` (B, T, L).

Evaluation follows BENCHMARKS.md: full ranking over all indexed items except those the user has
already interacted with (RecBole's full-sort convention; on MovieLens a target is never a repeat, so
this removes only wrong answers; ``exclude_seen=False`` ranks everything), Recall@k and NDCG@k, top-k
of generators from trie-constrained beam search with beams >= k, and the share of returned IDs that
are not in the index (the invalid-ID rate; 0 under the trie).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

import torch
from torch import Tensor
from torch.utils.data import Dataset

from semid.data.splits import PAD, LeaveOneOutSplit, chronological_order, leave_one_out, train_mask
from semid.errors import SemidError
from semid.ids import SemanticIDs
from semid.metrics import compute_metrics
from semid.trie import PrefixTrie


@dataclass
class RecData:
    """A leave-one-out split whose items are index rows, plus the timestamp of every event."""

    split: LeaveOneOutSplit  # sequence_items hold index rows, not dataset item ids
    times: Tensor  # (E,) int64 timestamps in the split's sequence order
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

    def seen_before(self, positions: Tensor) -> Tensor:
        """Every row each user interacted with before each position (B,) -> (B, M) sorted, PAD-padded."""
        s = self.split
        users = s.sequence_users[positions]
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
        s = self.split
        return s.sequence_items[train_mask(s.sequence_users, s.ptr)]


def prepare_data(dataset: Any, ids: SemanticIDs, max_history: int = 50) -> RecData:
    """Split a RecDataset by leave-one-out and map its items to the rows of ``ids``."""
    log = dataset.interactions
    missing = [k for k in dataset.item_keys if k not in ids._row_of_key]
    if missing:
        raise SemidError(
            f"{len(missing)} items of {dataset.name} are not in the index (e.g. {missing[0]!r}); "
            "build the index from the same dataset (semid index build --dataset ...)"
        )
    row_of_item = ids.rows_of_keys(dataset.item_keys)
    split = leave_one_out(log, max_history=max_history)
    split = dataclasses.replace(split, sequence_items=row_of_item[split.sequence_items])
    times = log.timestamps[chronological_order(log)]
    return RecData(split, times, log.num_users, len(ids))


def gather_history(data: RecData, positions: Tensor, max_len: int) -> dict[str, Tensor]:
    """Histories of up to ``max_len`` events before each position (B,): users, items, times (B, T)."""
    s = data.split
    users = s.sequence_users[positions]
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
        ends, lengths = [], []
        for u in range(len(counts)):
            start, end = (
                int(s.ptr[u]) + 1,
                int(s.ptr[u] + n_train[u]),
            )  # targets lie in [start, end)
            while end > start:
                ends.append(end)
                lengths.append(min(max_len, end - start))
                end -= max_len
        self.data, self.max_len = data, max_len
        self.ends, self.lengths = (
            torch.tensor(ends, dtype=torch.long),
            torch.tensor(lengths, dtype=torch.long),
        )

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


def codes_of_rows(codes: Tensor, rows: Tensor) -> Tensor:
    """Codes (..., L) of index rows (...); -1 codes where the row is PAD."""
    out = codes[rows.clamp(min=0)]
    return out.masked_fill((rows < 0)[..., None], -1)


def seen_mask(seen: Tensor, num_items: int) -> Tensor:
    """bool (B, num_items): True at the rows listed in ``seen`` (B, M, PAD-padded)."""
    mask = torch.zeros(seen.shape[0], num_items + 1, dtype=torch.bool, device=seen.device)
    mask.scatter_(1, torch.where(seen >= 0, seen, num_items), True)  # PAD: the spare column
    return mask[:, :num_items]


def mask_seen(scores: Tensor, seen: Tensor | None) -> Tensor:
    """Scores (B, N) with the rows in ``seen`` (B, M, PAD-padded) set to -inf; unchanged if None."""
    if seen is None or seen.shape[1] == 0:
        return scores
    return scores.masked_fill(seen_mask(seen, scores.shape[1]), float("-inf"))


class Recommender(Protocol):
    """Anything that ranks index rows for a batch of histories."""

    def recommend(self, batch: dict[str, Tensor], k: int) -> Tensor:
        """Top-k index rows (B, k) int64, best first; -1 where the model returned no valid item.

        When the batch holds ``seen`` (B, M), those rows must not be returned."""
        ...


class GeneratorRecommender:
    """A generator plus the index: top-k rows from trie-constrained beam search (beams >= k).

    Cold start (TIGER, Rajput et al. 2023, section 4.3): items added after training (rows >=
    ``trained_items``) were never a training target, so the decoder rarely writes their last code.
    With ``cold_share`` > 0, up to ``floor(cold_share * k)`` of the k slots go to new items whose ID
    shares its first ``cold_prefix`` codes with a generated ID, each placed right after that ID; the
    lowest ranked generated IDs make room."""

    def __init__(
        self,
        model: Any,
        ids: SemanticIDs,
        num_beams: int = 20,
        trie: PrefixTrie | None = None,
        trained_items: int | None = None,
        cold_share: float = 0.0,
        cold_prefix: int = 1,
    ) -> None:
        if not 0.0 <= cold_share <= 1.0:
            raise SemidError(f"cold_share must be in [0, 1], got {cold_share}")
        if not 1 <= cold_prefix < len(model.codebook_sizes):
            raise SemidError(
                f"cold_prefix must be in [1, {len(model.codebook_sizes) - 1}], got {cold_prefix}"
            )
        self.cold_prefix = cold_prefix
        self.model, self.ids, self.num_beams, self.cold_share = model, ids, num_beams, cold_share
        self.trie = (
            trie if trie is not None else PrefixTrie.from_codes(ids.codes, model.codebook_sizes)
        )
        self.leaf_of_row = self.trie.leaf_states(ids.codes)  # (N,) -1 for rows outside the trie
        first_new = len(ids) if trained_items is None else trained_items
        self.cold_rows = torch.arange(first_new, len(ids))  # (C,) rows added after training
        self.cold_keys, order = self._prefix_keys(ids.codes[self.cold_rows]).sort()
        self.cold_rows = self.cold_rows[order]

    def _prefix_keys(self, codes: Tensor) -> Tensor:
        """One int64 per ID (..., L) for its first ``cold_prefix`` codes (mixed radix); -1 for padding."""
        key = torch.zeros(codes.shape[:-1], dtype=torch.int64)
        for level, size in enumerate(self.model.codebook_sizes[: self.cold_prefix]):
            key = key * size + codes[..., level].clamp(min=0)
        return torch.where(codes[..., 0] >= 0, key, -1)

    def recommend(self, batch: dict[str, Tensor], k: int) -> Tensor:
        """Top-k rows (B, k) via beam search with max(num_beams, k) beams, ``seen`` rows excluded."""
        exclude = None
        if "seen" in batch:
            seen = batch["seen"]
            exclude = torch.where(seen >= 0, self.leaf_of_row[seen.clamp(min=0)], -1)
        codes, _ = self.model.generate(
            batch, self.trie, num_beams=max(self.num_beams, k), top_k=k, exclude=exclude
        )
        rows = self.ids.rows_of_codes(codes)  # -1 for padding and for any ID outside the index
        slots = int(self.cold_share * k)
        if slots == 0 or len(self.cold_rows) == 0:
            return rows
        return self._mix_cold(rows, self._prefix_keys(codes), batch.get("seen"), slots)

    def _mix_cold(self, rows: Tensor, keys: Tensor, seen: Tensor | None, slots: int) -> Tensor:
        """Rows (B, k) with up to ``slots`` new items sharing a generated ID's prefix moved in."""
        b, k = rows.shape
        lo = torch.searchsorted(self.cold_keys, keys)  # (B, k) first new item under each prefix
        take = lo[..., None] + torch.arange(slots)  # (B, k, slots): at most `slots` per prefix
        hit = take < len(self.cold_keys)
        take = take.clamp(max=len(self.cold_keys) - 1)
        hit &= (self.cold_keys[take] == keys[..., None]) & (keys[..., None] >= 0)
        cold = torch.where(hit, self.cold_rows[take], -1).view(b, k * slots)
        duplicate = (cold[:, :, None] == rows[:, None, :]).any(-1)  # already generated
        if seen is not None:
            duplicate |= seen_mask(seen, len(self.ids)).gather(1, cold.clamp(min=0))
        cold = cold.masked_fill(duplicate, -1)
        after = (torch.arange(k)[:, None] + 0.5).expand(k, slots).reshape(-1).expand(b, -1)
        # the first `slots` valid candidates of each row, in beam order
        rank = torch.where(cold >= 0, (cold >= 0).cumsum(1), slots + 1)
        keep = rank <= slots
        used = keep.sum(1, keepdim=True)  # (B, 1) new items moved in
        warm_pos = torch.arange(k, dtype=torch.float).expand(b, -1)
        warm_pos = torch.where(torch.arange(k) < k - used, warm_pos, float("inf"))
        cold_pos = torch.where(keep, after, float("inf"))
        order = torch.cat([warm_pos, cold_pos], 1).argsort(dim=1, stable=True)[:, :k]
        return torch.cat([rows, cold], 1).gather(1, order)


def evaluate(
    recommender: Recommender,
    data: RecData,
    which: str = "valid",
    ks: Sequence[int] = (5, 10),
    codes: Tensor | None = None,
    max_len: int = 50,
    batch_size: int = 256,
    max_users: int | None = None,
    targets_in: Tensor | None = None,
    exclude_seen: bool = True,
) -> dict[str, float]:
    """Recall@k, NDCG@k, invalid-ID rate and queries/s over the valid or test targets.

    ``codes`` (num_items, L) adds semantic-ID columns to the batches (generators need them);
    ``max_users`` evaluates a fixed, evenly spaced subset (cheap validation during training);
    ``targets_in`` (num_items,) bool keeps only the queries whose target row is marked (e.g. new items);
    ``exclude_seen`` removes the items each user interacted with before the target from the ranking."""
    positions = data.positions(which)
    if targets_in is not None:
        positions = positions[targets_in[data.split.sequence_items[positions]]]
    if max_users is not None and max_users < len(positions):
        positions = positions[torch.linspace(0, len(positions) - 1, max_users).long()]
    if len(positions) == 0:
        raise SemidError(
            f"no {which} queries to evaluate (check the data slice or the target filter)"
        )
    dataset = TargetDataset(data, positions, max_len, with_seen=exclude_seen)
    collate = CodeCollator(dataset.collate, codes)
    k = max(ks)
    ranked, targets = [], []
    started = time.perf_counter()
    with torch.no_grad():
        for lo in range(0, len(dataset), batch_size):
            batch = collate(positions[lo : lo + batch_size].tolist())
            ranked.append(recommender.recommend(batch, k))
            targets.append(batch["targets"])
    seconds = time.perf_counter() - started
    metrics = compute_metrics(
        torch.cat(ranked), torch.cat(targets), ks=ks, names=("recall", "ndcg")
    )
    metrics["queries_per_s"] = len(positions) / max(seconds, 1e-9)
    metrics["num_queries"] = float(len(positions))
    return metrics
