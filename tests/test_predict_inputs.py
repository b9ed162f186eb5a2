"""`semid predict` input files, read without a run: queries (or users) one a line, JSON Lines, or a
table."""

from __future__ import annotations

import argparse
import re

import pandas as pd
import pytest

from semid.cli import predict
from semid.errors import SemidError


def queries_of(path, flag: str = "--queries") -> tuple[list[dict], list[str | None]]:
    """The inputs and their origins that ``--queries path`` (or ``flag path``) reads."""
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)
    inputs, origins = predict.read_inputs(
        parser.parse_args(["run", flag, str(path)]), predictor=None
    )
    return inputs, [None if o.where is None else str(o.where) for o in origins]


@pytest.mark.parametrize("name", ["q.csv", "q.tsv"])
def test_a_queries_table_is_read_by_its_query_column_not_its_header_as_a_query(
    tmp_path, name, capsys
):
    sep = "\t" if name.endswith("tsv") else ","
    (tmp_path / name).write_text(f"id{sep}query\n1{sep}fast image viewer\n2{sep}kernel\n")
    inputs, origins = queries_of(tmp_path / name)
    assert inputs == [{"query": "fast image viewer", "id": "1"}, {"query": "kernel", "id": "2"}]
    assert origins == [f"--queries {tmp_path / name} line {n}" for n in (2, 3)]
    # a row's line counts the line breaks of quoted cells and blank lines before it
    if name == "q.csv":
        (tmp_path / name).write_text('id,query\n1,"two\nlines"\n\n2,kernel\n')
        assert queries_of(tmp_path / name)[1] == [
            f"--queries {tmp_path / name} line {n}" for n in (2, 5)
        ]
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
    (tmp_path / "q.csv").write_text("Query\nkernel\n")  # a header's case aside
    assert queries_of(tmp_path / "q.csv")[0] == [{"query": "kernel"}]


def test_beir_queries_jsonl_is_read_by_its_text_field(tmp_path):
    (tmp_path / "queries.jsonl").write_text(
        '{"_id": "q1", "text": "fast image viewer", "metadata": {}}\n'
        '{"_id": "q2", "query": "kernel", "text": "ignored beside a query"}\n'
    )
    assert queries_of(tmp_path / "queries.jsonl")[0] == [
        {"query": "fast image viewer", "id": "q1"},
        {"query": "kernel", "id": "q2"},
    ]
    (tmp_path / "q.jsonl").write_text('{"_id": "q1", "title": "x"}\n')
    with pytest.raises(SemidError, match=r'line 1 has no "query" field \(nor "text"\)$'):
        queries_of(tmp_path / "q.jsonl")


def test_a_spreadsheet_header_is_recognised_as_the_other_tables_are(tmp_path):
    """'Query ID' and 'User ID' headers, as a spreadsheet writes them, are found as data files'
    columns are (case, spaces and punctuation aside), not answered as a query or a user."""
    (tmp_path / "q.csv").write_text("Query ID,Query\nq1,fast image viewer\n")
    assert queries_of(tmp_path / "q.csv")[0] == [{"query": "fast image viewer", "id": "q1"}]
    (tmp_path / "u.csv").write_text("User ID\n196\n")
    assert queries_of(tmp_path / "u.csv", "--users")[0] == [{"user": "196"}]


def test_a_query_keeps_its_id_for_its_answer(tmp_path):
    parser = argparse.ArgumentParser()
    predict.add_arguments(parser)

    def ids(name: str) -> list[str | None]:
        args = parser.parse_args(["run", "--queries", str(tmp_path / name)])
        return [item.get("id") for item in predict.read_inputs(args, predictor=None)[0]]

    (tmp_path / "q.jsonl").write_text(
        '{"_id": "q1", "text": "a"}\n{"qid": 7, "query": "b"}\n{"query": "c"}\n'
    )
    (tmp_path / "q.csv").write_text("query_id,query\nq1,a\nq2,b\n")
    (tmp_path / "q.txt").write_text("a\nb\n")
    assert ids("q.jsonl") == ["q1", "7", None]
    assert ids("q.csv") == ["q1", "q2"]
    assert ids("q.txt") == [None, None]


