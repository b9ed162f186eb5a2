"""The item side of recommendation: item vectors for an index, new items, and models sized to it."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import torch
from torch import Tensor

from semid.data.embeddings import load_embeddings
from semid.data.interaction_files import (
    ITEM_KEY_COLUMNS,
    item_text_table,
    load_interaction_files,
    look_alike_across,
    read_item_texts,
)
from semid.data.interactions import keyed_by_rows
from semid.data.logs import InteractionLog, RecDataset
from semid.data.registry import load_dataset
from semid.data.splits import leave_one_out
from semid.data.tables import LINE_FORMATS, matching_columns, table_format
from semid.data.text_files import read_lines
from semid.defaults import INTERACTION_VECTORS
from semid.determinism import seeded_cpu_rng
from semid.encoders import TextEncoder
from semid.errors import SemidError
from semid.graph import unique_edges
from semid.ids import SemanticIDs
from semid.indexing import AUTO, auto_spec, build_ids
from semid.models import model_class
from semid.notes import note, tell
from semid.quantization import build_quantizer
from semid.tasks.base import IndexSource, rows_to_add
from semid.tasks.specs import RecommendSpec

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
INTERACTION_DIM = 64


def recommendation_dataset(
    name: str, items: str | None = None, columns: dict[str, str] | None = None,
    missing_text: str = "error", min_interactions: int = 3,
) -> RecDataset:  # fmt: skip
    """A registered interaction dataset (e.g. ml-100k), a data folder, or an interactions file
    (CSV, TSV, Parquet, JSON Lines; optionally gzipped) with an optional items file of texts."""
    if table_format(name) is not None and not Path(name).is_dir():
        return load_interaction_files(name, items, columns, missing_text, min_interactions)
    if items is not None or columns:
        raise SemidError(f"--items and --columns go with an interactions file, not {name}")
    dataset = load_dataset(name)
    if not isinstance(dataset, RecDataset):
        raise SemidError(
            f"{name} is not an interaction dataset; a recommender needs users and items"
        )
    return dataset


def item_texts_of(source: IndexSource | RecommendSpec) -> dict[str, str]:
    """Each item's text in the data of an IndexSource or a RecommendSpec: its items file, or a
    registered dataset's texts; empty for data without texts (an interactions file alone)."""
    if source.items is not None:
        return item_text_table(source.items, source.columns)
    if table_format(source.dataset) is not None and not Path(source.dataset).is_dir():
        return {}
    return dataset_texts(recommendation_dataset(source.dataset))


def dataset_texts(dataset: RecDataset) -> dict[str, str]:
    """Each item's text in a loaded dataset, by key; empty for a dataset without texts."""
    if dataset.item_texts is None:
        return {}
    return dict(zip(dataset.item_keys, dataset.item_texts, strict=True))


def source_dataset(source: IndexSource | RecommendSpec) -> RecDataset:
    """The dataset of an IndexSource or a RecommendSpec (same field names)."""
    return recommendation_dataset(source.dataset, source.items, source.columns, source.missing_text,
                                  source.min_interactions)  # fmt: skip


def build_item_index(
    source: IndexSource, spec: str, out: Path, collisions: str, seed: int
) -> tuple[SemanticIDs, list[str]]:
    """Fit ``spec`` on the items of ``source`` and save the index (with its quantizer) at ``out``;
    returns the index and what to tell the user."""
    # a bad spec fails before any work
    probe = build_quantizer("rqkmeans:1x2" if spec == AUTO else spec)
    notes: list[str] = []
    dataset = None
    if source.embeddings is not None:
        keys, x = load_embeddings(source.embeddings, source.keys)
        metadata: dict[str, Any] = {"embeddings": str(source.embeddings)}
    else:
        if source.keys is not None:
            raise SemidError("--keys goes with --embeddings; a --dataset brings its own item keys")
        if source.interactions is not None:
            raise SemidError(
                "--interactions goes with --embeddings; a --dataset brings its own interactions"
            )
        dataset = source_dataset(source)
        if dataset.notes:  # said now: embedding and fitting take a while, and a note (file order
            tell("\n".join(dataset.notes))  # taken as time order) may be worth stopping for
        keys = list(dataset.item_keys)
        if dataset.item_texts is None:
            train = leave_one_out(dataset.interactions).train  # held-out targets must not shape IDs
            x = interaction_vectors(train, seed)
            notes.append(f"{dataset.name} has no item texts: item vectors from its train interactions "
                         f"({x.shape[1]}-d SVD of the user-item matrix); --items FILE gives text vectors")  # fmt: skip
            metadata = {"dataset": source.dataset, "item_vectors": INTERACTION_VECTORS}
        else:
            # said now, not with the notes after the build: embedding takes a while
            encoder = TextEncoder(model=source.encoder, device=source.device)
            texts = f"{len(dataset.item_texts):,} item texts of {dataset.name}"
            cached = encoder.is_cached(dataset.item_texts)
            tell(
                f"reading the embeddings of {texts} from the cache"
                if cached
                else f"embedding {texts}"
            )
            x = encoder.encode(dataset.item_texts)
            metadata = {"dataset": source.dataset, "items": source.items,
                        "encoder": source.encoder or DEFAULT_ENCODER}  # fmt: skip
    graph = getattr(probe, "needs_interactions", False)
    needs_log = graph or collisions == "popularity"
    if source.interactions is not None and not needs_log:
        raise SemidError(
            f"--interactions is only used by graph quantizers and --collisions popularity, not {spec} "
            f"with --collisions {collisions}"
        )
    log = dataset.interactions if dataset is not None else None
    if source.interactions is not None:
        log = interactions_for_keys(source, keys)
    if log is None and collisions == "popularity" and not graph:
        raise SemidError(
            "--collisions popularity needs interaction counts: use --dataset, or --interactions "
            "FILE with --embeddings, or another strategy"
        )
    # the graph and the popularity counts see the train part only: held-out targets must not shape the IDs
    train = training_interactions(log, spec) if needs_log else None
    fit_kwargs: dict[str, Any] = {"interactions": train} if graph else {}
    popularity = None
    if collisions == "popularity":
        popularity = torch.bincount(train.items, minlength=len(keys))
    # the fits draw from their own seeded generators; this keeps what else draws from torch's
    # global one in this process as it was
    torch.manual_seed(seed)
    fitting = auto_spec(len(keys)) if spec == AUTO else spec
    # said now: a fit of tens of thousands of vectors takes a while, and only some show a bar
    tell(f"fitting {fitting} on {len(keys):,} item vectors")
    ids, fitted = build_ids(
        keys, x, fitting, collisions, seed, popularity=popularity, metadata=metadata, **fit_kwargs
    )
    ids.save(out, quantizer=fitted)
    if spec == AUTO:
        notes.append(f"quantizer auto: {ids.quantizer_spec} for {len(ids):,} items")
    return ids, notes


