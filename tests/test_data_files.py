"""Plain data files: the table reader (formats and errors), interaction files to a RecDataset, and
the acceptance check that ml-100k exported as shuffled CSVs splits exactly as the embedded copy."""

from __future__ import annotations

import gzip
import hashlib
import importlib.util
import json
import random
import re
import shutil
import subprocess
import sys
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest
import torch
from _semid_cli import ENV

from semid.data import leave_one_out, load_dataset
from semid.data.interaction_files import item_text_table, load_interaction_files
from semid.data.tables import (
    content_sha256,
    factorized_keys,
    find_column,
    key_strings,
    parse_columns,
    read_table,
)
from semid.errors import SemidError
from semid.tasks.data import data_stamp

ROWS = [
    {"user": "007", "item": "a", "timestamp": "5"},
    {"user": "8", "item": "b", "timestamp": "6"},
]


def write_rows(path: Path, rows: list[dict]) -> Path:
    """Write dict rows in the format the file name asks for (csv, tsv, jsonl, parquet; .gz)."""
    name = path.name.removesuffix(".gz")
    if name.endswith(".parquet"):
        pq.write_table(pa.Table.from_pylist(rows), path)
        return path
    if name.endswith(".jsonl"):
        text = "".join(json.dumps(r) + "\n" for r in rows)
    else:
        sep = "\t" if name.endswith(".tsv") else ","
        text = (
            sep.join(rows[0]) + "\n" + "".join(sep.join(map(str, r.values())) + "\n" for r in rows)
        )
    data = text.encode("utf-8")
    path.write_bytes(gzip.compress(data) if path.name.endswith(".gz") else data)
    return path


# --- read_table ------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", [".csv", ".tsv", ".jsonl", ".parquet", ".csv.gz", ".jsonl.gz"])
def test_every_format_reads_the_same_rows(tmp_path: Path, ext: str) -> None:
    table = read_table(write_rows(tmp_path / f"log{ext}", ROWS), "interactions file")
    assert table.column_names == ["user", "item", "timestamp"]
    assert table.to_pylist() == ROWS  # CSV cells stay text: '007' keeps its zeros


def test_a_folder_is_not_a_table(tmp_path: Path) -> None:
    (tmp_path / "log.csv").mkdir()
    with pytest.raises(SemidError, match=r"log.csv is a folder; give the table file inside it"):
        read_table(tmp_path / "log.csv", "items file")


@pytest.mark.parametrize("separator", [";", "\t", "|"])
def test_csv_with_another_separator_is_read_by_its_header(tmp_path: Path, separator: str) -> None:
    lines = [separator.join(ROWS[0]), *(separator.join(r.values()) for r in ROWS)]
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    assert read_table(tmp_path / "log.csv", "f").to_pylist() == ROWS
    (tmp_path / "one.csv").write_text("user\n1\n2\n")  # a single column stays one column
    assert read_table(tmp_path / "one.csv", "f").column_names == ["user"]


def test_gzipped_parquet_and_recbole_tsv(tmp_path: Path) -> None:
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "p.parquet")
    (tmp_path / "p.parquet.gz").write_bytes(gzip.compress((tmp_path / "p.parquet").read_bytes()))
    assert read_table(tmp_path / "p.parquet.gz", "f").num_rows == 2
    (tmp_path / "x.inter").write_text('user_id:token\titem_id:token\n1\t"Heat" (1995)\n')
    assert read_table(tmp_path / "x.inter", "f").to_pylist()[0]["item_id:token"] == '"Heat" (1995)'


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("log.txt", b"user,item\n1,2\n", "unknown extension; use one of .csv, .tsv"),
        ("log.csv", b"", "is empty"),
        ("log.jsonl", b"", "is empty"),
        ("log.csv", b"user,item\n", "has no rows, only a header line ('user', 'item'); if that"),
        (
            "docs.tsv",
            b"zz2-a\tsome text\n",
            "only a header line ('zz2-a', 'some text'); if that line is data, add a header line",
        ),
        ("log.csv", b"user,item\n1,2\n3,\xff\n", "line 3 is not UTF-8"),
        (
            "log.csv",
            "user,item\n1,2\n".encode("utf-16"),
            'is UTF-16 text (as Excel\'s "Unicode Text" saves)',
        ),
        ("log.jsonl", b'{"user": "1"}\n{"user": "\xff"}\n', "line 2 is not UTF-8"),
        ("log.csv", b"user,item\n1,2\n3,4,5\n", "line 3 is malformed (Expected 2 columns, got 3"),
        ("log.tsv", b"user\titem\n1\n", "line 2 is malformed"),
        ("log.jsonl", b'{"user": 1}\n\n{"user": 2,\n', "line 3 is not valid JSON"),
        ("log.jsonl", b'{"user": 1}\n[1, 2]\n', "line 2 is a list, not a JSON object"),
        ("log.parquet", b"not parquet", "not a readable Parquet file"),
        ("log.csv.gz", b"not gzip", "cannot read interactions file"),
        (
            "log.tsv",
            b"user\titem\n1\t2\nuser\titem\n3\t4\n",
            "line 3 repeats the header line (files joined?)",
        ),
        ("log.csv", b"user,item\n1,2\n\xef\xbb\xbfuser,item\n", "line 3 repeats the header line"),
    ],
)
def test_read_table_errors_are_one_line(tmp_path: Path, name: str, content: bytes, words: str):
    (tmp_path / name).write_bytes(content)
    with pytest.raises(SemidError) as e:
        read_table(tmp_path / name, "interactions file")
    assert words in str(e.value) and name in str(e.value) and "\n" not in str(e.value)


