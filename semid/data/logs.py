"""The recommendation data every loader produces: an integer-id interaction log, and the dataset
around it (original keys, item texts, what loading dropped). MovieLens folders
(:mod:`semid.data.movielens`) and interactions files (:mod:`semid.data.interaction_files`) both
load into these."""

from __future__ import annotations

from dataclasses import dataclass, field

from torch import Tensor


@dataclass
class InteractionLog:
    """One row per (user, item) event; ids are integers in [0, num_users) and [0, num_items)."""

    users: Tensor  # (E,) int64
    items: Tensor  # (E,) int64
    timestamps: Tensor  # (E,) seconds: int64, or float64 when some carry fractions
    num_users: int
    num_items: int
    # Original key per item id, when known: it breaks timestamp ties (semid.data.splits).
    item_keys: list[str] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return int(self.users.numel())


@dataclass
class RecDataset:
    """A recommendation dataset: the interaction log plus the original keys and a text per item.

    ``item_texts`` is None when the data came without item texts (an interactions file alone):
    such a dataset needs item embeddings from elsewhere (``--embeddings`` + ``--keys``), so callers
    check ``item_texts is None`` before embedding. ``notes`` says what loading dropped, one line
    each, for the CLI to print."""

    name: str
    user_keys: list[str]  # original user ids; index = integer user id
    item_keys: list[str]  # original item ids (ml-1m via RecBole: title strings); index = item id
    item_texts: list[str] | None  # "Title (year). Genres: a, b", the text to embed per item
    interactions: InteractionLog
    notes: list[str] = field(default_factory=list)
    # keys of the users loading dropped for having fewer than `min_interactions` events
    left_out_users: frozenset[str] = frozenset()