def interaction_vectors(train: InteractionLog, seed: int = 0, dim: int = INTERACTION_DIM) -> Tensor:
    """Item vectors (N, d) from the interactions alone, for a catalogue without texts: the top
    singular vectors of the degree-normalized binary item-user matrix (D_i^-1/2 R D_u^-1/2), scaled by
    their singular values, so items liked by the same users lie close. d = min(dim, N - 1, users - 1);
    items without train interactions get the zero vector. Seeded: the same log gives the same vectors."""
    n_items, n_users = train.num_items, train.num_users
    d = max(1, min(dim, n_items - 1, n_users - 1))
    users, items = unique_edges(train.users, train.items, n_items)  # a repeated event counts once
    di = torch.bincount(items, minlength=n_items).clamp(min=1).float().rsqrt()
    du = torch.bincount(users, minlength=n_users).clamp(min=1).float().rsqrt()
    a = torch.sparse_coo_tensor(torch.stack([items, users]), di[items] * du[users], (n_items, n_users),
                                check_invariants=True).coalesce()  # fmt: skip
    with seeded_cpu_rng(seed):
        u, singular, _ = torch.svd_lowrank(a, q=min(d + 8, n_items, n_users), niter=6)
    return (u[:, :d] * singular[:d]).float().contiguous()


def interactions_for_keys(source: IndexSource, keys: list[str]) -> InteractionLog:
    """The ``--interactions`` log of an embeddings index, read as ``--dataset`` reads data (a
    registered dataset, a folder or an interactions file), its items renumbered to rows of ``keys``."""
    dataset = recommendation_dataset(str(source.interactions), None, source.columns,
                                     min_interactions=source.min_interactions)  # fmt: skip
    return keyed_by_rows(dataset.interactions, keys, source.interactions)


def training_interactions(log: InteractionLog | None, spec: str) -> InteractionLog:
    """The train part of the leave-one-out split: valid/test targets must not leak into the IDs."""
    if log is None:
        raise SemidError(
            f"{spec} needs user-item interactions: use --dataset, or --interactions FILE"
        )
    return leave_one_out(log).train


def holds_item_texts(path: Path) -> bool:
    """Whether ``--items path`` is a table of item texts (CSV, TSV, JSON Lines), not embeddings."""
    return table_format(path) in LINE_FORMATS


