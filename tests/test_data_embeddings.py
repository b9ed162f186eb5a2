"""Embedding files: round trips in every format, foreign layouts, and every bad-input error."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from safetensors.torch import save_file

from semid.data import load_embeddings, read_keys, save_embeddings
from semid.errors import SemidError

FORMATS = [".npy", ".parquet", ".safetensors"]
KEYS = ["Toy Story (1995)", "Heat (1995)", 'ünïcode, "quoted"', "4"]


@pytest.fixture
def x() -> torch.Tensor:
    return torch.randn(4, 3, generator=torch.Generator().manual_seed(0))


@pytest.mark.parametrize("suffix", FORMATS)
def test_round_trip(tmp_path: Path, x: torch.Tensor, suffix: str) -> None:
    path = tmp_path / f"items{suffix}"
    save_embeddings(path, KEYS, x)
    keys_path = tmp_path / "items.txt" if suffix == ".npy" else None  # .npy keeps keys beside it
    keys, y = load_embeddings(path, keys_path)
    assert keys == KEYS
    assert y.dtype == torch.float32 and torch.equal(y, x)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left


def test_npy_without_keys_gets_row_numbers(tmp_path: Path, x: torch.Tensor, capsys) -> None:
    np.save(tmp_path / "e.npy", x.numpy().astype(np.float64))
    keys, y = load_embeddings(tmp_path / "e.npy")
    assert keys == ["0", "1", "2", "3"] and y.dtype == torch.float32
    assert torch.allclose(y, x)
    assert (
        "holds no item keys and none were given: items are keyed by their row numbers, 0 to 3"
        in (capsys.readouterr().err)
    )
    (tmp_path / "e.txt").write_text("a\nb\nc\nd\n")  # as save_embeddings writes them beside it
    load_embeddings(tmp_path / "e.npy")
    assert f"give its keys file (--keys {tmp_path / 'e.txt'})" in capsys.readouterr().err
    assert "holds no item keys" not in (load_embeddings(tmp_path / "e.npy", tmp_path / "e.txt"),
                                        capsys.readouterr().err)[1]  # fmt: skip


def test_keys_path_overrides_stored_keys(tmp_path: Path, x: torch.Tensor) -> None:
    save_embeddings(tmp_path / "e.parquet", KEYS, x)
    (tmp_path / "k.txt").write_text("a\nb\nc\nd")  # no final newline
    assert load_embeddings(tmp_path / "e.parquet", tmp_path / "k.txt")[0] == ["a", "b", "c", "d"]


def test_parquet_variable_list_and_numeric_columns(tmp_path: Path, x: torch.Tensor) -> None:
    rows = x.tolist()
    pq.write_table(pa.table({"key": [1, 2, 3, 4], "embedding": rows}), tmp_path / "list.parquet")
    keys, y = load_embeddings(tmp_path / "list.parquet")
    assert keys == ["1", "2", "3", "4"] and torch.allclose(y, x)
    columns = {"key": KEYS} | {f"d{j}": x[:, j].double().numpy() for j in range(3)}
    pq.write_table(pa.table(columns), tmp_path / "wide.parquet")
    keys, y = load_embeddings(tmp_path / "wide.parquet")
    assert keys == KEYS and torch.allclose(y, x)


def test_safetensors_from_other_tools(tmp_path: Path, x: torch.Tensor) -> None:
    save_file(
        {"embeddings": x.half()}, tmp_path / "a.safetensors", metadata={"keys": json.dumps(KEYS)}
    )
    keys, y = load_embeddings(tmp_path / "a.safetensors")
    assert keys == KEYS and y.dtype == torch.float32 and torch.allclose(y, x, atol=1e-2)
    save_file({"vectors": x}, tmp_path / "b.safetensors")  # one tensor, any name, no keys
    assert load_embeddings(tmp_path / "b.safetensors")[0] == ["0", "1", "2", "3"]


# Bad inputs: each error names the problem.


def test_missing_empty_and_unknown_files(tmp_path: Path) -> None:
    with pytest.raises(SemidError, match="not found"):
        load_embeddings(tmp_path / "nope.npy")
    (tmp_path / "empty.npy").write_bytes(b"")
    with pytest.raises(SemidError, match="is empty"):
        load_embeddings(tmp_path / "empty.npy")
    np.save(tmp_path / "rows0.npy", np.zeros((0, 3), np.float32))
    with pytest.raises(SemidError, match=r"is empty \(shape \(0, 3\)\)"):
        load_embeddings(tmp_path / "rows0.npy")
    (tmp_path / "e.csv").write_text("1,2\n")
    with pytest.raises(
        SemidError, match=r"unknown embeddings format '\.csv'.*\.npy, \.parquet, \.safetensors"
    ):
        load_embeddings(tmp_path / "e.csv")
    (tmp_path / "junk.safetensors").write_bytes(b"not a safetensors file at all")
    with pytest.raises(SemidError, match="cannot read"):
        load_embeddings(tmp_path / "junk.safetensors")
    (tmp_path / "text.npy").write_text("1 2\n3 4\n")  # numpy called it pickled data
    with pytest.raises(SemidError, match=r"text.npy is not a .npy file .*np.save"):
        load_embeddings(tmp_path / "text.npy")
    np.save(tmp_path / "objects.npy", np.array([[1.0], [2.0]], dtype=object), allow_pickle=True)
    with pytest.raises(
        SemidError, match="holds Python objects .* does not unpickle; write numbers"
    ):
        load_embeddings(tmp_path / "objects.npy")  # no allow_pickle option to point at
    np.save(tmp_path / "complex.npy", np.ones((2, 2), np.complex64))
    with pytest.raises(SemidError, match="complex64 values; embeddings must be real numbers"):
        load_embeddings(tmp_path / "complex.npy")
    np.save(tmp_path / "ok.npy", np.ones((2, 2), np.float32))
    with pytest.raises(SemidError, match="keys file .* not found"):
        load_embeddings(tmp_path / "ok.npy", tmp_path / "missing.txt")


def test_non_finite_rows_are_counted(tmp_path: Path, x: torch.Tensor) -> None:
    bad = x.numpy().copy()
    bad[1, 2], bad[3, 0], bad[3, 1] = np.nan, np.inf, np.nan
    np.save(tmp_path / "e.npy", bad)
    with pytest.raises(SemidError, match=r"2 row\(s\) with NaN or inf \(first: row 1\)"):
        load_embeddings(tmp_path / "e.npy")
    big = np.ones((3, 2))
    big[2, 0] = 1e300  # finite in float64, inf once cast to float32
    np.save(tmp_path / "big.npy", big)
    with pytest.raises(SemidError, match=r"1 row\(s\) with NaN or inf \(first: row 2\)"):
        load_embeddings(tmp_path / "big.npy")


def test_not_two_dimensional(tmp_path: Path) -> None:
    np.save(tmp_path / "e.npy", np.zeros((2, 3, 4), np.float32))
    with pytest.raises(SemidError, match=r"3-D array of shape \(2, 3, 4\).*must be 2-D"):
        load_embeddings(tmp_path / "e.npy")
    np.save(tmp_path / "s.npy", np.array(["a", "b"]))
    with pytest.raises(SemidError, match="1-D"):
        load_embeddings(tmp_path / "s.npy")


def test_key_count_mismatch_names_both_counts(tmp_path: Path, x: torch.Tensor) -> None:
    np.save(tmp_path / "e.npy", x.numpy())
    (tmp_path / "k.txt").write_text("a\nb\nc\n")
    with pytest.raises(SemidError, match=r"has 4 embeddings but .*k\.txt has 3 keys; they must"):
        load_embeddings(tmp_path / "e.npy", tmp_path / "k.txt")
    (tmp_path / "k.txt").write_text("key\na\nb\nc\nd\n")
    with pytest.raises(
        SemidError, match=r"has 5 keys \(is line 1, 'key', a header\? a keys file has none\)"
    ):
        load_embeddings(tmp_path / "e.npy", tmp_path / "k.txt")
    (tmp_path / "k.txt").write_text('["a", "b", "c", "d"]')
    with pytest.raises(SemidError, match=r"has 1 key \(it looks like JSON: write one key per line"):
        load_embeddings(tmp_path / "e.npy", tmp_path / "k.txt")
    with pytest.raises(SemidError, match=r"the keys to save has 5 keys; they must match"):
        save_embeddings(tmp_path / "s.npy", ["key", "a", "b", "c", "d"], x)  # no file: no line 1


def test_duplicate_and_blank_keys(tmp_path: Path, x: torch.Tensor) -> None:
    np.save(tmp_path / "e.npy", x.numpy())
    (tmp_path / "k.txt").write_text("a\nb\na\nb\n")
    with pytest.raises(SemidError, match=r"2 duplicate key\(s\) \(first: 'a', keys 1 and 3\)"):
        load_embeddings(tmp_path / "e.npy", tmp_path / "k.txt")
    (tmp_path / "k.txt").write_text("a\n\nc\nd\n")
    with pytest.raises(SemidError, match=r"1 blank line\(s\) \(first: line 2\)"):
        read_keys(tmp_path / "k.txt")
    (tmp_path / "k.txt").write_text("a\nb\nc\nd\n\n\n")  # blank lines at the end are no keys
    assert read_keys(tmp_path / "k.txt") == ["a", "b", "c", "d"]


def test_ragged_and_null_parquet(tmp_path: Path) -> None:
    pq.write_table(
        pa.table({"key": ["a", "b"], "embedding": [[1.0, 2.0], [3.0]]}), tmp_path / "r.parquet"
    )
    with pytest.raises(SemidError, match="row 1 has 1 values but row 0 has 2"):
        load_embeddings(tmp_path / "r.parquet")
    pq.write_table(
        pa.table({"key": ["a", "b"], "embedding": [[1.0], None]}), tmp_path / "n.parquet"
    )
    with pytest.raises(SemidError, match=r"1 row\(s\) have no embedding"):
        load_embeddings(tmp_path / "n.parquet")
    pq.write_table(pa.table({"key": ["a"], "note": ["text"]}), tmp_path / "t.parquet")
    with pytest.raises(SemidError, match="non-numeric: note"):
        load_embeddings(tmp_path / "t.parquet")


def test_safetensors_with_several_unnamed_tensors(tmp_path: Path, x: torch.Tensor) -> None:
    save_file({"a": x, "b": x.clone()}, tmp_path / "e.safetensors")
    with pytest.raises(SemidError, match=r"no tensor named 'embeddings' \(found: a, b\)"):
        load_embeddings(tmp_path / "e.safetensors")


@pytest.mark.parametrize("suffix", FORMATS)
def test_save_refuses_bad_input_and_writes_nothing(
    tmp_path: Path, x: torch.Tensor, suffix: str
) -> None:
    path = tmp_path / f"e{suffix}"
    bad = x.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(SemidError, match="NaN"):
        save_embeddings(path, KEYS, bad)
    with pytest.raises(SemidError, match="has 3 keys"):
        save_embeddings(path, KEYS[:3], x)
    with pytest.raises(SemidError, match="duplicate"):
        save_embeddings(path, ["a", "a", "b", "c"], x)
    assert list(tmp_path.iterdir()) == []


def test_npy_keys_must_fit_on_one_line(tmp_path: Path, x: torch.Tensor) -> None:
    with pytest.raises(SemidError, match="line break.*parquet"):
        save_embeddings(tmp_path / "e.npy", ["a", "b\nc", "d", "e"], x)
