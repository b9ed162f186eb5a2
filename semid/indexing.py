"""The one indexing path: fit a quantizer and give every item a unique semantic ID; add items later.

``build_ids`` fits the quantizer on item vectors (N, D), encodes them and resolves collisions with
the named strategy. ``add_items`` encodes new items with the quantizer saved beside an index, adds
them (new disambiguation tokens where their ID is taken) and saves the index, after checking that
a model (if given) can still emit every ID.
"""

from __future__ import annotations

import dataclasses
import json
import os
import time
from contextlib import AbstractContextManager
from pathlib import Path
from typing import Any

from torch import Tensor

from semid.atomic import read_json
from semid.collisions import check_collision_strategy, checked_popularity
from semid.defaults import AUTO
from semid.errors import SemidError
from semid.ids import SemanticIDs, load_quantizer
from semid.locking import can_write, write_lock
from semid.quantization import MAX_LEVELS, Quantizer, QuantizerSpec, build_quantizer
from semid.runs import first_level_over
from semid.wording import counted

MIN_ITEMS_PER_CODE = 40  # faiss k-means wants about 39 points per centroid
MAX_CODEBOOK_BYTES = 4 * 2**30
ADD_WAIT_SECONDS = 600  # a second `index add` waits for the first rather than failing
ADD_BUSY_FIX = "run the add again once it is done"  # what an add that waited in vain is told
# what an add to a read-only run or index is told
ADD_UNWRITABLE_FIX = "copy it to a folder you can write to and add there"


CROWDED_SHARE = 0.25  # above this share of items without an ID of their own, a note says so


def crowding_note(stats: dict, from_interactions: bool = False, noun: str = "items") -> str | None:
    """A note when many items shared their quantizer code (``collision_rate_before`` above
    ``CROWDED_SHARE``): their IDs then tell them apart by an arbitrary last token, not by content.
    ``from_interactions``: the item vectors came from the log alone, so item texts are the fix;
    ``noun``: what the index holds ("documents", "images")."""
    share = stats["collision_rate_before"]
    if share <= CROWDED_SHARE:
        return None
    fix = ("give the items texts (--items FILE), whose vectors tell them apart better than the "
           "interactions do" if from_interactions
           else f"give vectors that tell the {noun} apart, or a quantizer with more codes per level")  # fmt: skip
    return (f"{share:.0%} of the {noun} have no quantized ID of their own (up to "
            f"{stats['max_items_per_id_before']:,} {noun} share one), so their IDs say little about "
            f"them; {fix}")  # fmt: skip


def add_lock(folder: Path, what: str) -> AbstractContextManager[Path]:
    """The write lock an add holds on ``folder`` (``what`` names it): it waits for another writer
    up to ``ADD_WAIT_SECONDS``, and tells a read-only folder (or one beside it) what to do."""
    if Path(folder).is_dir() and not can_write(folder):
        raise SemidError(f"cannot write {what}: it is read-only here; {ADD_UNWRITABLE_FIX}")
    return write_lock(folder, what, ADD_WAIT_SECONDS, ADD_BUSY_FIX, ADD_UNWRITABLE_FIX)


ADDED_TEXTS = "added_texts.json"  # in an index folder: {key: text} of items added by text
IMAGE_TEXTS = "image_texts.json"  # in an image index: {key: caption or class} of the built images
KEPT_TEXT_CHARS = 300  # of each added item's text: enough to show it, not a copy of a document


def auto_spec(num_items: int, levels: int = 3, family: str = "rqkmeans", options: str = "") -> str:
    """An rqkmeans spec sized to the collection: ``levels`` levels of a power-of-two codebook (4 to
    256), the larger of (a) the largest size that still gets about 40 items per code at the first
    level and (b) the smallest whose ``size**levels`` IDs exceed 8x the items (few collisions,
    which then get the extra level). A catalogue of 2 or 3 items gets 2 codes, since a level
    cannot have more codes than items."""
    if num_items < 2:
        raise SemidError(
            f"{num_items} item{'s' if num_items != 1 else ''} to index; semantic IDs need at least 2"
        )
    fit, room = 4, 4
    while fit < 256 and num_items // (fit * 2) >= MIN_ITEMS_PER_CODE:
        fit *= 2
    while room < 256 and room**levels < 8 * num_items:
        room *= 2
    codes = min(max(fit, room), 1 << (num_items.bit_length() - 1))
    return f"{family}:{levels}x{codes}{options}"


