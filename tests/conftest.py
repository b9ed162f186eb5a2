"""Shared fixtures."""

from __future__ import annotations

import os
from pathlib import Path

# Before torch/faiss load (see semid/__init__.py): spinning OpenMP threads starve each other here.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import pytest


@pytest.fixture
def data_dir() -> Path:
    """tests/data: tiny hand-written fixture files (see tests/data/README.md)."""
    return Path(__file__).parent / "data"
