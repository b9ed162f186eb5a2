"""Tensor files kept beside an index (document embeddings, image features, the BM25 counts) that are
truncated or not safetensors at all: one SemidError line naming the file, never a traceback."""

from __future__ import annotations

import pytest
import torch

from semid.errors import SemidError
from semid.lexical import LexicalIndex
from semid.saving import read_rows, write_rows


def damage(path, how: str) -> None:
    """Truncate ``path`` to half its size, or overwrite it with text."""
    if how == "truncated":
        data = path.read_bytes()
        path.write_bytes(data[: len(data) // 2])
    else:
        path.write_text("not a tensor file\n")


@pytest.mark.parametrize("how", ["truncated", "text"])
def test_damaged_rows_file_is_one_line_naming_it(tmp_path, how):
    path = tmp_path / "image_features.safetensors"
    write_rows(path, torch.randn(4, 3))
    damage(path, how)
    with pytest.raises(
        SemidError, match=f"{path} is damaged or unreadable .*; retrain or restore it"
    ):
        read_rows(path)


@pytest.mark.parametrize("how", ["truncated", "text"])
def test_damaged_lexical_index_is_one_line_naming_it(tmp_path, how):
    path = tmp_path / "lexical.safetensors"
    LexicalIndex.from_texts(["a red fox", "a blue car"]).save(path)
    damage(path, how)
    with pytest.raises(SemidError, match=f"{path} is damaged or unreadable"):
        LexicalIndex.load(path)
