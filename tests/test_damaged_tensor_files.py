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


def flip_last_byte(path) -> None:
    """Change one bit of the file's last byte (the tensors' data comes after the header): the file
    still parses, with one value changed."""
    data = bytearray(path.read_bytes())
    data[-1] ^= 0x01
    path.write_bytes(bytes(data))


def test_a_changed_value_in_a_rows_file_is_refused(tmp_path):
    """A flipped bit in document embeddings or image features parsed and gave other scores, with
    exit 0; the file now records the SHA-256 of its values."""
    path = tmp_path / "document_embeddings.safetensors"
    rows = torch.randn(4, 3)
    write_rows(path, rows)
    assert torch.equal(read_rows(path), rows)
    flip_last_byte(path)
    with pytest.raises(SemidError, match=f"{path} is damaged: its values are not those written"):
        read_rows(path)


def test_a_rows_file_written_before_the_record_is_read_unchecked(tmp_path):
    from safetensors.torch import save_file

    path = tmp_path / "image_features.safetensors"
    save_file({"embeddings": torch.ones(2, 3)}, str(path))  # as semid wrote it before
    assert torch.equal(read_rows(path), torch.ones(2, 3))


def test_a_changed_count_in_a_lexical_index_is_refused(tmp_path):
    path = tmp_path / "lexical.safetensors"
    LexicalIndex.from_texts(["a red fox", "a blue car"]).save(path)
    LexicalIndex.load(path)
    flip_last_byte(path)
    with pytest.raises(SemidError, match=f"{path} is damaged: its values are not those written"):
        LexicalIndex.load(path)


def test_the_same_values_give_the_same_bytes(tmp_path):
    """The digest sits in one metadata entry: files stay byte-identical run to run."""
    LexicalIndex.from_texts(["a red fox", "a blue car"]).save(tmp_path / "a")
    LexicalIndex.from_texts(["a red fox", "a blue car"]).save(tmp_path / "b")
    assert (tmp_path / "a").read_bytes() == (tmp_path / "b").read_bytes()
    write_rows(tmp_path / "c", torch.arange(6.0).reshape(2, 3))
    write_rows(tmp_path / "d", torch.arange(6.0).reshape(2, 3))
    assert (tmp_path / "c").read_bytes() == (tmp_path / "d").read_bytes()


def test_the_digest_covers_every_dtype_and_tells_shapes_apart():
    """bfloat16 has no numpy type: the digest raised TypeError (a traceback from a file's load);
    a 0-d tensor had the digest of its 1-element vector."""
    import numpy as np

    from semid.saving import tensors_sha256

    half = torch.ones(2, dtype=torch.bfloat16)
    assert tensors_sha256({"a": half}) != tensors_sha256({"a": half.float()})
    assert tensors_sha256({"a": torch.tensor(1.0)}) != tensors_sha256({"a": torch.tensor([1.0])})
    rows = torch.arange(6.0).reshape(2, 3)
    assert tensors_sha256({"a": rows.t()}) == tensors_sha256({"a": rows.t().contiguous().numpy()})
    assert tensors_sha256({"a": torch.ones(3, dtype=torch.bool)}) == tensors_sha256(
        {"a": np.ones(3, dtype=bool)}
    )


def test_a_checked_file_of_bfloat16_reads_back(tmp_path):
    from semid.saving import checked_tensor_bytes, load_checked_tensors

    path = tmp_path / "half.safetensors"
    path.write_bytes(checked_tensor_bytes({"w": torch.ones(4, dtype=torch.bfloat16)}))
    assert load_checked_tensors(path)["w"].dtype == torch.bfloat16