def test_malformed_row_far_down_is_located(tmp_path: Path) -> None:
    lines = ["user,item"] + [f"{i},{i}" for i in range(50_000)]
    lines[40_000] = "x,y,z"
    (tmp_path / "big.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(SemidError, match="line 40001 is malformed"):
        read_table(tmp_path / "big.csv", "f")
    with pytest.raises(SemidError, match="not found"):
        read_table(tmp_path / "nope.csv", "f")


def test_parse_columns_and_find_column(tmp_path: Path) -> None:
    assert parse_columns("user=uid, item = movie") == {"user": "uid", "item": "movie"}
    assert parse_columns(None) == parse_columns("") == {}
    with pytest.raises(SemidError, match="not ROLE=COLUMN"):
        parse_columns("user:uid")
    with pytest.raises(SemidError, match="twice"):
        parse_columns("user=a,user=b")
    with pytest.raises(SemidError, match="gives column 'c' to both user and item"):
        parse_columns("user=c,item=c")
    assert parse_columns("item=title,text=title") == {"item": "title", "text": "title"}
    table = pa.table({"user_id:token": ["1"], "uid": ["2"], "x": ["3"]})
    with pytest.raises(SemidError, match="could all be the user"):
        find_column(table, "user", ("user_id", "uid"), "f.csv", "file")
    assert find_column(table, "user", ("user_id",), "f.csv", "file") == "user_id:token"
    assert find_column(table, "user", ("user",), "f.csv", "file", explicit="x") == "x"


def test_files_of_commands_without_columns_are_not_told_to_pass_it(tmp_path: Path) -> None:
    from semid.data.image_files import load_images
    from semid.tasks.items import read_new_items

    (tmp_path / "new.csv").write_text("sku,text\nn1,a new item\n")  # `index add --items`
    with pytest.raises(SemidError, match=r"lacks an item column .*; rename it$"):
        read_new_items(tmp_path / "new.csv", None, None)
    # `train retriever --model avg`
    (tmp_path / "photos.csv").write_text("picture,caption\na.png,a fox\n")
    with pytest.raises(SemidError, match=r"lacks a path column .*; rename it$"):
        load_images(tmp_path / "photos.csv")
    table = pa.table({"user_id": ["1"], "uid": ["2"]})
    with pytest.raises(SemidError, match="could all be the user; rename all but one"):
        find_column(table, "user", ("user_id", "uid"), "f.csv", "file", columns_option=False)


def test_content_sha256(tmp_path: Path) -> None:
    data = tmp_path / "d" / "log.csv"
    data.parent.mkdir()
    data.write_bytes(b"user,item\n1,2\n")
    assert content_sha256(data) == hashlib.sha256(data.read_bytes()).hexdigest()
    (tmp_path / "d" / "sub").mkdir()
    (tmp_path / "d" / "sub" / "x.bin").write_bytes(b"x")
    folder_hash = content_sha256(tmp_path / "d")
    shutil.copytree(tmp_path / "d", tmp_path / "moved")
    assert content_sha256(tmp_path / "moved") == folder_hash  # location does not matter
    (tmp_path / "moved" / "sub" / "x.bin").write_bytes(b"y")
    assert content_sha256(tmp_path / "moved") != folder_hash
    assert content_sha256([data, tmp_path / "d" / "sub" / "x.bin"]) != content_sha256(data)


def test_a_data_file_that_cannot_be_read_is_named_when_hashing(tmp_path: Path, monkeypatch) -> None:
    """eval hashes a run's data to check it is unchanged: a file made unreadable since training
    gave a PermissionError traceback (root reads any file, so opening it is made to fail)."""
    data = tmp_path / "d" / "a.png"
    data.parent.mkdir()
    data.write_bytes(b"x")
    real_open = open

    def refusing(path, *args, **kwargs):
        if Path(path) == data:
            raise PermissionError(13, "Permission denied", str(path))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr("builtins.open", refusing)
    with pytest.raises(SemidError, match=f"cannot read {data} to hash the data: Permission denied"):
        content_sha256(tmp_path / "d")


def test_what_semid_writes_inside_a_data_folder_is_not_its_data(tmp_path: Path) -> None:
    """`--dataset . --out runs/x`: the run, an index, a training folder, lock and temporary files
    (all hidden) and a loop of links change neither the hash nor the stamp of the data."""
    data = tmp_path / "photos"
    (data / "cat").mkdir(parents=True)
    (data / "cat" / "a.png").write_bytes(b"png")
    before, stamp = content_sha256(data), data_stamp(str(data))
    writes = {"runs/x/manifest.json": "{}", "runs/x/model/w.bin": "w", "index/codes.safetensors": "c",
              "index/keys.json": "[]", "runs/y/train/train_config.json": "{}", ".runs.lock": "",
              ".x.123.abcdefgh.tmp/part": "p", "cat/.DS_Store": "d"}  # fmt: skip
    for name, text in writes.items():
        (data / name).parent.mkdir(parents=True, exist_ok=True)
        (data / name).write_text(text)
    (data / "cat" / "loop").symlink_to(data)
    assert content_sha256(data) == before and data_stamp(str(data)) == stamp
    (data / "cat" / "b.png").write_bytes(b"png")  # data after all
    assert content_sha256(data) != before


# --- load_interaction_files ------------------------------------------------------------------

LOG = "user,item,timestamp\nu1,i2,10\nu1,i1,10\nu1,i3,5\nu2,i1,1\nu2,i3,2\nu2,i2,3\nu3,i1,4\n"
ITEMS = "item,text\ni3,third\ni1,first\ni2,second\ni9,never rated\n"


def files(tmp_path: Path, log: str = LOG, items: str | None = ITEMS) -> tuple[Path, Path | None]:
    (tmp_path / "log.csv").write_text(log)
    if items is None:
        return tmp_path / "log.csv", None
    (tmp_path / "items.csv").write_text(items)
    return tmp_path / "log.csv", tmp_path / "items.csv"


def test_interactions_with_items(tmp_path: Path) -> None:
    d = load_interaction_files(*files(tmp_path))
    assert d.name == "log"
    assert d.item_keys == ["i3", "i1", "i2"]  # items-file order; i9 has no interactions
    assert d.item_texts == ["third", "first", "second"]
    assert d.user_keys == ["u2", "u1"]  # first appearance by time; u3 has 1 < 3 interactions
    assert d.left_out_users == {"u3"}
    assert d.notes == [
        "dropped 1 user with fewer than 3 interactions (1 interaction)",
        f"dropped 1 item of {tmp_path / 'items.csv'} that no kept interaction names (add them to a "
        f"trained run with `semid index add RUN --items {tmp_path / 'items.csv'} --skip-indexed`)",
    ]
    log = d.interactions
    assert (log.num_users, log.num_items, len(log)) == (2, 3, 6)
    assert log.item_keys == d.item_keys
    split = leave_one_out(log)
    keys = [[d.item_keys[i] for i in split.test_items.tolist()]]
    assert keys == [["i2", "i2"]]  # u1's tie at t=10: 'i1' < 'i2' by key, so i2 is last


def test_the_note_on_unrated_items_says_which_need_a_text_before_they_can_be_added(tmp_path):
    d = load_interaction_files(*files(tmp_path, items=ITEMS + 'i8,""\n'))
    assert d.notes[-1] == (
        f"dropped 2 items of {tmp_path / 'items.csv'} that no kept interaction names (add them to a "
        f"trained run with `semid index add RUN --items {tmp_path / 'items.csv'} --skip-indexed` "
        "once the 1 item without text has one)"
    )


def test_row_order_does_not_matter(tmp_path: Path) -> None:
    header, *rows = LOG.splitlines()
    a = load_interaction_files(*files(tmp_path), min_interactions=1)
    random.Random(0).shuffle(rows)
    b = load_interaction_files(
        *files(tmp_path, "\n".join([header, *rows]) + "\n"), min_interactions=1
    )
    assert (a.user_keys, a.item_keys) == (b.user_keys, b.item_keys)
    for field in ("users", "items", "timestamps"):
        assert getattr(a.interactions, field).tolist() == getattr(b.interactions, field).tolist()


@pytest.mark.parametrize("fraction", ["", ".5"])  # whole seconds sort on one key, others on two
def test_ids_follow_time_then_keys_in_code_point_order(tmp_path: Path, fraction: str) -> None:
    """Oracle: rows sorted by (time, user key, item key) as Python sorts strings ("10" < "9",
    "Z" < "a" < "é"); users and items numbered by first appearance in that order; exact repeats
    dropped. Many ties, so the key order decides most of it."""
    rng = random.Random(0)
    names = ["10", "9", "Z", "a", "é", "ab", "a b"]
    rows = {(rng.choice(names), rng.choice(names[::-1]), rng.randrange(4)) for _ in range(120)}
    rows.add(("10", "9", 0))
    ordered = sorted(rows, key=lambda r: (r[2], r[0], r[1]))
    lines = [f"{u},{i},{t}{fraction}" for u, i, t in rows] + [f"10,9,0{fraction}"] * 2  # repeats
    (tmp_path / "log.csv").write_text("user,item,timestamp\n" + "\n".join(lines) + "\n")
    d = load_interaction_files(tmp_path / "log.csv", min_interactions=1)
    users = list(dict.fromkeys(u for u, _, _ in ordered))
    items = list(dict.fromkeys(i for _, i, _ in ordered))
    assert (d.user_keys, d.item_keys) == (users, items)
    log = d.interactions
    assert log.users.tolist() == [users.index(u) for u, _, _ in ordered]
    assert log.items.tolist() == [items.index(i) for _, i, _ in ordered]
    assert log.timestamps.tolist() == [t + float(fraction or 0) for _, _, t in ordered]


def test_without_items_file_there_are_no_texts(tmp_path: Path) -> None:
    d = load_interaction_files(*files(tmp_path, items=None), min_interactions=1)
    assert d.item_texts is None
    assert d.item_keys == ["i1", "i3", "i2"]  # first appearance after sorting by (time, user, item)
    assert d.user_keys == ["u2", "u3", "u1"]
    assert load_dataset(str(tmp_path / "log.csv")).item_texts is None  # a table path loads too


def test_aliases_typed_headers_and_explicit_columns(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("userId,movieId,ts\n007,1,3\n007,2,4\n007,3,5\n")
    d = load_interaction_files(tmp_path / "a.csv")
    assert d.user_keys == ["007"] and d.item_keys == ["1", "2", "3"]
    (tmp_path / "b.inter").write_text("user_id:token\titem_id:token\ttimestamp:float\n1\t2\t3.7\n")
    d = load_interaction_files(tmp_path / "b.inter", min_interactions=1)
    assert d.interactions.timestamps.tolist() == [3.7]  # decimals are kept
    (tmp_path / "c.csv").write_text("who,what,when\nx,y,2021-01-01T00:00:01\n")
    d = load_interaction_files(
        tmp_path / "c.csv", columns="user=who,item=what,timestamp=when", min_interactions=1
    )
    assert d.interactions.timestamps.tolist() == [1_609_459_201]


def test_column_names_are_found_with_case_spaces_and_punctuation_aside(tmp_path: Path) -> None:
    """A retail export's CustomerID, an Item Id and a TIMESTAMP are the user, item and time;
    a name written as an alias wins over one that matches only loosely."""
    (tmp_path / "a.csv").write_text("CustomerID,Item Id,TIMESTAMP\nc1,i1,3\nc1,i2,1\nc1,i3,2\n")
    d = load_interaction_files(tmp_path / "a.csv")
    assert d.user_keys == ["c1"] and d.item_keys == ["i2", "i3", "i1"]  # in TIMESTAMP order
    (tmp_path / "b.csv").write_text("user,User_ID,item\nu1,x,i1\nu1,x,i2\nu1,x,i3\n")
    assert load_interaction_files(tmp_path / "b.csv").user_keys == ["u1"]
    (tmp_path / "c.csv").write_text("USER_ID,UserId,item\nu1,x,i1\n")
    with pytest.raises(SemidError, match="columns USER_ID, UserId could all be the user"):
        load_interaction_files(tmp_path / "c.csv", min_interactions=1)


def test_a_log_without_timestamps_says_file_order_is_time_order(tmp_path: Path) -> None:
    """No timestamp column: file order is time order, and the note names the columns left unused
    (a time column under an unknown name would otherwise be ignored in silence)."""
    (tmp_path / "a.csv").write_text("customer,product,when_watched\nx,b,2\nx,a,1\nx,c,3\n")
    d = load_interaction_files(tmp_path / "a.csv", columns="user=customer,item=product")
    assert d.interactions.timestamps.tolist() == [0, 1, 2] and d.item_keys == ["b", "a", "c"]
    (note,) = d.notes
    assert "no timestamp column" in note and "file order is time order" in note
    assert "if column when_watched is the time, pass --columns timestamp=NAME" in note
    timed = load_interaction_files(
        tmp_path / "a.csv", columns="user=customer,item=product,timestamp=when_watched"
    )
    assert timed.notes == [] and timed.item_keys == ["a", "b", "c"]
    (tmp_path / "b.csv").write_text("user,item\nx,b\nx,a\nx,c\n")
    (note,) = load_interaction_files(tmp_path / "b.csv").notes
    assert note.endswith("file order is time order")  # no other column to point at
    (tmp_path / "c.csv").write_text(
        "user,item,date\nx,b,2024-01-01\nx,a,2024-01-01\nx,c,2024-01-02\n"
    )
    d = load_interaction_files(tmp_path / "c.csv")  # day-level dates would tie: file order is kept
    assert d.item_keys == ["b", "a", "c"] and "if column date is the time" in d.notes[0]
    (tmp_path / "yelp.csv").write_text(  # Yelp's dates have a time of day: they are the time
        "user_id,business_id,stars,date\nx,b,5,2016-03-07 17:58:53\nx,a,4,2016-03-07 09:00:00\n"
        "x,c,3,2017-01-01 00:00:01\n"
    )
    d = load_interaction_files(tmp_path / "yelp.csv")
    assert d.notes == [] and d.item_keys == ["a", "b", "c"]
    # a date column matches as every column name does, with case and punctuation aside
    (tmp_path / "shop.csv").write_text(
        "CustomerID,ProductID,Rating,Date\nx,b,5,2016-03-07T17:58:53\nx,a,4,2016-03-07T09:00:00\n"
        "x,c,3,2017-01-01T00:00:01\n"
    )
    d = load_interaction_files(tmp_path / "shop.csv")
    assert d.notes == [] and d.item_keys == ["a", "b", "c"]


def test_a_column_of_iso_datetimes_under_another_name_is_the_time(tmp_path: Path) -> None:
    """A shuffled export with its time under `when` was read in file order (a random split), with
    only a note naming `when` among the unused columns; the one column of ISO datetimes with a
    time of day is now the time, and a note says it was taken."""
    (tmp_path / "a.csv").write_text(
        "user,item,when,stars\nx,b,2000-09-06T16:05:21Z,5\nx,a,2000-09-06T09:00:00Z,4\n"
        "x,c,2000-09-07 10:00,3\n"
    )
    d = load_interaction_files(tmp_path / "a.csv", min_interactions=1)
    assert d.item_keys == ["a", "b", "c"]
    (note,) = d.notes
    assert note.startswith("column 'when' holds datetimes, so it is taken as the time")
    assert "pass --columns timestamp=NAME for the time column, or remove it" in note
    # a column of optional datetimes (empty or other text on some rows, past the first values
    # looked at) is no time of every event: file order, and a note on why it was not taken
    rows = "".join(f"x,i{n},2000-09-06T16:{n:02d}:00Z,5\n" for n in range(20))
    for late in ("unknown", ""):
        (tmp_path / "late.csv").write_text(f"user,item,when,stars\n{rows}x,d,{late},2\n")
        d = load_interaction_files(tmp_path / "late.csv", min_interactions=1)
        assert d.item_keys[-1] == "d" and "file order is time order" in d.notes[0]
        assert "column 'when' holds datetimes, but is not taken as the time of the events: some " \
               "rows hold none" in d.notes[1]  # fmt: skip
    # a date of the user (signup), one time for all their events: file order, not item-id order
    (tmp_path / "signup.csv").write_text(
        "user,item,signup\nx,c,2000-01-01T10:00:00\nx,a,2000-01-01T10:00:00\n"
        "y,b,2001-05-05T12:00:00\ny,a,2001-05-05T12:00:00\n"
    )
    d = load_interaction_files(tmp_path / "signup.csv", min_interactions=1)
    assert (
        d.item_keys == ["c", "a", "b"] and "2 of 2 users have every event at one time" in d.notes[1]
    )
    # dates typed as timestamps (parquet) at midnight would tie a day's events: not taken
    day = pa.array(
        [datetime(2000, 9, 6), datetime(2000, 9, 6), datetime(2000, 9, 7)], pa.timestamp("s")
    )
    pq.write_table(pa.table({"user": ["x", "x", "x"], "item": ["b", "a", "c"], "day": day}),
                   tmp_path / "days.parquet")  # fmt: skip
    d = load_interaction_files(tmp_path / "days.parquet", min_interactions=1)
    assert d.item_keys == ["b", "a", "c"] and "dates without a time of day" in d.notes[1]
    # two such columns: which is the time is not guessed (file order, and the usual note)
    (tmp_path / "b.csv").write_text(
        "user,item,sent,opened\nx,b,2000-09-06T16:05:21,2000-09-06T17:00:00\n"
        "x,a,2000-09-06T09:00:00,2000-09-06T10:00:00\n"
    )
    d = load_interaction_files(tmp_path / "b.csv", min_interactions=1)
    assert d.item_keys == ["b", "a"] and "file order is time order" in d.notes[0]
    # day-level dates under another name tie within a day: not taken either
    (tmp_path / "c.csv").write_text("user,item,when\nx,b,2000-09-06\nx,a,2000-09-06\n")
    d = load_interaction_files(tmp_path / "c.csv", min_interactions=1)
    assert d.item_keys == ["b", "a"] and "if column when is the time" in d.notes[0]


def test_every_missing_key_column_of_both_files_is_named_in_one_error(tmp_path: Path) -> None:
    """An own log and catalogue under other names took a run per missing column (the items file's
    item, then the log's user); one error now names them all, and one --columns fixes them."""
    log, items = files(tmp_path, "customer,product,when\nu1,P1,2000-09-06T16:05:21Z\n"
                       "u1,P2,2000-09-06T17:05:21Z\n", "product,title\nP1,one\nP2,two\n")  # fmt: skip
    with pytest.raises(SemidError) as caught:
        load_interaction_files(log, items, min_interactions=1)
    message = str(caught.value)
    assert message.startswith(f"items file {items} lacks an item column (accepted names: item, ")
    assert f"and interactions file {log} lacks a user and an item column" in message
    assert "found: customer, product, when)" in message
    assert (
        "; rename them or pass --columns user=NAME,item=NAME (item= names the item column of both"
        in message
    )
    with pytest.raises(SemidError, match=r"^interactions file .* lacks a user column \(accepted"):
        load_interaction_files(log, items, columns="item=product", min_interactions=1)
    d = load_interaction_files(log, items, columns="user=customer,item=product", min_interactions=1)
    assert d.item_keys == ["P1", "P2"] and d.item_texts == ["title: one", "title: two"]
    # --columns item= naming the items file's column: the log's two missing columns, in one error
    (tmp_path / "skus.csv").write_text("sku,title\nP1,one\nP2,two\n")
    with pytest.raises(SemidError, match=r"^interactions file .* lacks a user and an item column"):
        load_interaction_files(log, tmp_path / "skus.csv", columns="item=sku", min_interactions=1)


@pytest.mark.parametrize("name", ["datetime", "event_time", "created_at", "Timestamp", "TIME"])
def test_common_time_column_names_are_found(tmp_path: Path, name: str) -> None:
    (tmp_path / "a.csv").write_text(
        f"user,item,{name}\nx,b,2024-01-02 10:00\nx,a,2024-01-01 10:00\nx,c,2024-01-03 10:00\n"
    )
    d = load_interaction_files(tmp_path / "a.csv")
    assert d.notes == [] and d.item_keys == ["a", "b", "c"]


def test_public_logs_are_read_by_their_own_column_names(tmp_path: Path) -> None:
    """Amazon reviews (JSON Lines of reviewerID, asin, unixReviewTime) and a Yelp-style log need
    no --columns; a log with both of Amazon 2023's item columns is asked which one is the item."""
    amazon = [{"reviewerID": "A1", "asin": f"B{i}", "unixReviewTime": 10 - i, "overall": 5.0}
              for i in range(3)]  # fmt: skip
    # Amazon's files are JSON Lines named .json, often gzipped (Beauty_5.json.gz)
    lines = "".join(json.dumps(r) + "\n" for r in amazon)
    (tmp_path / "Beauty_5.json.gz").write_bytes(gzip.compress(lines.encode()))
    d = load_interaction_files(tmp_path / "Beauty_5.json.gz")
    assert d.user_keys == ["A1"] and d.item_keys == ["B2", "B1", "B0"] and d.notes == []
    (tmp_path / "array.json").write_text(json.dumps(amazon, indent=1))
    with pytest.raises(
        SemidError, match="array.json is a JSON array; write JSON Lines, one object per line$"
    ):
        load_interaction_files(tmp_path / "array.json")
    (tmp_path / "yelp.csv").write_text("user_id,business_id,stars\nu,b1,4\nu,b2,3\nu,b3,5\n")
    assert load_interaction_files(tmp_path / "yelp.csv").item_keys == ["b1", "b2", "b3"]
    (tmp_path / "both.csv").write_text("user_id,asin,parent_asin,timestamp\nu,a,p,1\n")
    with pytest.raises(
        SemidError,
        match="columns asin, parent_asin could all be the item; pick one with --columns item=NAME",
    ):
        load_interaction_files(tmp_path / "both.csv", min_interactions=1)


def test_json_lines_whose_fields_change_kind_from_row_to_row(tmp_path: Path) -> None:
    """pyarrow refuses a field that is a string in one row and a list in the next (Amazon's
    metadata); such files are read row by row, those fields as text."""
    meta = [
        {"asin": "a", "title": "Soap", "description": "Gentle.", "rank": {"Beauty": 3}},
        {"asin": "b", "title": None, "description": ["Mild,", "", "for all"], "rank": "n/a"},
        {"asin": "c", "description": ""},
    ]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    assert item_text_table(tmp_path / "meta.jsonl") == {  # c has no text
        "a": "title: Soap; description: Gentle.; rank: Beauty: 3",
        "b": "description: Mild,, for all; rank: n/a",
    }
    log = [{"user": "u", "item": item, "timestamp": t} for t, item in enumerate([7, "7b", 8])]
    (tmp_path / "log.jsonl.gz").write_bytes(
        gzip.compress("".join(json.dumps(r) + "\n" for r in log).encode())
    )
    assert load_interaction_files(tmp_path / "log.jsonl.gz").item_keys == ["7", "7b", "8"]
    (tmp_path / "bad.jsonl").write_text('{"item": 1, "user": "u"}\n{"item": "x"}\n{"item": 2,}\n')
    with pytest.raises(SemidError, match=r"bad.jsonl line 3 is not valid JSON"):
        load_interaction_files(tmp_path / "bad.jsonl")


def test_amazon_2014_metadata_of_python_dict_literals(tmp_path: Path) -> None:
    """meta_Beauty.json.gz (2014) holds one Python dict literal a line, not JSON."""
    meta = [
        {
            "asin": "a",
            "title": "Soap",
            "categories": [["Beauty", "Bath"]],
            "salesRank": {"Beauty": 3},
        },
        {"asin": "b", "title": "Gel's best", "price": 9.5},
    ]
    (tmp_path / "meta_Beauty.json.gz").write_bytes(
        gzip.compress("".join(f"{m!r}\n" for m in meta).encode())
    )
    assert item_text_table(
        tmp_path / "meta_Beauty.json.gz", {"item": "asin", "text": "title+categories"}
    ) == {
        "a": "title: Soap; categories: Beauty, Bath",
        "b": "title: Gel's best",
    }
    (tmp_path / "bad.json").write_text(f"{meta[0]!r}\n{{'asin': 'c', 'title': oops}}\n")
    with pytest.raises(
        SemidError, match="bad.json line 2 is neither JSON nor a Python dict literal"
    ):
        item_text_table(tmp_path / "bad.json")


def test_the_text_may_be_chosen_columns_joined(tmp_path: Path) -> None:
    """--columns text=title+brand joins those columns alone (Amazon's metadata has URLs and lists
    of related products that would flood the text)."""
    meta = [
        {
            "asin": "a",
            "title": "Soap",
            "brand": "Acme",
            "imUrl": "http://x/a.jpg",
            "related": ["b"],
        },
        {"asin": "b", "title": "Gel", "brand": None, "imUrl": "http://x/b.jpg", "related": ["a"]},
    ]
    (tmp_path / "meta.jsonl").write_text("".join(json.dumps(m) + "\n" for m in meta))
    columns = {"item": "asin", "text": "title+brand"}
    assert item_text_table(tmp_path / "meta.jsonl", columns) == {
        "a": "title: Soap; brand: Acme",
        "b": "title: Gel",
    }
    with pytest.raises(SemidError, match="has no column 'rank' .given for text."):
        item_text_table(tmp_path / "meta.jsonl", {"text": "title+rank"})


def test_item_texts_joined_from_columns(tmp_path: Path) -> None:
    items = "movieId,title,year,genres\ni1,Heat,1995,Action|Crime\ni2,Up,,Animation\ni3,X,2000,\n"
    d = load_interaction_files(*files(tmp_path, items=items), min_interactions=1)
    assert d.item_texts[:2] == [
        "title: Heat; year: 1995; genres: Action|Crime",
        "title: Up; genres: Animation",
    ]


@pytest.mark.parametrize(
    "log, items, kwargs, words",
    [
        ("u,item\n1,2\n", None, {}, "lacks a user column (accepted names: user, user_id, userId"),
        (
            "u,i,t\n1,2,3\n",
            None,
            {},
            "lacks a user and an item column (accepted names: user, user_id, ... and item",
        ),
        (
            "u,i\n1,2\n",
            None,
            {"columns": "user=u"},
            "lacks an item column (accepted names: item, item_id",
        ),
        ("user,item_id,iid\n1,2,3\n", None, {}, "columns item_id, iid could all be the item"),
        (
            "user,item,datetime,time\n1,2,3,4\n",
            None,
            {},
            "columns datetime, time could all be the timestamp",
        ),
        (LOG, "item,text\ni1,a\ni2,b\ni1,c\n", {}, "line 4 repeats item 'i1' (first at line 2)"),
        (LOG, "item,text\ni1,a\n", {}, "4 interactions name 2 items without text in"),
        (LOG, "item,text\ni1,a\n", {}, "(first: 'i2'); add them to the items file or drop them"),
        (LOG, "item,text\ni1,a\ni2,\ni3,c\n", {}, "2 interactions name 1 item without text"),
        (LOG, "item,text\ni1,a\ni2,\ni3,c\n", {}, "; give them a text in the items file or drop"),
        ("user_id item_id ts\nu1 i1 1\n", None, {}, "the first line was read as one column"),
        ("u1,100,97\nu2,101,98\n", None, {}, "the first line looks like data: add a header line"),
        ("user,item,timestamp\n1,2,\n", None, {}, "line 2: empty timestamp"),
        (
            "user,item,timestamp\n1,2,soon\n",
            None,
            {},
            "line 2: timestamp 'soon' is not integer seconds",
        ),
        (  # the row to fix, not the first of the numbers beside it
            "user,item,timestamp\n1,2,5\n1,3,6\n1,4,soon\n",
            None,
            {},
            "line 4: timestamp 'soon' is not integer seconds",
        ),
        (
            "user,item,timestamp\n1,2,5\n1,3,2024-01-01\n",
            None,
            {},
            "mixes numbers (line 2: '5') and datetimes (line 3: '2024-01-01')",
        ),
        ("user,item\n1,\n", None, {}, "line 2: empty item id"),
        (  # inside the id (those around it are trimmed as spaces): a table one key a line breaks
            'user,item\n1,2\n1,"a\tb"\n',
            None,
            {},
            "line 3: the item id 'a\\tb' holds a control character ('\\t'); ids cannot hold",
        ),
        (LOG, None, {"columns": "user=x"}, "no column 'x' (given for user)"),
        (LOG, None, {"columns": "usr=user"}, "unknown role(s) usr"),
        (LOG, None, {"missing_text": "skip"}, "missing_text must be"),
        (LOG, None, {"min_interactions": 9}, "no interactions left"),
    ],
)
def test_interaction_errors(tmp_path: Path, log: str, items: str | None, kwargs: dict, words: str):
    with pytest.raises(SemidError) as e:
        load_interaction_files(*files(tmp_path, log, items), **kwargs)
    assert words in str(e.value) and "\n" not in str(e.value)


def test_missing_text_can_be_dropped(tmp_path: Path) -> None:
    d = load_interaction_files(
        *files(tmp_path, items="item,text\ni1,a\ni2,b\n"), missing_text="drop", min_interactions=2
    )
    assert d.item_keys == ["i1", "i2"] and len(d.interactions) == 4
    assert (
        d.notes[0] == f"dropped 2 interactions with 1 item without text in {tmp_path / 'items.csv'}"
    )
    assert d.notes[1] == "dropped 1 user with fewer than 2 interactions (1 interaction)"


def test_item_ids_written_one_way_in_the_log_and_another_in_the_items_file_are_named(
    tmp_path: Path,
) -> None:
    """A spreadsheet re-saved the items file's 28 as 28.0: the fix was said to be
    --missing-text drop, which then dropped every event."""
    log = "user,item,timestamp\nu1,28,1\nu1,7,2\nu1,9,3\n"
    paths = files(tmp_path, log, "item,text\n28.0,a\n7.0,b\n9.0,c\n")
    words = (
        "the items file writes '28.0' where the log writes '28': ids are compared as text, so write"
    )
    with pytest.raises(SemidError, match=words):
        load_interaction_files(*paths)
    paths = files(tmp_path, log, "item,text\n28.0,a\n7,b\n9,c\n")
    d = load_interaction_files(*paths, missing_text="drop", min_interactions=1)
    assert d.notes[0].endswith(
        "(the items file writes '28.0' where the log writes '28': ids are compared as text)"
    )


# --- acceptance: ml-100k as plain files ------------------------------------------------------


def split_by_keys(d) -> dict[str, tuple[list[str], str, str]]:
    """Per evaluated user key: (train item keys in order, valid item key, test item key)."""
    s = leave_one_out(d.interactions)
    out = {}
    for row, u in enumerate(s.test_users.tolist()):
        seq = [d.item_keys[i] for i in s.sequence_items[s.ptr[u] : s.ptr[u + 1]].tolist()]
        valid, test = d.item_keys[s.valid_items[row]], d.item_keys[s.test_items[row]]
        assert seq[-2:] == [valid, test]
        out[d.user_keys[u]] = (seq[:-2], valid, test)
    return out


@pytest.mark.skipif(importlib.util.find_spec("recbole") is None, reason="recbole missing")
def test_ml100k_as_shuffled_files_splits_like_the_embedded_copy(tmp_path: Path) -> None:
    ref = load_dataset("ml-100k")
    log = ref.interactions
    rows = list(zip(log.users.tolist(), log.items.tolist(), log.timestamps.tolist(), strict=True))
    order = np.random.default_rng(0).permutation(len(rows))
    lines = [f"{ref.user_keys[rows[r][0]]},{ref.item_keys[rows[r][1]]},{rows[r][2]}" for r in order]
    (tmp_path / "inter.csv").write_text("user,item,timestamp\n" + "\n".join(lines) + "\n")
    items = pa.table({"item": ref.item_keys[::-1], "text": ref.item_texts[::-1]})
    pacsv.write_csv(items, tmp_path / "items.csv")
    mine = load_interaction_files(tmp_path / "inter.csv", tmp_path / "items.csv")
    assert mine.notes == [] and len(mine.interactions) == len(log) == 100_000
    assert dict(zip(mine.item_keys, mine.item_texts, strict=True)) == dict(
        zip(ref.item_keys, ref.item_texts, strict=True)
    )
    expected = split_by_keys(ref)
    assert len(expected) == 943
    assert split_by_keys(mine) == expected


# --- an embeddings index's --interactions ------------------------------------------------------


def read_interactions(path: Path, keys: list[str], min_interactions: int = 3):
    from semid.tasks.base import IndexSource
    from semid.tasks.items import interactions_for_keys

    return interactions_for_keys(
        IndexSource(interactions=path, min_interactions=min_interactions), keys
    )


def test_interactions_for_embeddings_read_like_a_dataset(tmp_path: Path) -> None:
    lines = ["userId;movieId;time"]  # aliases, ';' and ISO times, as an interactions --dataset
    lines += [f"u1;{i};2024-01-0{d}T00:00:00Z" for d, i in ((3, "c"), (1, "a"), (2, "b"))]
    lines += ["u2;a;2024-01-01T00:00:00Z"]  # one event: dropped by min_interactions 3
    (tmp_path / "log.csv").write_text("\n".join(lines) + "\n")
    log = read_interactions(tmp_path / "log.csv", ["b", "c", "a", "unused"])
    assert log.num_users == 1 and log.num_items == 4
    assert log.items.tolist() == [2, 0, 1]  # a, b, c in time order, as rows of the keys
    assert log.timestamps.tolist() == [1704067200, 1704153600, 1704240000]
    explicit = read_interactions(tmp_path / "log.csv", ["a", "b", "c"], min_interactions=1)
    assert explicit.num_users == 2
    with pytest.raises(SemidError, match=r"1 item without an embedding, e.g. 'c'"):
        read_interactions(tmp_path / "log.csv", ["a", "b"])


# --- new items for `semid index add` -----------------------------------------------------------


class RecordingEncoder:
    """Stands in for the text encoder: one zero vector per text, the texts kept for the test."""

    texts: list[str] = []
    device = ""

    def __init__(self, model: str | None = None, device: str = "cpu") -> None:
        self.model = model
        RecordingEncoder.device = device

    def is_cached(self, texts: list[str]) -> bool:
        return False

    def encode(self, texts: list[str]):
        import torch

        RecordingEncoder.texts = list(texts)
        return torch.zeros(len(texts), 4)


@pytest.mark.parametrize(
    "name, content",
    [
        ("new.csv", "item,title,genres\nn1,Heat,Crime\nn2,Up,\n"),
        ("new.tsv", "item_id\ttitle\tgenres\nn1\tHeat\tCrime\nn2\tUp\t\n"),
        (
            "new.jsonl",
            '{"item": "n1", "title": "Heat", "genres": "Crime"}\n{"item": "n2", "title": "Up"}\n',
        ),
    ],
)
def test_new_items_as_an_items_file_get_training_texts(tmp_path, monkeypatch, name, content):
    from semid.tasks import items

    monkeypatch.setattr(items, "TextEncoder", RecordingEncoder)
    (tmp_path / name).write_text(content)
    keys, x, texts = items.read_new_items(tmp_path / name, None, None)
    assert keys == ["n1", "n2"] and x.shape == (2, 4)
    assert texts == RecordingEncoder.texts
    assert RecordingEncoder.texts == ["title: Heat; genres: Crime", "title: Up"]


def test_new_items_as_key_text_lines_and_their_errors(tmp_path, monkeypatch):
    from semid.tasks import items

    monkeypatch.setattr(items, "TextEncoder", RecordingEncoder)
    (tmp_path / "new.tsv").write_text("n1\tHeat (1995)\nn2\tUp\n")
    assert items.read_new_items(tmp_path / "new.tsv", None, None)[0] == ["n1", "n2"]
    assert RecordingEncoder.texts == ["Heat (1995)", "Up"]
    (tmp_path / "blank.csv").write_text("item,title\nn1,Heat\nn2,\n")
    with pytest.raises(SemidError, match="item 'n2' has no text"):
        items.read_new_items(tmp_path / "blank.csv", None, None)
    with pytest.raises(SemidError, match="--keys goes with embeddings"):
        items.read_new_items(tmp_path / "new.tsv", tmp_path / "keys.txt", None)
    assert RecordingEncoder.device == "cpu"
    items.read_new_items(tmp_path / "new.tsv", None, None, device="cuda:1")  # `index add --device`
    assert RecordingEncoder.device == "cuda:1"
    (tmp_path / "own.csv").write_text("sku,desc,price\nn3,Heat,9\n")  # the run's --columns
    keys, _, _ = items.read_new_items(
        tmp_path / "own.csv", None, None, columns={"item": "sku", "text": "desc"}
    )
    assert keys == ["n3"] and RecordingEncoder.texts == ["Heat"]
    # a header after a blank first line is a header still, not an item named "item_id"
    (tmp_path / "late.tsv").write_text("\nitem_id\ttitle\nn4\tHeat\n")
    assert items.read_new_items(tmp_path / "late.tsv", None, None)[0] == ["n4"]


def test_index_build_embeds_item_texts_on_the_chosen_device(tmp_path, monkeypatch):
    """`semid index build --device` reaches the text encoder (resolved: cuda when asked for)."""
    from semid.tasks import items
    from semid.tasks.base import IndexSource

    monkeypatch.setattr(items, "TextEncoder", RecordingEncoder)
    rows = [f"u{u},i{(u + j) % 6},{j}" for u in range(6) for j in range(4)]
    (tmp_path / "log.csv").write_text("user,item,timestamp\n" + "\n".join(rows) + "\n")
    (tmp_path / "items.csv").write_text(
        "item,title\n" + "".join(f"i{i},film {i}\n" for i in range(6))
    )
    source = IndexSource(dataset=str(tmp_path / "log.csv"), items=str(tmp_path / "items.csv"),
                         device="cuda:1")  # fmt: skip
    ids, notes = items.build_item_index(source, "rqkmeans:1x2", tmp_path / "idx", "extra-level", 0)
    assert RecordingEncoder.device == "cuda:1" and len(ids) == 6
    assert RecordingEncoder.texts == [f"title: film {i}" for i in range(6)]


def test_fractions_of_a_second_order_events(tmp_path: Path) -> None:
    """Events within one second keep their order: the last event (the test target) is the one
    at 100.7 s, not the larger item key at 100.2 s; whole-second logs stay int64."""
    (tmp_path / "a.csv").write_text(
        "user,item,timestamp\nA,m,50.0\nA,z,100.2\nA,a,100.7\nA,b,20\nA,c,30\n"
    )
    log = load_interaction_files(tmp_path / "a.csv").interactions
    split = leave_one_out(log)
    assert log.timestamps.dtype == torch.float64
    keys = load_interaction_files(tmp_path / "a.csv").item_keys
    assert keys[int(split.test_items[0])] == "a" and keys[int(split.valid_items[0])] == "z"
    (tmp_path / "b.csv").write_text(
        "user,item,ts\nA,m,2000-01-01T00:00:05.750Z\nA,z,2000-01-01T00:00:05.250Z\n"
    )
    assert load_interaction_files(tmp_path / "b.csv", min_interactions=1).item_keys == ["z", "m"]
    (tmp_path / "c.csv").write_text("user,item,ts\nA,m,5.0\nA,z,6\n")
    assert (
        load_interaction_files(tmp_path / "c.csv", min_interactions=1).interactions.timestamps.dtype
        == torch.int64
    )


def test_repeated_rows_are_dropped_with_a_note(tmp_path: Path) -> None:
    """A double-logged event (same user, item and time) is one event; the same item at another
    time is a real repeat and stays."""
    (tmp_path / "a.csv").write_text(
        "user,item,timestamp\nA,m,1\nA,m,1\nA,z,2\nA,m,3\nB,z,1\nB,z,1\nB,z,1\n"
    )
    d = load_interaction_files(tmp_path / "a.csv", min_interactions=1)
    assert len(d.interactions) == 4
    assert d.notes == ["dropped 3 repeated rows (same user, item and time)"]
    (tmp_path / "days.csv").write_text(
        "user,item,timestamp\nA,m,2024-01-02\nA,m,2024-01-02\nA,z,2024-01-03\n"
    )
    notes = load_interaction_files(tmp_path / "days.csv", min_interactions=1).notes
    assert (
        "dropped 1 repeated row (same user, item and day: the times are dates, so events"
        in (
            notes[-1]  # it said "time", not why a day's repeats tie
        )
    )


def test_datetimes_with_mixed_utc_offsets(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text(
        "user,item,ts\nA,m,2000-12-31T22:00:19+02:00\nA,z,2000-12-31 23:00:00\n"
        "A,q,2000-12-31T23:00:00.5Z\n"
    )
    d = load_interaction_files(tmp_path / "a.csv", min_interactions=1)
    assert d.interactions.timestamps.tolist() == [978292819.0, 978303600.0, 978303600.5]


def test_dates_with_the_month_by_name_as_public_logs_write_them(tmp_path: Path) -> None:
    """Goodreads' date_added (ctime with an offset) and RFC 2822 dates, mixed with ISO 8601."""
    (tmp_path / "a.csv").write_text(
        "user_id,book_id,date_added\n"
        "A,m,Sun Dec 31 22:00:19 +0200 2000\n"  # 20:00:19 UTC
        'A,z,"Sun, 31 Dec 2000 23:00:00 GMT"\n'
        'A,q,"Mon, 1 Jan 2001 00:00:00 +0100"\n'  # 23:00:00 UTC
        "A,r,2000-12-31T23:30:00Z\n"
        "A,s,Sun Dec 31 23:45:00 2000\n"  # ctime, without an offset: UTC
    )
    d = load_interaction_files(
        tmp_path / "a.csv", columns="timestamp=date_added", min_interactions=1
    )
    assert d.interactions.timestamps.tolist() == [
        978292819,
        978303600,
        978303600,
        978305400,
        978306300,
    ]
    (tmp_path / "b.csv").write_text("user,item,timestamp\nA,m,2000-12-31\nA,n,12/31/2000\n")
    with pytest.raises(SemidError, match="line 3: timestamp '12/31/2000' is not"):
        load_interaction_files(tmp_path / "b.csv", min_interactions=1)


def test_an_items_key_column_named_only_in_the_items_file(tmp_path: Path) -> None:
    """--columns item=sku names the items file's key when the log has its own item column."""
    (tmp_path / "log.csv").write_text("user,item,timestamp\nA,1,1\nA,2,2\n")
    (tmp_path / "items.csv").write_text("sku,title\n1,one\n2,two\n")
    d = load_interaction_files(
        tmp_path / "log.csv", tmp_path / "items.csv", columns="item=sku", min_interactions=1
    )
    assert d.item_keys == ["1", "2"] and d.item_texts == ["title: one", "title: two"]
    # "keep": the items file only resolves the columns; every event stays, without texts
    (tmp_path / "log.csv").write_text("user,item,timestamp\nA,1,1\nA,2,2\nA,3,3\n")
    kept = load_interaction_files(tmp_path / "log.csv", tmp_path / "items.csv", columns="item=sku",
                                  missing_text="keep", min_interactions=1)  # fmt: skip
    assert kept.item_keys == ["1", "2", "3"] and kept.item_texts is None
    with pytest.raises(SemidError, match="items.csv lacks an item column .*found: sku, title"):
        load_interaction_files(
            tmp_path / "log.csv", tmp_path / "items.csv", columns="item=skuu", min_interactions=1
        )


def test_moved_data_follows_the_run_only_where_the_data_moved_with_it(tmp_path):
    from semid.runs import moved_data

    old, new = tmp_path / "old", tmp_path / "new"
    (new / "runs" / "r").mkdir(parents=True)
    (new / "log.csv").write_text("user,item\n")
    spec = {"dataset": str(old / "log.csv"), "items": str(old / "gone.csv"), "model": "pop"}
    config = {"spec": spec, "run_path": str(old / "runs" / "r")}
    assert moved_data(config, new / "runs" / "r") == {"dataset": str(new / "log.csv")}
    assert moved_data(config, old / "runs" / "r") == {}  # the run did not move
    assert moved_data({"spec": spec}, new / "runs" / "r") == {}  # written before run_path was kept
    registered = {"spec": {"dataset": "ml-100k"}, "run_path": str(old / "runs" / "r")}
    assert moved_data(registered, new / "runs" / "r") == {}


def test_a_comma_space_export_reads_ids_and_timestamps_without_the_spaces(tmp_path: Path) -> None:
    """`1, a, 883603013` or trailing blanks: the ids and numbers, not a traceback or ' a'."""
    (tmp_path / "a.csv").write_text("user,item,timestamp\n1, a, 30\n1 ,b,10  \n1,c ,20\n")
    (tmp_path / "items.csv").write_text("item,text\n a ,A\nb,B\nc,C\n")
    d = load_interaction_files(tmp_path / "a.csv", tmp_path / "items.csv")
    assert d.interactions.timestamps.tolist() == [10, 20, 30] and d.item_keys == ["a", "b", "c"]
    assert d.user_keys == ["1"] and d.interactions.items.tolist() == [1, 2, 0] and d.notes == []


def test_a_timestamp_that_is_not_a_finite_number_is_named_by_its_line(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("user,item,timestamp\n1,a,5\n1,b,NaN\n1,c,6\n")
    with pytest.raises(SemidError, match="a.csv line 3: timestamp nan is not a finite number"):
        load_interaction_files(tmp_path / "a.csv")


def test_dates_without_a_time_of_day_get_a_note(tmp_path: Path) -> None:
    """Day-level dates tie a day's events, then ordered by item id: the command says so."""
    (tmp_path / "a.csv").write_text(
        "user,item,timestamp\n1,b,2021-03-04\n1,a,2021-03-04\n1,c,2021-03-05\n"
    )
    d = load_interaction_files(tmp_path / "a.csv")
    assert d.item_keys == ["a", "b", "c"]  # the tie, by item id
    (note,) = d.notes
    assert "every timestamp in column 'timestamp' is at midnight" in note and "test target" in note
    (tmp_path / "b.csv").write_text(
        "user,item,timestamp\n1,b,2021-03-04T10:00\n1,a,2021-03-04\n1,c,2021-03-05\n"
    )
    assert load_interaction_files(tmp_path / "b.csv").notes == []  # one time of day: no note


def test_text_columns_without_an_items_file_are_noted(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_text("user,item,timestamp,title\nu,a,1,A\nu,b,2,B\nu,c,3,C\n")
    d = load_interaction_files(tmp_path / "a.csv", columns="text=title")
    assert d.notes == ["--columns text=title names columns of the items file; without --items it "
                       "has no effect"]  # fmt: skip


def test_most_users_with_every_event_at_one_time_get_a_note(tmp_path: Path) -> None:
    """An export time in the timestamp column orders none of a user's events: their test targets
    went to the largest item id as text, in silence (the file's order was the real one)."""
    export = "1600000007"
    rows = [f"u1,{i},{export}" for i in "cab"] + [f"u2,{i},{export}" for i in "zyx"]
    (tmp_path / "a.csv").write_text("\n".join(["user,item,timestamp", *rows, "u3,p,1", "u3,q,2",
                                               "u3,r,3"]) + "\n")  # fmt: skip
    d = load_interaction_files(tmp_path / "a.csv")
    (note,) = d.notes
    assert note.startswith("2 of 3 users have every event at one time in column 'timestamp'")
    assert "test targets are arbitrary" in note and "remove the column" in note
    (tmp_path / "b.csv").write_text("\n".join(["user,item,timestamp", *rows[:3], "u3,p,1", "u3,q,2",
                                               "u4,s,5", "u4,t,6"]) + "\n")  # fmt: skip
    assert load_interaction_files(tmp_path / "b.csv", min_interactions=2).notes == []  # 1 of 3


@pytest.mark.parametrize(
    ("role", "plain", "written"),
    [("item", "7", "007"), ("item", "7", "7.0"), ("user", "1", "01"), ("item", "07", "7.0")],
)
def test_ids_written_two_ways_get_a_note(
    tmp_path: Path, role: str, plain: str, written: str
) -> None:
    """Ids are compared as text: '007' or '7.0' beside '7' are other items, with a note."""
    rows = [(plain, "a"), (written, "b")] if role == "user" else [("u", plain), ("u", written)]
    (tmp_path / "a.csv").write_text(
        "user,item,timestamp\n" + "".join(f"{u},{i},{t}\n" for t, (u, i) in enumerate(rows))
    )
    d = load_interaction_files(tmp_path / "a.csv", min_interactions=1)
    (note,) = d.notes
    assert note.startswith(f"{role} ids {plain!r} and {written!r} differ only by leading zeros")
    (tmp_path / "b.csv").write_text(
        "user,item,timestamp\nu1,7,1\nu1,70,2\nu1,0,3\nu1,00 7,4\nu1,0x7,5\nu1,7.5,6\n"
    )
    assert load_interaction_files(tmp_path / "b.csv").notes == []  # no look-alikes


def test_a_large_csv_with_line_breaks_in_quoted_cells_is_read(tmp_path: Path) -> None:
    """Over pyarrow's 1 MB block, a quoted cell holding line breaks must not split a row."""
    rows = [{"item": f"i{j}", "text": f'line one of {j}\nline "two"\n' + "x" * 200}
            for j in range(8000)]  # fmt: skip
    path = tmp_path / "items.csv"
    pacsv.write_csv(pa.Table.from_pylist(rows), path)  # quotes every cell
    assert path.stat().st_size > 1_500_000
    assert item_text_table(path) == {r["item"]: r["text"] for r in rows}


def test_a_gzip_file_named_without_gz_is_named_so(tmp_path: Path) -> None:
    (tmp_path / "a.csv").write_bytes(gzip.compress(b"user,item\n1,a\n1,b\n1,c\n"))
    with pytest.raises(SemidError, match=r"a.csv is gzip-compressed; name it a.csv.gz"):
        load_interaction_files(tmp_path / "a.csv")


@pytest.mark.parametrize("first", ["# exported 2021-03-04", "sep=,"])
def test_a_comment_or_sep_line_before_the_header_is_named(tmp_path: Path, first: str) -> None:
    (tmp_path / "a.csv").write_text(f"{first}\n# more\nuser,item,timestamp\n1,a,1\n1,b,2\n1,c,3\n")
    with pytest.raises(
        SemidError, match=f"its first line, '{first}', is a comment or Excel's sep="
    ):
        load_interaction_files(tmp_path / "a.csv")


def test_a_movielens_file_given_alone_points_to_its_folder_and_to_a_csv(tmp_path: Path) -> None:
    """A ratings.dat without movies.dat (a user's own log in MovieLens' format) is told how to
    become an interactions file; the folder alone led to a second refusal."""
    (tmp_path / "ratings.dat").write_text("".join(f"{u}::{i}::5::{u * 9 + i}\n" for u in range(3)
                                                  for i in range(4)))  # fmt: skip
    csv = f"sed 's/::/,/g' {tmp_path / 'ratings.dat'}) > ratings.csv, then pass ratings.csv"
    with pytest.raises(
        SemidError, match=f"or pass the MovieLens folder {tmp_path} .*{re.escape(csv)}"
    ):
        load_dataset(str(tmp_path / "ratings.dat"))
    with pytest.raises(SemidError, match=f"has no movies.dat beside it; .*{re.escape(csv)}"):
        load_dataset(str(tmp_path))
    command = csv.split(") >")[0]
    done = subprocess.run(f"(echo user,item,rating,timestamp; {command}) > {tmp_path / 'r.csv'}",
                          shell=True, check=True)  # fmt: skip
    assert done.returncode == 0  # the command told works: a log of 3 users
    assert len(load_dataset(str(tmp_path / "r.csv")).user_keys) == 3


def test_a_bad_row_far_below_a_header_that_starts_with_a_hash_is_named(tmp_path: Path) -> None:
    rows = "".join(f"{i % 5},{i},{i}\n" for i in range(10))
    (tmp_path / "a.csv").write_text(f"#user,item,timestamp\n{rows}5,6,7,8\n")
    with pytest.raises(SemidError, match="a.csv line 12 is malformed"):
        load_interaction_files(tmp_path / "a.csv", columns="user=#user")


def test_an_index_of_ids_read_with_their_spaces_says_why_it_no_longer_fits(tmp_path: Path) -> None:
    """An index built before ids were trimmed keeps ' a': the error says so and how to mend it."""
    from semid.data.sequences import prepare_data
    from semid.ids import SemanticIDs

    (tmp_path / "a.csv").write_text("user,item,timestamp\n1, a,1\n1, b,2\n1, c,3\n")
    ids = SemanticIDs([" a", " b", " c"], torch.tensor([[0, 0], [1, 0], [0, 1]]), [2, 2])
    with pytest.raises(
        SemidError, match="the index keeps ids with spaces around them \\(e.g. ' a'\\)"
    ):
        prepare_data(load_interaction_files(tmp_path / "a.csv"), ids)


def test_a_pinned_dataset_cache_that_cannot_be_written_names_semid_cache(tmp_path, monkeypatch):
    """`--dataset manpages` with an unwritable HOME said 'choose a writable --out', an option
    the command had been given or had not; the cache it could not write is SEMID_CACHE's."""
    from semid.data.pinned import load_pinned

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("SEMID_CACHE", str(tmp_path / "a-file" / "cache"))
    with pytest.raises(SemidError, match="set SEMID_CACHE to a writable folder"):
        load_pinned("manpages", None, 1, lambda folder: pytest.fail("built the dataset"))


@pytest.mark.parametrize(
    "chunks",
    [[[" 007", "a", "b "], ["a", "7", " 007"]], [[3, 1, 3], [2, 1]], [["x"], ["é", "x", "ü"]]],
)
def test_keys_are_numbered_in_arrow_as_pandas_numbers_their_strings(chunks):
    """Interaction ids are numbered without a Python string per row: the same codes (order of
    first appearance, across the column's chunks) and keys as pd.factorize of the strings."""
    column = pa.chunked_array(chunks)
    codes, keys = factorized_keys(column, Path("x.csv"), "user id", trim=True)
    expected_codes, expected_keys = pd.factorize(
        key_strings(column, Path("x.csv"), "user id", trim=True)
    )
    assert codes.dtype == np.int64 and codes.tolist() == expected_codes.tolist()
    assert keys.dtype == object and keys.tolist() == expected_keys.tolist()
    with pytest.raises(SemidError, match="line 3: empty user id"):
        factorized_keys(pa.chunked_array([["a", " "]]), Path("x.csv"), "user id", trim=True)


def test_files_joined_end_to_end_lose_their_inner_byte_order_marks(tmp_path: Path) -> None:
    """A BOM at the start of the second file's first line joined its first cell: user
    '\ufeffu1' beside u1, whose event was then dropped as another user's only one."""
    (tmp_path / "a.csv").write_bytes(
        b"\xef\xbb\xbfuser,item,timestamp\nu1,a,1\nu1,b,2\n\xef\xbb\xbfu1,c,3\n"
    )
    assert read_table(tmp_path / "a.csv", "f").column("user").to_pylist() == ["u1"] * 3
    assert load_interaction_files(tmp_path / "a.csv").interactions.num_users == 1


def test_timestamps_in_seconds_and_milliseconds_are_refused(tmp_path: Path) -> None:
    """Two logs merged, one in milliseconds: its events sorted after every other one."""
    (tmp_path / "a.csv").write_text("user,item,timestamp\nu1,1,1600000000000\nu1,2,1600000100\n"
                                    "u1,3,1600000200\n")  # fmt: skip
    words = (r"mixes seconds \(line 3: 1600000100\) and milliseconds \(line 2: 1600000000000\); "
             "write every timestamp in one unit")  # fmt: skip
    with pytest.raises(SemidError, match=words):
        load_interaction_files(tmp_path / "a.csv")
    (tmp_path / "b.csv").write_text("user,item,timestamp\nu1,1,1\nu1,2,2\nu1,3,1600000000000\n")
    assert (
        load_interaction_files(tmp_path / "b.csv").interactions.num_items == 3
    )  # sequence numbers


def test_ids_in_two_unicode_forms_get_a_note(tmp_path: Path) -> None:
    """'café' composed (Windows, Linux) and decomposed (macOS) are two items, now with a note."""
    (tmp_path / "a.csv").write_text(
        "user,item,timestamp\nu1,caf\u00e9,1\nu1,cafe\u0301,2\nu1,tea,3\n"
    )
    (note,) = load_interaction_files(tmp_path / "a.csv", min_interactions=1).notes
    assert note.startswith(
        "item ids 'caf\u00e9' and 'cafe\u0301' are one text in two Unicode forms"
    )


def test_a_column_read_under_a_shared_name_is_refused_and_unread_ones_are_not(
    tmp_path: Path,
) -> None:
    """`--columns item=item` on `user,item,item` failed with a traceback; trailing commas (columns
    without a name) and two unread columns of one name are no problem."""
    (tmp_path / "a.csv").write_text("user,item,item\nu1,a,b\nu1,c,d\n")
    for columns in (None, {"user": "user", "item": "item"}):
        with pytest.raises(
            SemidError, match="has two columns named 'item'; rename one in the header"
        ):
            load_interaction_files(tmp_path / "a.csv", columns=columns)
    (tmp_path / "b.csv").write_text("user,item,timestamp,note,note,,\nu1,a,1,x,y,,\nu1,b,2,x,y,,\n")
    assert read_table(tmp_path / "b.csv", "f").column_names == [
        "user",
        "item",
        "timestamp",
        "note",
        "note",
    ]
    assert (
        load_interaction_files(tmp_path / "b.csv", min_interactions=1).interactions.num_items == 2
    )


def test_a_header_that_is_data_is_told_to_be_added_and_nothing_else(tmp_path: Path) -> None:
    """The hint is the fix: "rename it" after it named a column the file lacks."""
    from semid.data.documents import read_documents
    from semid.data.tables import find_column, read_table

    (tmp_path / "log.csv").write_text("u1,100,97\nu2,101,98\n")
    (tmp_path / "docs.tsv").write_text(
        "0\tThe presence of communication\n1\tThe Manhattan Project\n"
    )
    (tmp_path / "qrels.tsv").write_text("q1\td1\t1\nq2\td2\t1\n")
    attempts = [
        lambda: load_interaction_files(tmp_path / "log.csv"),
        lambda: read_documents(tmp_path / "docs.tsv"),
        lambda: find_column(
            read_table(tmp_path / "qrels.tsv", "qrels file"),
            "query id",
            ("query-id", "qid"),
            tmp_path / "qrels.tsv",
            "qrels file",
        ),  # fmt: skip
    ]
    for attempt in attempts:
        with pytest.raises(SemidError) as e:
            attempt()
        assert str(e.value).endswith("add a header line naming the columns)"), str(e.value)


def test_texts_may_hold_line_breaks_and_tabs_where_keys_may_not(tmp_path: Path) -> None:
    """Captions and queries are texts, whose line breaks and tabs are theirs to keep; ids are
    listed one a line, so a control character in one is refused."""
    import pyarrow as pa

    from semid.data.tables import key_strings

    cells = pa.chunked_array([["a dog\ton grass", "two\nlines"]])
    assert list(key_strings(cells, tmp_path / "c.csv", "caption", texts=True)) == [
        "a dog\ton grass",
        "two\nlines",
    ]
    with pytest.raises(SemidError, match=r"the image path 'a dog\\ton grass' holds a control"):
        key_strings(cells, tmp_path / "c.csv", "image path")


@pytest.mark.parametrize("name", ["log.csv", "log.tsv", "log.jsonl"])
def test_a_grown_log_is_read_up_to_its_last_whole_line(tmp_path: Path, name: str) -> None:
    """A log appended to while served: the bytes after its last line feed (a line a writer has
    not finished, or the rest of a block it flushes later) are not read, also when they arrive
    during the read; a file that did not grow, or a first read, is read whole."""
    from semid.data.tables import read_table, read_up_to
    from semid.tasks.data import appended_ends, data_stamp

    if name.endswith(".jsonl"):
        rows = [
            json.dumps({"user": "u1", "item": i, "timestamp": t}) for i, t in (("a", 1), ("b", 2))
        ]
        whole, half = "\n".join(rows) + "\n", '{"user": "u1", "it'
    else:
        sep = "," if name.endswith(".csv") else "\t"
        whole = "\n".join(sep.join(r) for r in (("user", "item", "timestamp"), ("u1", "a", "1")))
        whole, half = whole + "\n" + sep.join(("u1", "b", "2")) + "\n", f"u1{sep}c"
    log = tmp_path / name
    log.write_text(whole[: len(whole) // 3])
    first = data_stamp(str(log))
    assert appended_ends(None, first) == {}  # a first read: whole
    log.write_text(whole + half)
    grown = data_stamp(str(log))
    ends = appended_ends(first, grown)
    assert ends == {str(log): len(whole.encode())}
    with open(log, "a") as f:  # more written after the stamp, before the read
        f.write("x\n")
    with read_up_to(ends):
        table = read_table(log, "interactions file")
    assert table.column("item").to_pylist() == ["a", "b"]
    assert appended_ends(grown, grown) == {}  # unchanged: whole (a file saved without a last \n)
    assert appended_ends(grown, data_stamp(str(log))) == {}  # grown, ending with a line feed
    before = data_stamp(str(log))
    (tmp_path / "new").write_text(whole + whole[: len(whole) // 2].rstrip("\n"))
    (tmp_path / "new").rename(log)  # a larger file saved over it, without a last line feed
    assert appended_ends(before, data_stamp(str(log))) == {}  # another file: read whole


def test_a_grown_log_hashes_as_it_is_read(tmp_path: Path) -> None:
    """Its fingerprint, taken within the cut read, is of the whole lines: a line its writer has not
    finished does not tell a run that its data changed since training."""
    import hashlib

    from semid.data.tables import content_sha256, read_up_to

    whole = b"user,item,timestamp\n" + b"".join(b"u%d,i%d,%d\n" % (i, i, i) for i in range(9))
    log = tmp_path / "log.csv"
    log.write_bytes(whole + b"u1,i")
    with read_up_to({str(log): len(whole)}):
        assert content_sha256(log) == hashlib.sha256(whole).hexdigest()
    assert content_sha256(log) == hashlib.sha256(whole + b"u1,i").hexdigest()


def test_a_keys_file_key_with_a_control_character_is_refused(tmp_path: Path) -> None:
    """`--keys` files are one key a line; a tab or NUL inside a key was taken."""
    from semid.data.embeddings import read_keys

    (tmp_path / "keys.txt").write_text("a\nb\tc\n")
    with pytest.raises(SemidError, match=r"keys.txt line 2: the key 'b\\tc' holds a control"):
        read_keys(tmp_path / "keys.txt")
    (tmp_path / "keys.txt").write_text("a\nb c\n")
    assert read_keys(tmp_path / "keys.txt") == ["a", "b c"]


def test_a_control_character_in_a_log_id_is_found_among_millions_of_rows(tmp_path: Path) -> None:
    """The check runs on the distinct ids, then names the first row that holds the bad one."""
    from semid.data.tables import factorized_keys

    ids = pa.chunked_array([["u1", "u2", "u1", "u\x85x", "u2", "u\x85x"]])
    with pytest.raises(SemidError, match=r"row 4: the user id 'u\\x85x' holds a control character"):
        factorized_keys(ids, tmp_path / "log.parquet", "user id")


def test_a_log_truncated_while_it_is_read_up_to_a_line_is_no_crash(tmp_path: Path) -> None:
    """logrotate's copytruncate (or `: > log.csv`) while a grown log was read: a memory-mapped
    read of it ended the whole server with SIGBUS. In a fresh process, as it would kill pytest."""
    log = tmp_path / "log.csv"
    log.write_text("user,item,timestamp\n" + "".join(f"u{i},i{i},{i}\n" for i in range(200_000)))
    script = f"""
import pyarrow as pa
from semid.data.tables import read_table, read_up_to
log = {str(log)!r}
mapped = pa.memory_map
def truncated_after_mapping(*args, **kwargs):
    source = mapped(*args, **kwargs)
    open(log, "w").close()  # copytruncate, landing during the read
    return source
pa.memory_map = truncated_after_mapping
real = pa.OSFile
class Truncating(real):
    def read_buffer(self, n):
        open(log, "w").close()
        return super().read_buffer(n)
pa.OSFile = Truncating
try:
    with read_up_to({{log: {log.stat().st_size}}}):
        read_table(log, "interactions file")
except Exception as e:  # any refusal is fine here: the process must live
    print(type(e).__name__)
print("alive")
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120, env=ENV)  # fmt: skip
    assert done.returncode == 0, (done.returncode, done.stderr[-2000:])
    assert done.stdout.split()[-1] == "alive"
