"""A user-item log keyed by the rows of an embeddings index (``--embeddings`` + ``--interactions``).

The log is read as ``--dataset`` reads data (:func:`semid.tasks.items.recommendation_dataset`: a
registered dataset, a MovieLens folder, or an interactions file in any table format); its items are
then renumbered to the rows of the embeddings' keys, and an item without a row stops the run."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from semid.data.logs import InteractionLog
from semid.errors import SemidError
from semid.wording import counted


def keyed_by_rows(
    log: InteractionLog, item_keys: Sequence[str], source: str | Path
) -> InteractionLog:
    """``log`` with its items renumbered to the rows of ``item_keys`` (the keys of an embeddings
    file); an item without a row stops the run, naming ``source``."""
    rows = pd.Index(list(item_keys)).get_indexer(log.item_keys)
    if (rows < 0).any():
        unknown = [k for k, r in zip(log.item_keys, rows, strict=True) if r < 0]
        raise SemidError(
            f"{source} names {counted(len(unknown), 'item')} without an embedding, e.g. {unknown[0]!r}; "
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