def test_a_users_file_may_be_lines_json_lines_or_a_table(tmp_path):
    """--users reads its file as --queries does, by a "user" column (user_id and the other names
    of a log's user column too): a table's header and a JSON Lines object were read as user ids."""
    (tmp_path / "u.txt").write_text("0003\n196\n")
    (tmp_path / "u.jsonl").write_text('{"user": "0003"}\n{"user": 196}\n')
    (tmp_path / "u.csv").write_text("user_id,segment\n0003,a\n196,b\n")
    pd.DataFrame({"user": ["0003", "196"]}).to_parquet(tmp_path / "u.parquet")
    for name in ("u.txt", "u.jsonl", "u.csv", "u.parquet"):
        assert queries_of(tmp_path / name, "--users")[0] == [{"user": "0003"}, {"user": "196"}], (
            name
        )
    assert queries_of(tmp_path / "u.csv", "--users")[1][0] == f"--users {tmp_path / 'u.csv'} line 2"
    (tmp_path / "bad.csv").write_text("segment,x\na,b\n")
    with pytest.raises(SemidError, match='has no "user" column .*for one user a line, use a .txt'):
        queries_of(tmp_path / "bad.csv", "--users")


def test_a_history_drops_empty_keys_and_a_json_one_takes_no_booleans():
    assert predict.parse_history(" 1, 50,,181, ", "--history") == (["1", "50", "181"], True)
    assert predict.parse_history("Fargo (1996),", "--history") == (["Fargo (1996)"], False)
    assert predict.parse_history('["a, b", 7]', "--history") == (["a, b", "7"], False)
    with pytest.raises(SemidError, match=r"--history must be a JSON list of item keys"):
        predict.parse_history('["a", true]', "--history")


@pytest.mark.parametrize("user", ["true", "null", "1.5", '["a"]'])
def test_a_users_json_line_must_hold_a_string_or_an_integer(tmp_path, user):
    (tmp_path / "u.jsonl").write_text(f'{{"user": "196"}}\n{{"user": {user}}}\n')
    with pytest.raises(
        SemidError, match=rf'u.jsonl line 2: "user" must be a user id .*got {re.escape(user)}$'
    ):
        queries_of(tmp_path / "u.jsonl", "--users")


def test_json_lines_keep_their_other_fields_for_the_predictor_to_check(tmp_path):
    """A --users or --histories JSON Lines object keeps "split" and "id" (and a typo, which the
    predictor refuses with the line); a user's integer id is read as its digits."""
    (tmp_path / "u.jsonl").write_text('{"user": 196, "split": "test", "id": "a"}\n')
    assert queries_of(tmp_path / "u.jsonl", "--users")[0] == [
        {"user": "196", "split": "test", "id": "a"}
    ]
    (tmp_path / "h.jsonl").write_text('{"history": ["1", 50], "id": 7}\n{"history": "1,2"}\n')
    assert queries_of(tmp_path / "h.jsonl", "--histories")[0] == [
        {"history": ["1", "50"], "id": "7"},  # an id is written as a string, as a query's is
        {"history": ["1", "2"]},
    ]


def test_a_users_table_keeps_its_id_and_split_columns(tmp_path):
    """A users table reads as its JSON Lines form: an "id" column for the answer, a "split"
    column (a blank cell: none) to answer at that split's target; both were ignored."""
    (tmp_path / "u.csv").write_text("user,split,ID\n196,test,a\n186,,7\n")
    assert queries_of(tmp_path / "u.csv", "--users")[0] == [
        {"user": "196", "split": "test", "id": "a"},
        {"user": "186", "id": "7"},
    ]
    pd.DataFrame({"user": [196], "split": ["valid"]}).to_parquet(tmp_path / "u.parquet")
    assert queries_of(tmp_path / "u.parquet", "--users")[0] == [{"user": "196", "split": "valid"}]


def test_a_users_table_column_named_much_like_one_it_reads_is_noted(tmp_path, capsys):
    """A table's other columns are ignored, so a misspelt "split" went unseen: each user was
    answered after the whole history."""
    (tmp_path / "u.csv").write_text("user,splt,genre,sid,pid\n196,test,drama,7,8\n")
    assert queries_of(tmp_path / "u.csv", "--users")[0] == [{"user": "196"}]
    err = capsys.readouterr().err
    assert 'column "splt" is not read; name it "split"' in err
    assert err.count("not read") == 1  # sid and pid are no misspelt "id"
    (tmp_path / "ok.csv").write_text("user,split,genre,ID\n196,test,drama,a\n")
    queries_of(tmp_path / "ok.csv", "--users")
    assert "not read" not in capsys.readouterr().err
    (tmp_path / "caps.csv").write_text("user,Splt\n196,test\n")  # headers are matched as read
    queries_of(tmp_path / "caps.csv", "--users")
    assert 'column "Splt" is not read; name it "split"' in capsys.readouterr().err
    (tmp_path / "q.csv").write_text("query,genre\nhello,drama\n")  # "query" is read: no note
    assert queries_of(tmp_path / "q.csv", "--queries")[0] == [{"query": "hello"}]
    assert "not read" not in capsys.readouterr().err