def check_fits(quantizer: Quantizer, num_items: int, dim: int) -> None:
    """SemidError unless the quantizer's shape suits ``num_items`` items of width ``dim``."""
    sizes, spec = quantizer.codebook_sizes, quantizer.spec
    if len(sizes) > MAX_LEVELS:
        raise SemidError(
            f"{spec} has {len(sizes)} levels; use at most {MAX_LEVELS} (IDs are decoded one level at a time)"
        )
    if max(sizes) > num_items:
        sized = QuantizerSpec.parse(auto_spec(num_items, spec.levels, spec.family))
        sized = dataclasses.replace(sized, options=spec.options)  # the family and options asked for
        raise SemidError(f"{spec} has {max(sizes):,} codes per level for {num_items:,} items; use at "
                         f"most {num_items:,}, e.g. {sized} (or --quantizer auto)")  # fmt: skip
    if sum(sizes) * dim * 4 > MAX_CODEBOOK_BYTES:
        raise SemidError(f"{spec}'s codebooks would take {sum(sizes) * dim * 4 / 2**30:.0f} GiB for {dim}-d "
                         "vectors; use fewer or smaller levels")  # fmt: skip


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
    """Fit ``spec`` (a spec string, ``auto`` for :func:`auto_spec`, or an unfitted quantizer) on
    ``x`` (N, D) and index the items.

    ``encode_x`` (M, D): index these vectors (one per key) instead of the training vectors ``x``
    (e.g. fit on training images, index test images). ``fit_kwargs`` go to ``quantizer.fit``
    (``interactions`` for graph quantizers, ``text_embeddings`` for voken) with ``seed``, which
    alone decides the codes: fits draw from their own seeded generators, not torch's global one.
    Returns the index and the fitted quantizer; ``metadata`` gets ``seed``, ``fit_seconds`` and
    ``reconstruction_error`` (:meth:`Quantizer.reconstruction_error` of the indexed vectors)."""
    # what can be told from the arguments is told before the fit, which may take a while
    check_collision_strategy(collisions)
    if spec == AUTO:
        given = len(x) if encode_x is None else len(encode_x)
        if given != len(keys):  # auto sizes to the keys: "1 item" would mislead
            raise SemidError(f"{counted(len(keys), 'key')} for {counted(given, 'item vector')}; "
                             "give one key per item")  # fmt: skip
        spec = auto_spec(len(keys))
    quantizer = build_quantizer(spec) if isinstance(spec, str) else spec
    x = quantizer.check_input(x)  # a list or an array as fit takes it; (N, D) or refused
    check_fits(quantizer, len(x), x.shape[1])
    items = x if encode_x is None else quantizer.check_input(encode_x)  # (M, D) or refused
    if len(items) != len(keys):
        raise SemidError(f"{counted(len(keys), 'key')} for {counted(len(items), 'item vector')}; "
                         "give one key per item")  # fmt: skip
    if collisions == "popularity":
        checked_popularity(popularity, len(keys))
    started = time.perf_counter()
    quantizer.fit(x, seed=seed, **fit_kwargs)
    fit_seconds = time.perf_counter() - started
    items = quantizer.check_input(items)  # now of the fitted width
    raw = quantizer.encode(items)
    lost = quantizer.reconstruction_error(items, raw)
    distances = quantizer.last_level_distances(items) if collisions == "reassign" else None
    ids = SemanticIDs.from_codes(
        list(keys),
        raw,
        quantizer.codebook_sizes,
        collisions,
        distances=distances,
        popularity=popularity,
        quantizer_spec=str(quantizer.spec),
        metadata={
            **(metadata or {}),
            "seed": seed,
            "fit_seconds": round(fit_seconds, 3),
            "reconstruction_error": None if lost is None else round(lost, 6),
        },
    )
    return ids, quantizer


