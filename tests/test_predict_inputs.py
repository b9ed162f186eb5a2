"""`semid predict` input files, read without a run: queries one a line, JSON Lines, or a table."""

from __future__ import annotations

import argparse

import pandas as pd
import pytest

from semid.cli import predict
from semid.errors import SemidError


def queries_of(path) -> tuple[list[dict], list[str | None]]:
    """The inputs and their origins that ``--queries path`` reads."""
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    inputs, origins = predict.read_inputs(
        parser.parse_args(["run", "--queries", str(path)]), predictor=None
    )
    return inputs, [o.where for o in origins]


@pytest.mark.parametrize("name", ["q.csv", "q.tsv"])
def test_a_queries_table_is_read_by_its_query_column_not_its_header_as_a_query(
    tmp_path, name, capsys
):
    sep = "\t" if name.endswith("tsv") else ","
    (tmp_path / name).write_text(f"id{sep}query\n1{sep}fast image viewer\n2{sep}kernel\n")
    inputs, origins = queries_of(tmp_path / name)
    assert inputs == [{"query": "fast image viewer"}, {"query": "kernel"}]
    assert origins == [f"--queries {tmp_path / name} line {n}" for n in (2, 3)]
    (tmp_path / "plain.csv").write_text('fast image viewer\nwhat is "foo\n')  # no header: lines
    assert queries_of(tmp_path / "plain.csv")[0] == [
        {"query": "fast image viewer"},
        {"query": 'what is "foo'},
    ]
    # said, since a header of another name would be answered as a query too
    assert "line 1 ('fast image viewer') too" in capsys.readouterr().err


def test_a_parquet_queries_table_and_a_header_of_another_name(tmp_path):
    pd.DataFrame({"queries": ["a tool", "an editor"]}).to_parquet(tmp_path / "q.parquet")
    assert queries_of(tmp_path / "q.parquet")[0] == [{"query": "a tool"}, {"query": "an editor"}]
    (tmp_path / "q.csv").write_text("Query\nkernel\n")
    with pytest.raises(SemidError, match=r"lacks a query column .*found: Query\); rename it"):
        queries_of(tmp_path / "q.csv")
