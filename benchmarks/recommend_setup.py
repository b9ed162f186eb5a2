"""Data and indexes of the recommendation benchmark: budgets, ID recipes, and the cold-start split."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path
from typing import Any

import torch

from semid.data.splits import leave_one_out
from semid.encoders import TextEncoder
from semid.indexing import build_ids
from semid.tasks.specs import default_train

RESULTS = Path(__file__).parent / "results"
RECBOLE_SASREC_R10 = {
    "ml-100k": 0.1220,
    "ml-1m": 0.1856,
}  # docs/baselines.md, RecBole 1.2.1 on this machine
QUANTIZER = "rqkmeans:3x256"
# MMGRec's index: Graph RQ-VAE, or (results before it landed) rqkmeans over graph-smoothed features
GRAPH_QUANTIZERS = ("graph_rqvae:3x256", "smoothed-rqkmeans:3x256")
COLD_SHARES = (0.0, 0.1, 0.2)  # top-10 slots open to new items under a generated prefix (TIGER)
INDEX_OF = {
    "mmgrec": "graph",
    "tiger": "text",
    "sasrec": "text",
    "pop": "text",
}  # IDs do not matter to pop/sasrec

# Training budgets: every model trains on every position of each window at once (TIGER with its
# causal encoder too), so all get the same epochs and early stopping: the CLI's defaults
# (`semid train recommender`), so the CLI and the benchmark give the same figures.
_CLI = default_train()
_BUDGET = {
    f: getattr(_CLI, f) for f in ("max_epochs", "batch_size", "lr", "early_stopping_patience")
}
BUDGETS: dict[str, dict[str, Any]] = {
    **{name: {"train": dict(_BUDGET)} for name in ("sasrec", "mmgrec", "tiger")},
    "pop": {"train": {}},
}


def graph_features(x: torch.Tensor, train: Any) -> torch.Tensor:
    """Item features smoothed over the user-item graph of the train interactions (N, D), L2-normalized.

    mean of x, A x and A^2 x with A the symmetric-normalized item-user-item propagation (LightGCN
    style): a stand-in for ``graph_rqvae`` (MMGRec's Graph RQ-VAE) until that quantizer lands. Items
    without interactions keep their own features."""
    n_users, n_items = train.num_users, train.num_items
    r = torch.sparse_coo_tensor(
        torch.stack([train.users, train.items]), torch.ones(len(train)), (n_users, n_items)
    )
    r = r.coalesce()
    du = torch.bincount(train.users, minlength=n_users).clamp(min=1).float().sqrt()[:, None]
    di = torch.bincount(train.items, minlength=n_items).clamp(min=1).float().sqrt()[:, None]

    def propagate(h: torch.Tensor) -> torch.Tensor:
        users = torch.sparse.mm(r, h / di) / du
        return torch.sparse.mm(r.t(), users / du) / di

    unit = torch.nn.functional.normalize
    h1 = propagate(x)
    return unit(unit(x, dim=1) + unit(h1, dim=1) + unit(propagate(h1), dim=1), dim=1)


def build_index(
    dataset: Any,
    out: Path,
    seed: int = 0,
    graph: bool = False,
    x: torch.Tensor | None = None,
    graph_quantizer: str = GRAPH_QUANTIZERS[0],
) -> float:
    """Embed item texts (cached), fit the quantizer, make IDs unique, save; returns seconds.

    ``graph``: MMGRec's recipe, ``graph_quantizer`` over the train user-item graph and popularity
    collisions; otherwise TIGER's, rqkmeans on text embeddings and an extra disambiguation level
    numbering collisions."""
    started = time.perf_counter()
    if x is None:  # (N, D) text embeddings of dataset.item_texts
        x = TextEncoder().encode(dataset.item_texts, show_progress=False)
    train = leave_one_out(dataset.interactions).train  # valid/test targets must not shape the IDs
    spec = graph_quantizer if graph else QUANTIZER
    fit_kwargs: dict[str, Any] = {}
    if spec == GRAPH_QUANTIZERS[0]:
        fit_kwargs["interactions"] = train
    else:
        if graph:
            x = graph_features(x, train)
        spec = QUANTIZER
    popularity = torch.bincount(train.items, minlength=len(dataset.item_keys))
    strategy = "popularity" if graph else "extra-level"
    ids, q = build_ids(list(dataset.item_keys), x, spec, strategy, seed, popularity=popularity,
                       **fit_kwargs)  # fmt: skip
    ids.save(out, quantizer=q)
    return time.perf_counter() - started


def newest_items(log: Any, frac: float) -> torch.Tensor:
    """Item ids (M,) whose first interaction is the latest: the last ``frac`` of items to appear."""
    first = torch.full((log.num_items,), torch.iinfo(torch.long).max, dtype=torch.long)
    first = first.scatter_reduce(0, log.items, log.timestamps, reduce="amin")
    order = torch.sort(first, stable=True).indices
    return order[len(order) - max(1, int(frac * log.num_items)) :]


def without_items(dataset: Any, drop: torch.Tensor) -> Any:
    """A RecDataset without the items ``drop`` and their interactions (items renumbered)."""
    log = dataset.interactions
    keep_item = torch.ones(log.num_items, dtype=torch.bool)
    keep_item[drop] = False
    new_id = torch.cumsum(keep_item.long(), 0) - 1
    keep = keep_item[log.items]
    sliced = dataclasses.replace(
        log,
        users=log.users[keep],
        items=new_id[log.items[keep]],
        timestamps=log.timestamps[keep],
        num_items=int(keep_item.sum()),
    )
    kept = keep_item.nonzero().squeeze(1).tolist()
    if log.item_keys is not None:
        sliced = dataclasses.replace(sliced, item_keys=[log.item_keys[i] for i in kept])
    return dataclasses.replace(
        dataset,
        interactions=sliced,
        item_keys=[dataset.item_keys[i] for i in kept],
        item_texts=[dataset.item_texts[i] for i in kept],
    )