def add_items(
    index_path: str | os.PathLike,
    keys: list[str],
    x: Tensor,
    model: Any = None,
    texts: list[str] | None = None,
) -> tuple[SemanticIDs, Tensor]:
    """Encode ``x`` (M, D) with the index's saved quantizer, add the items, save the index; returns
    the grown index and the new items' codes (M, L). With ``model``, IDs outside its vocabulary are
    refused before anything is written. ``texts`` (one per key, shown beside answers: what ``x``
    embeds, an image's caption) are kept in the index (:func:`added_texts`) in the same step.
    Concurrent adds to one index run one after the other."""
    index_path = Path(index_path)
    with add_lock(index_path, f"index {index_path}"):
        ids, codes, quantizer = grow_ids(index_path, keys, x, model)
        extra = None if texts is None else texts_file(index_path, keys, texts)
        ids.save(index_path, quantizer=quantizer, keep_other_files=True, extra_files=extra)
    return ids, codes


def texts_file(index_path: Path, keys: list[str], texts: list[str]) -> dict[str, str]:
    """``SemanticIDs.save``'s ``extra_files`` that keep the texts of items being added to an index
    beside those of earlier adds."""
    new = dict(zip(keys, texts, strict=True))
    return {ADDED_TEXTS: texts_json({**added_texts(index_path), **new})}


def texts_json(texts: dict[str, str]) -> str:
    """The content of a texts file (:data:`ADDED_TEXTS`, :data:`IMAGE_TEXTS`): each key's text,
    cut to its first :data:`KEPT_TEXT_CHARS` characters."""
    return json.dumps({k: t[:KEPT_TEXT_CHARS] for k, t in texts.items()}, ensure_ascii=False) + "\n"


def added_texts(index_path: str | os.PathLike) -> dict[str, str]:
    """The texts of the items added to an index by text (`add_items`), by key ({} if none)."""
    return read_texts(Path(index_path) / ADDED_TEXTS, "the items added so far")


def read_texts(path: Path, whose: str, deleted: str | None = None) -> dict[str, str]:
    """A texts file (`texts_json`) by key, {} if there is none; ``whose`` names the items it
    covers and ``deleted`` what answering does without the file, for the fix of a damaged one."""
    if not path.is_file():
        return {}
    fix = f"delete it ({deleted or f'predict then shows no texts for {whose}'})"
    texts = read_json(path, fix)
    if not isinstance(texts, dict) or not all(isinstance(t, str) for t in texts.values()):
        raise SemidError(f"{path} must be a JSON object of item texts (strings) by key; {fix}")
    return texts


def grow_ids(
    index_path: Path, keys: list[str], x: Tensor, model: Any = None
) -> tuple[SemanticIDs, Tensor, Quantizer]:
    """The index at ``index_path`` grown by new items in memory (nothing is written): the grown
    index, the new items' codes (M, L) and the quantizer that made them. Hold the index's write
    lock from here to the save, so that a concurrent add is not lost."""
    ids = SemanticIDs.load(index_path)
    quantizer = load_quantizer(index_path)
    x = quantizer.check_input(x)
    collision = ids.collision
    reassign = (
        collision is not None and collision.strategy == "reassign" and not collision.extra_level
    )
    distances = quantizer.last_level_distances(x) if reassign else None
    codes = ids.add(keys, quantizer.encode(x), distances)
    sizes = getattr(model, "codebook_sizes", None)  # a generator's: a scorer writes no codes
    level = None if sizes is None else first_level_over(sizes, ids.codebook_sizes)
    if level is not None:
        raise SemidError(
            f"adding these {len(keys):,} items needs {ids.codebook_sizes[level]} codes at level "
            f"{level} but the model of {index_path.parent} knows {sizes[level]} "
            "(nothing was added); add fewer items, or retrain with a larger --extra-codes (the "
            "codes a run keeps spare for items added later)"
        )
    return ids, codes, quantizer
