"""Datasets, splits and embedding files.

The names below load their module on first use, so that importing one light module of this
package (``semid.data.tables``) does not import torch (`semid COMMAND --help` answers at once)."""

from __future__ import annotations

from semid.lazy import lazy_getattr

_MODULE_OF = {
    "semid.data.embeddings": ("load_embeddings", "read_keys", "save_embeddings"),
    "semid.data.interaction_files": ("load_interaction_files",),
    "semid.data.logs": ("InteractionLog", "RecDataset"),
    "semid.data.movielens": ("load_movielens",),
    "semid.data.registry": (
        "available_datasets",
        "dataset_descriptions",
        "load_dataset",
        "package_dir",
        "register_dataset",
    ),
    "semid.data.splits": (
        "PAD",
        "Histories",
        "LeaveOneOutSplit",
        "chronological_order",
        "leave_one_out",
    ),
    "semid.data.tables": ("content_sha256", "parse_columns", "read_table"),
}
_MODULE_BY_NAME = {name: module for module, names in _MODULE_OF.items() for name in names}
__all__ = sorted(_MODULE_BY_NAME)
__getattr__ = lazy_getattr(__name__, _MODULE_BY_NAME)
