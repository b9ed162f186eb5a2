"""The one indexing path: fit a quantizer and give every item a unique semantic ID; add items later.

``build_ids`` fits the quantizer on item vectors (N, D), encodes them and resolves collisions with
the named strategy. ``add_items`` encodes new items with the quantizer saved beside an index, adds
them (new disambiguation tokens where their ID is taken) and saves the index, after checking that
a model (if given) can still emit every ID.
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any

from torch import Tensor

from semid.errors import SemidError
from semid.ids import SemanticIDs, load_quantizer
from semid.quantization import Quantizer, build_quantizer
from semid.runs import check_vocabulary


def build_ids(
    keys: list[str],
    x: Tensor,
    spec: str | Quantizer,
    collisions: str = "extra-level",
    seed: int = 0,
    popularity: Tensor | None = None,
    metadata: dict[str, Any] | None = None,
    encode_x: Tensor | None = None,
    **fit_kwargs: Any,
) -> tuple[SemanticIDs, Quantizer]:
    """Fit ``spec`` (a spec string or an unfitted quantizer) on ``x`` (N, D) and index the items.

    ``encode_x`` (M, D): index these vectors (one per key) instead of the training vectors ``x``
    (e.g. fit on training images, index test images). ``fit_kwargs`` go to ``quantizer.fit``
    (``interactions`` for graph quantizers, ``text_embeddings`` for voken) with ``seed``; the
    caller seeds torch's global generator (learned quantizers draw their initial weights from it).
    Returns the index and the fitted quantizer; ``metadata`` gets ``seed`` and ``fit_seconds``."""
    quantizer = build_quantizer(spec) if isinstance(spec, str) else spec
    started = time.perf_counter()
    quantizer.fit(quantizer.check_input(x), seed=seed, **fit_kwargs)
    fit_seconds = time.perf_counter() - started
    items = x if encode_x is None else quantizer.check_input(encode_x)
    if len(items) != len(keys):
        raise SemidError(f"{len(keys)} keys for {len(items)} item vectors; give one key per item")
    raw = quantizer.encode(items)
    distances = quantizer.last_level_distances(items) if collisions == "reassign" else None
    ids = SemanticIDs.from_codes(
        list(keys),
        raw,
        quantizer.codebook_sizes,
        collisions,
        distances=distances,
        popularity=popularity,
        quantizer_spec=str(quantizer.spec),
        metadata={**(metadata or {}), "seed": seed, "fit_seconds": round(fit_seconds, 3)},
    )
    return ids, quantizer


def add_items(
    index_path: str | os.PathLike, keys: list[str], x: Tensor, model: Any = None
) -> tuple[SemanticIDs, Tensor]:
    """Encode ``x`` (M, D) with the index's saved quantizer, add the items, save the index; returns
    the grown index and the new items' codes (M, L). With ``model``, IDs outside its vocabulary are
    refused before anything is written."""
    index_path = Path(index_path)
    ids = SemanticIDs.load(index_path)
    quantizer = load_quantizer(index_path)
    codes = ids.add(keys, quantizer.encode(quantizer.check_input(x)))
    if model is not None:
        check_vocabulary(model, ids, str(index_path.parent))
    ids.save(index_path, quantizer=quantizer)
    return ids, codes
