"""Datasets, splits and embedding files."""

from semid.data.embeddings import load_embeddings, read_keys, save_embeddings
from semid.data.interaction_files import load_interaction_files
from semid.data.movielens import InteractionLog, RecDataset, load_movielens
from semid.data.registry import (
    available_datasets,
    dataset_descriptions,
    load_dataset,
    package_dir,
    register_dataset,
)
from semid.data.splits import PAD, Histories, LeaveOneOutSplit, chronological_order, leave_one_out
from semid.data.tables import content_sha256, parse_columns, read_table

__all__ = [
    "PAD",
    "Histories",
    "InteractionLog",
    "LeaveOneOutSplit",
    "RecDataset",
    "available_datasets",
    "chronological_order",
    "content_sha256",
    "dataset_descriptions",
    "leave_one_out",
    "load_dataset",
    "load_embeddings",
    "load_interaction_files",
    "load_movielens",
    "package_dir",
    "parse_columns",
    "read_keys",
    "read_table",
    "register_dataset",
    "save_embeddings",
]
