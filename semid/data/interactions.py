"""An interactions file keyed by the rows of an embeddings index (``--embeddings`` + ``--interactions``).

The file is read exactly as ``--dataset interactions.csv`` reads it (semid.data.interaction_files:
any table format, the usual column names or ``columns``, integer, decimal or ISO 8601 timestamps,
users with fewer than ``min_interactions`` events dropped); its items are then renumbered to the
rows of ``item_keys``, and an item without a row stops the run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from semid.data.interaction_files import load_interaction_files
from semid.data.movielens import InteractionLog
from semid.errors import SemidError


def read_interactions(
    path: str | Path,
    item_keys: Sequence[str],
    columns: dict[str, str] | None = None,
    min_interactions: int = 3,
) -> InteractionLog:
    """A user-item log whose items are rows of ``item_keys`` (the keys of an embeddings file)."""
    log = load_interaction_files(
        path, columns=columns, min_interactions=min_interactions
    ).interactions
    rows = pd.Index(list(item_keys)).get_indexer(log.item_keys)
    if (rows < 0).any():
        unknown = [k for k, r in zip(log.item_keys, rows, strict=True) if r < 0]
        raise SemidError(
            f"{path} names {len(unknown):,} items without an embedding, e.g. {unknown[0]!r}; "
            f"give item ids that match --keys"
        )
    return InteractionLog(
        users=log.users,
        items=torch.from_numpy(rows)[log.items],
        timestamps=log.timestamps,
        num_users=log.num_users,
        num_items=len(item_keys),
        item_keys=list(item_keys),
    )
