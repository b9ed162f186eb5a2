"""Interaction files keyed by item key: CSV/TSV with `user`, `item` and optional `timestamp` columns."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pandas as pd
import torch

from semid.data.movielens import InteractionLog
from semid.errors import SemidError


def read_interactions(path: str | Path, item_keys: Sequence[str]) -> InteractionLog:
    """Read a user-item log whose `item` column holds keys of `item_keys`; items keep that order.

    The separator is guessed (comma or tab); without a timestamp column, file order is time order.
    Timestamp ties are broken by item key (semid.data.splits)."""
    path = Path(path)
    if not path.is_file():
        raise SemidError(f"interactions file {path} not found")
    try:
        table = pd.read_csv(path, sep=None, engine="python", dtype=str, keep_default_na=False)
    except (pd.errors.ParserError, pd.errors.EmptyDataError, UnicodeDecodeError) as e:
        raise SemidError(
            f"cannot read interactions file {path}: {str(e).splitlines()[0]}"
        ) from None
    missing = {"user", "item"} - set(table.columns)
    if missing:
        raise SemidError(
            f"{path} needs columns user, item (and optionally timestamp); missing {', '.join(sorted(missing))}"
        )
    if table.empty:
        raise SemidError(f"interactions file {path} has no rows")
    row_of = {k: i for i, k in enumerate(item_keys)}
    items = table["item"].map(row_of)
    unknown = items.isna()
    if unknown.any():
        raise SemidError(
            f"{int(unknown.sum())} interactions in {path} name items without an embedding, "
            f"e.g. {table['item'][unknown].iloc[0]!r}; give keys that match --keys"
        )
    users, user_keys = pd.factorize(table["user"], sort=False)
    if "timestamp" in table.columns:
        try:
            stamps = torch.tensor(pd.to_numeric(table["timestamp"]).astype("int64").to_numpy())
        except ValueError:
            raise SemidError(f"{path}: the timestamp column must hold integers (seconds)") from None
    else:
        stamps = torch.arange(len(table), dtype=torch.long)
    return InteractionLog(
        users=torch.as_tensor(users, dtype=torch.long),
        items=torch.tensor(items.to_numpy(dtype="int64")),
        timestamps=stamps,
        num_users=len(user_keys),
        num_items=len(item_keys),
        item_keys=list(item_keys),
    )