def read_new_items(
    path: Path,
    keys: Path | None,
    encoder: str | None,
    index_encoder: str | None = None,
    columns: dict[str, str] | None = None,
    indexed: SemanticIDs | None = None,
    device: str = "cpu",
    skip_indexed: bool = False,
    index_dim: int | None = None,
) -> tuple[list[str], Tensor, list[str] | None]:
    """Keys, vectors (M, D) and texts (None for embeddings) of new items, from texts embedded with
    the index's text encoder (unless ``encoder``) or from an embeddings file (``.npy`` + ``keys``,
    ...). Texts come as an items table like training's ``--items`` (``.csv``, ``.jsonl``, optionally
    gzipped, or a ``.tsv`` whose header starts with an item column; ``columns``: the run's
    ``--columns``), or as a headerless ``.tsv`` of ``key<TAB>text`` lines. Keys already in
    ``indexed`` are refused before any text is embedded, or left out with ``skip_indexed`` (so
    that none may be left); texts are embedded on ``device``. ``index_dim``: the width of the
    index's vectors, which new ones must have (checked before any text is embedded)."""
    if Path(path).is_dir():
        raise SemidError(f"--items {path} is a folder; give a file of item texts (CSV, TSV, JSON "
                         "Lines) or of embeddings (.npy with --keys, .parquet, .safetensors)")  # fmt: skip
    if not holds_item_texts(path):
        new_keys, x = load_embeddings(path, keys)
        if encoder is not None:
            note(f"--encoder embeds item texts; {path} holds vectors, which are added as they are")
        if index_dim is not None and x.ndim == 2 and x.shape[1] != index_dim:
            raise SemidError(f"{path} holds {x.shape[1]}-d vectors, but the index was built from "
                             f"{index_dim}-d ones; give vectors made as the index's were")  # fmt: skip
        rows = _new_rows(new_keys, indexed, skip_indexed, path)
        return [new_keys[i] for i in rows], x[rows], None
    fmt = table_format(path)
    if keys is not None:
        raise SemidError(f"--keys goes with embeddings; {path} brings its own item keys")
    lines = read_lines(path, "items file") if fmt == "tsv" else []
    first = next((line for line in lines if line.strip()), "")
    if fmt == "tsv" and not _names_an_item_column(first):
        new_keys, texts = _key_text_lines(path, lines)
    else:
        new_keys, texts = read_item_texts(path, columns)
    rows = _new_rows(new_keys, indexed, skip_indexed, path)
    new_keys, texts = [new_keys[i] for i in rows], [texts[i] for i in rows]
    if not new_keys:
        return [], torch.zeros(0, 0), []
    if index_encoder not in (None, DEFAULT_ENCODER) and encoder is None:
        encoder = index_encoder
    text_encoder = TextEncoder(model=encoder, device=device)
    if index_dim is not None and text_encoder.dim != index_dim:
        raise SemidError(f"the texts of {path} would be {text_encoder.dim}-d vectors "
                         f"({encoder or DEFAULT_ENCODER}), but the index was built from "
                         f"{index_dim}-d ones; give --items as {index_dim}-d embeddings (.npy with "
                         "--keys), or --encoder the text model that made the index's vectors")  # fmt: skip
    if indexed is not None and "encoder" not in indexed.metadata and encoder is None:
        note(f"the index was built from embeddings, not texts: the texts of {path} are embedded "
             f"with {DEFAULT_ENCODER}; if another model made the index's vectors, name it with "
             "--encoder")  # fmt: skip
    return new_keys, text_encoder.encode(texts), texts


def _new_rows(keys: list[str], indexed: SemanticIDs | None, skip_indexed: bool,
              path: Path) -> list[int]:  # fmt: skip
    """Positions of the ``keys`` to add: all of them, refused when one is already in ``indexed``,
    or those not in it with ``skip_indexed``; a key given twice is refused either way."""
    repeated = next((k for k, n in Counter(keys).items() if n > 1), None)
    if repeated is not None:
        raise SemidError(f"{path} gives item {repeated!r} more than once; list each item once")
    if indexed is None:
        return list(range(len(keys)))
    rows = rows_to_add(keys, indexed.__contains__, "item", str(path), skip_indexed, "give new keys")
    twins = look_alike_across([keys[i] for i in rows], indexed.keys)
    if twins is not None:
        note(f"the indexed item {twins[0]!r} and {twins[1]!r} of {path} differ only by "
             "leading zeros or a '.0', and are two items (ids are compared as text); write the "
             "id as the index has it if they are one item")  # fmt: skip
    return rows


def _names_an_item_column(first_line: str) -> bool:
    """True when a .tsv's first line is a header: its first field names an item column (item, id, ...)."""
    return bool(matching_columns([first_line.split("\t", 1)[0]], ITEM_KEY_COLUMNS))


def _key_text_lines(path: Path, lines: list[str]) -> tuple[list[str], list[str]]:
    """Keys (without the spaces around them, as tables read ids) and texts of the lines of a
    headerless ``key<TAB>text`` file."""
    numbered = [(n, line.split("\t", 1)) for n, line in enumerate(lines, 1) if line.strip()]
    if not numbered:
        raise SemidError(f"{path} holds no items; write one key<TAB>text line per item")
    for n, pair in numbered:  # a key of blanks could never be asked for again
        if len(pair) != 2 or not pair[0].strip() or not pair[1].strip():
            raise SemidError(f"{path} line {n} is not key<TAB>text; write one item per line")
    return [k.strip() for _, (k, _) in numbered], [t for _, (_, t) in numbered]


def new_model(spec: RecommendSpec, ids: SemanticIDs) -> torch.nn.Module:
    """A fresh model of the spec's family sized for the index (codebook sizes, catalogue size)."""
    cls = model_class(spec.model)
    config = cls.sized_for(
        spec.model_config, ids, extra_codes=spec.extra_codes, max_history=spec.max_history
    )
    return cls(config)
