"""Shared fixtures."""

from __future__ import annotations

from pathlib import Path

import pytest


@pytest.fixture
def data_dir() -> Path:
    """tests/data: tiny hand-written fixture files (see tests/data/README.md)."""
    return Path(__file__).parent / "data"