@pytest.mark.parametrize("bad", ["null", "1.5", "[1]"])
def test_a_query_line_with_an_id_that_is_no_key_is_refused(tmp_path, bad):
    """An id of null or 1.5 was dropped in silence, so answers could not be joined back to their
    judgements; other fields (BEIR's "metadata") are still left out."""
    (tmp_path / "q.jsonl").write_text(
        f'{{"_id": "q1", "text": "a", "metadata": {{}}}}\n{{"_id": {bad}, "text": "b"}}\n'
    )
    with pytest.raises(SemidError, match=rf'q.jsonl line 2: "_id" must be a string or an integer, got {re.escape(bad)}$'):  # fmt: skip
        queries_of(tmp_path / "q.jsonl")
    (tmp_path / "q2.jsonl").write_text(f'{{"_id": {bad}, "id": "q7", "text": "b"}}\n')
    assert queries_of(tmp_path / "q2.jsonl")[0] == [{"query": "b", "id": "q7"}]  # another names it


def test_blank_lines_among_the_inputs_are_skipped_with_a_note(tmp_path, capsys):
    """Answers follow the non-blank lines: a note says so, since --out then has fewer lines."""
    (tmp_path / "q.txt").write_text("kernel\n\nimage viewer\n  \nshell\n\n\n")
    inputs, origins = queries_of(tmp_path / "q.txt")
    assert [i["query"] for i in inputs] == ["kernel", "image viewer", "shell"]
    assert origins == [f"--queries {tmp_path / 'q.txt'} line {n}" for n in (1, 3, 5)]
    assert capsys.readouterr().err == (
        f"semid: note: --queries {tmp_path / 'q.txt'}: 2 blank lines skipped (line 2, ...); each "
        "other line gets an answer, in order\n"
    )
    (tmp_path / "one.txt").write_text("kernel\n\nshell\n")  # one blank line is told too
    assert len(queries_of(tmp_path / "one.txt")[0]) == 2
    assert capsys.readouterr().err == (
        f"semid: note: --queries {tmp_path / 'one.txt'}: 1 blank line skipped (line 2); each "
        "other line gets an answer, in order\n"
    )
    (tmp_path / "end.txt").write_text("kernel\nshell\n\n")  # blank lines at the end: nothing to say
    assert len(queries_of(tmp_path / "end.txt")[0]) == 2
    assert capsys.readouterr().err == ""


def test_a_documents_file_given_as_queries_is_refused_not_answered_by_its_list_text(tmp_path):
    (tmp_path / "docs.csv").write_text('id,text,queries\na,doc a,"[""q one"", ""q two""]"\n')
    with pytest.raises(
        SemidError, match=r'row 1: the "queries" cell holds a list .*one query a row'
    ):
        queries_of(tmp_path / "docs.csv")  # it searched '["q one", "q two"]' as one query
    (tmp_path / "docs.jsonl").write_text('{"id": "a", "text": "doc a", "queries": ["q one"]}\n')
    with pytest.raises(SemidError, match=r'line 1 has "queries" \(as a documents file has\)'):
        queries_of(tmp_path / "docs.jsonl")  # it searched the document's text
    (tmp_path / "q.tsv").write_text("query\n[draft] a release note\n[1, 2\n")  # no JSON list
    assert [x["query"] for x in queries_of(tmp_path / "q.tsv")[0]] == [
        "[draft] a release note",
        "[1, 2",
    ]


def test_a_long_input_is_shortened_above_its_answers(capsys):
    """A 49k-character query was printed whole above its table."""
    from semid.fake_predictor import FakePredictor

    fake = FakePredictor()
    query = "editor " * 7000
    predict.print_answers(fake.predict([{"query": query}], k=2), fake)
    shown = capsys.readouterr().out.splitlines()[0]
    assert shown.startswith('{"query": "editor editor') and shown.endswith(" ...")
    assert predict.INPUT_WIDTH - len("editor ...") < len(shown) <= predict.INPUT_WIDTH
