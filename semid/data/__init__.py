"""Datasets, splits and embedding files."""

from semid.data.embeddings import load_embeddings, read_keys, save_embeddings
from semid.data.movielens import InteractionLog, RecDataset, load_movielens
from semid.data.registry import (
    available_datasets,
    dataset_descriptions,
    load_dataset,
    package_dir,
    register_dataset,
)
from semid.data.splits import PAD, Histories, LeaveOneOutSplit, chronological_order, leave_one_out

__all__ = [
    "PAD",
    "Histories",
    "InteractionLog",
    "LeaveOneOutSplit",
    "RecDataset",
    "available_datasets",
    "chronological_order",
    "dataset_descriptions",
    "leave_one_out",
    "load_dataset",
    "load_embeddings",
    "load_movielens",
    "package_dir",
    "read_keys",
    "register_dataset",
    "save_embeddings",
]
