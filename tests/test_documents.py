"""Document loader: JSONL round trip, optional queries, gzip, CSV and Parquet tables, and errors
that name the line."""

from __future__ import annotations

import gzip
import hashlib
import json
import re

import pandas as pd
import pyarrow as pa
import pyarrow.csv as pacsv
import pyarrow.parquet as pq
import pytest

from semid.data.documents import Document, DocumentCollection, read_documents, write_documents
from semid.data.tables import content_sha256
from semid.errors import SemidError


def _write(path, lines):
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_round_trip_keeps_order_queries_and_hash(tmp_path):
    docs = [Document("a", "first text", ("q1", "q2")), Document("b", "second ünïcode text")]
    sha = write_documents(tmp_path / "d.jsonl", docs)
    coll = read_documents(tmp_path / "d.jsonl")
    assert coll.documents == docs
    assert coll.sha256 == sha
    assert coll.ids == ["a", "b"] and coll.texts[1] == "second ünïcode text"


def test_integer_ids_and_blank_lines(tmp_path):
    path = _write(
        tmp_path / "d.jsonl",
        [json.dumps({"id": 7, "text": "x y"}), "", json.dumps({"id": "8", "text": "z"})],
    )
    assert read_documents(path).ids == ["7", "8"]


def test_document_ids_are_read_without_the_spaces_around_them(tmp_path):
    jsonl = _write(tmp_path / "d.jsonl", [json.dumps({"id": " d1 ", "text": "x"})])
    table = tmp_path / "d.csv"
    table.write_text("id,text\n d2 ,y\n")
    assert read_documents(jsonl).ids == ["d1"] and read_documents(table).ids == ["d2"]
    twice = _write(
        tmp_path / "twice.jsonl", [json.dumps({"id": i, "text": "x"}) for i in ("a", "a ")]
    )
    with pytest.raises(SemidError, match="line 2 repeats id 'a' \\(first at line 1\\)"):
        read_documents(twice)


@pytest.mark.parametrize(
    "bad, words",
    [
        ("{not json", "not valid JSON"),
        ("[1, 2]", "is a list, not a JSON object"),
        (
            json.dumps({"text": "no id"}),
            "no document id (accepted names: id, doc_id, docid, _id, docno, pid; found: text)",
        ),
        (json.dumps({"id": "x", "text": ""}), "document 'x' has an empty text"),
        (
            json.dumps({"id": "x", "text": "t", "queries": [1]}),
            '"queries" must be a list of strings',
        ),
        (
            json.dumps({"id": "x", "body": "b", "query": "q", "queries": []}),
            "has both 'queries' and 'query'",
        ),
        (json.dumps({"Id": "x", "ID": "y", "text": "t"}), "has both 'Id' and 'ID'; keep one"),
        (json.dumps({"id": "x", "Body": "b", "Article": "a"}), "has both 'Body' and 'Article'"),
        (json.dumps({"id": "x", "title": 3, "body": "b"}), '"title" holds int, not a string'),
        (json.dumps({"id": "a", "text": "dup"}), "repeats id 'a' (first at line 1)"),
        (
            json.dumps({"id": 1.5, "text": "t"}),
            '"id" holds float 1.5; give every document a string',
        ),
        (json.dumps({"doc_id": True, "text": "t"}), '"doc_id" holds bool True; give every'),
        (
            json.dumps({"id": None, "text": "t"}),
            "empty document id; give every document a non-empty",
        ),
        (
            json.dumps({"id": "x", "text": "cut \ud83d"}),  # half of an emoji's UTF-16 pair
            'the text holds an unpaired surrogate escape ("\\ud83d")',
        ),
        (json.dumps({"id": "x", "text": "t", "query": "\udfff"}), "the query holds an unpaired"),
        (  # a line break to str.splitlines and terminals
            json.dumps({"id": "a\u2028b", "text": "t"}),
            "the document id 'a\\u2028b' holds a control character ('\\u2028')",
        ),
        (  # it broke `semid predict`'s table, one key a line
            json.dumps({"id": "new\nline", "text": "t"}),
            "the document id 'new\\nline' holds a control character ('\\n'); ids cannot hold line",
        ),
    ],
)
def test_malformed_line_names_its_number(tmp_path, bad, words):
    good = [
        json.dumps({"id": "a", "text": "ok"}),
        json.dumps({"id": "b", "text": "ok", "queries": ["q"]}),
    ]
    path = _write(tmp_path / "d.jsonl", [*good, bad])
    with pytest.raises(SemidError, match="line 3") as e:
        read_documents(path)
    assert words in str(e.value)


def test_missing_and_empty_files(tmp_path):
    with pytest.raises(SemidError, match="not found"):
        read_documents(tmp_path / "nope.jsonl")
    (tmp_path / "e.jsonl").write_text("\n")
    with pytest.raises(SemidError, match="no documents"):
        read_documents(tmp_path / "e.jsonl")


def test_collection_subset_and_unique_ids():
    coll = DocumentCollection("c", [Document(str(i), f"t{i}") for i in range(5)])
    assert coll.subset([3, 1]).ids == ["3", "1"]
    with pytest.raises(SemidError, match="unique"):
        DocumentCollection("c", [Document("a", "x"), Document("a", "y")])


# --- tables and gzip -------------------------------------------------------------------------


def test_gzipped_jsonl_and_hash_of_file_bytes(tmp_path):
    lines = [
        json.dumps({"id": "a", "text": "x", "queries": ["q"]}),
        json.dumps({"id": 2, "text": "y"}),
    ]
    plain = _write(tmp_path / "d.jsonl", lines)
    (tmp_path / "d.jsonl.gz").write_bytes(gzip.compress(plain.read_bytes()))
    a, b = read_documents(plain), read_documents(tmp_path / "d.jsonl.gz")
    assert a.documents == b.documents and b.name == "d"
    assert a.sha256 == hashlib.sha256(plain.read_bytes()).hexdigest() == content_sha256(plain)
    assert b.sha256 == content_sha256(tmp_path / "d.jsonl.gz")


def test_csv_and_parquet_documents(tmp_path):
    (tmp_path / "d.csv").write_text('id,text,queries\n007,"first, text",what is it\n8,second,\n')
    docs = read_documents(tmp_path / "d.csv").documents
    assert docs == [Document("007", "first, text", ("what is it",)), Document("8", "second")]
    table = pa.table({"id": [1, 2], "text": ["x", "y"], "queries": [["q1", "q2"], None]})
    pq.write_table(table, tmp_path / "d.parquet")
    coll = read_documents(tmp_path / "d.parquet")
    assert coll.documents == [Document("1", "x", ("q1", "q2")), Document("2", "y")]
    assert coll.sha256 == content_sha256(tmp_path / "d.parquet")


@pytest.mark.parametrize(
    "name, content, words",
    [
        (
            "d.csv",
            "doc,text\n1,x\n",
            "d.csv has no document id column (accepted names: id, doc_id, docid, _id, docno, pid; "
            "found: doc, text); rename it",
        ),
        (  # MS MARCO's collection.tsv has no header
            "d.tsv",
            "0\tThe presence of communication\n1\tThe Manhattan Project\n",
            "found: 0, The presence of communication) (the first line looks like data: add a header",
        ),
        (
            "d.csv",
            "id,summary\n1,x\n",
            "no document text (accepted names: text, or title with one of body",
        ),
        ("d.csv", "id,doc_id,text\n1,2,x\n", "line 2 has both 'id' and 'doc_id'; keep one"),
        ("d.csv", "id,text\n1,x\n2,y\n1,z\n", "line 4 repeats id '1' (first at line 2)"),
        ("d.csv", "id,text\n1,x\n2, \n", "line 3: document '2' has an empty text"),
        ("d.csv", "id,text\n1,x\n,y\n", "line 3: empty document id"),
        # the line a row starts on: a quoted cell may span lines; blank lines are no rows
        (
            "d.csv",
            'id,text\n1,"two\nlines"\n\n2,"a ""quoted""\r\nword"\n1,z\n',
            "line 7 repeats id '1' (first at line 2)",
        ),
        ("d.csv", 'id,text\n1,say "hi\n2,x\n1,z\n', "line 4 repeats id '1' (first at line 2)"),
        ("d.csv", 'id;text\n1;"a;\nb"\n2; \n', "line 4: document '2' has an empty text"),
        ("d.tsv", "\nid\ttext\n1\tx\n\n2\ty\n1\tz\n", "line 6 repeats id '1' (first at line 3)"),
        ("d.csv", "id,text\r1,x\r\r1,z\r", "line 4 repeats id '1' (first at line 2)"),  # old Mac
        ("d.csv", '\ufeff"id","te\nxt"\n1,x\n1,z\n', "line 4 repeats id '1' (first at line 3)"),
        ("d.csv", '\ufeff"i\nd",text\n1,x\n1,z\n', "line 4 repeats id '1' (first at line 3)"),
        # a TSV is read unquoted (titles hold bare quotes): a cell starting with " ends at its tab
        (
            "d.tsv",
            'id\ttext\n1\t"quoted start\n\n2\tx\n1\tz\n',
            "line 5 repeats id '1' (first at line 2)",
        ),
    ],
)
def test_table_document_errors(tmp_path, name, content, words):
    (tmp_path / name).write_text(content)
    with pytest.raises(SemidError) as e:
        read_documents(tmp_path / name)
    assert words in str(e.value)


def test_a_gzipped_tables_errors_name_lines_of_its_text(tmp_path):
    """The line an error names is counted in the decompressed text (a quoted cell spans lines)."""
    (tmp_path / "d.csv.gz").write_bytes(gzip.compress(b'id,text\n1,"two\nlines"\n1,z\n'))
    with pytest.raises(SemidError, match="line 4 repeats id '1' \\(first at line 2\\)"):
        read_documents(tmp_path / "d.csv.gz")


def test_a_comma_header_holding_other_separators_is_read_on_commas(tmp_path):
    """A .csv whose header holds commas is split on them, though a column name holds ; | or tab."""
    (tmp_path / "d.csv").write_text("id,text,notes;extra|more\n1,x,y\n2,w,v\n")
    coll = read_documents(tmp_path / "d.csv")
    assert [(d.id, d.text) for d in coll.documents] == [("1", "x"), ("2", "w")]


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv"])
def test_non_utf8_documents_name_the_line(tmp_path, name):
    head = b'{"id": "a", "text": "ok"}\n' if name.endswith("jsonl") else b"id,text\n"
    # the bad byte is on line 2 in both formats
    bad = b'{"id": "b", "text": "caf\xe9"}\n' if name.endswith("jsonl") else b"b,caf\xe9\n"
    (tmp_path / name).write_bytes(head + bad)
    with pytest.raises(SemidError, match=r"line 2 is not UTF-8"):
        read_documents(tmp_path / name)


def _collection(tmp_path, name: str, records: list[dict]):
    """Write records as JSON Lines or as a CSV (cells as given) and read them back."""
    path = tmp_path / name
    if name.endswith(".jsonl"):
        _write(path, [json.dumps(r) for r in records])
    else:
        pacsv.write_csv(pa.Table.from_pylist(records), path)
    return read_documents(path)


def _docs(tmp_path, name: str, records: list[dict]):
    """The documents of records written as JSON Lines or as a CSV (`_collection`)."""
    return _collection(tmp_path, name, records).documents


@pytest.mark.parametrize("name", ["d.jsonl", "d.csv"])
@pytest.mark.parametrize(
    "record, expected",
    [
        ({"doc_id": "a", "text": "t", "query": "q"}, Document("a", "t", ("q",))),
        ({"docid": "a", "text": "t", "queries": "q"}, Document("a", "t", ("q",))),
        ({"_id": "a", "title": "Tea", "contents": "a drink"}, Document("a", "Tea\na drink")),
        ({"id": "a", "title": "Tea", "body": "a drink"}, Document("a", "Tea\na drink")),
        ({"id": "a", "abstract": "a drink"}, Document("a", "a drink")),
        ({"docno": "a", "title": "Tea", "content": "a drink"}, Document("a", "Tea\na drink")),
        ({"pid": 7, "passage": "a drink", "query": "tea"}, Document("7", "a drink", ("tea",))),
        ({"id": "a", "text": "t", "question": "why?"}, Document("a", "t", ("why?",))),  # QA sets
        ({"id": "a", "text": "t", "questions": "why?"}, Document("a", "t", ("why?",))),  # FAQs
        (
            {"id": "a", "text": "t", "title": "Tea", "queries": None},
            Document("a", "Tea\nt"),
        ),  # BEIR
        ({"id": "a", "text": "t", "title": ""}, Document("a", "t")),
        ({"id": "a", "text": "t", "test_queries": "tq"}, Document("a", "t", (), ("tq",))),
        # names with case, spaces and punctuation aside, as table headers match
        ({"ID": "a", "Title": "Tea", "Text": "t", "Queries": "q"}, Document("a", "Tea\nt", ("q",))),
        ({"Doc ID": "a", "BODY": "t", "Question": "why?"}, Document("a", "t", ("why?",))),
        ({"docID": "a", "text": "t", "Test Queries": "tq"}, Document("a", "t", (), ("tq",))),
        # the bodies of news (CNN/DailyMail), QA (SQuAD) and product collections
        ({"id": "a", "article": "t", "highlights": "h"}, Document("a", "t")),
        (
            {"id": "a", "title": "Tea", "context": "t", "question": "why?"},
            Document("a", "Tea\nt", ("why?",)),
        ),
        ({"id": "a", "title": "Tea", "description": "t"}, Document("a", "Tea\nt")),
    ],
)
def test_jsonl_and_csv_accept_the_same_fields(tmp_path, name, record, expected):
    assert _docs(tmp_path, name, [record]) == [expected]


def test_a_given_test_split_is_read_and_written_back(tmp_path):
    expected = [Document("a", "t", ("q",), ("tq1", "tq2")), Document("b", "u")]
    lists = [{"id": "a", "text": "t", "queries": ["q"], "test_queries": ["tq1", "tq2"]},
             {"id": "b", "text": "u", "test_queries": None}]  # fmt: skip
    cells = [{**r, "queries": json.dumps(r.get("queries", [])),
              "test_queries": json.dumps(r["test_queries"]) if r["test_queries"] else ""} for r in lists]  # fmt: skip
    assert _docs(tmp_path, "d.jsonl", lists) == _docs(tmp_path, "d.csv", cells) == expected
    write_documents(tmp_path / "later.jsonl", expected)
    collection = read_documents(tmp_path / "later.jsonl")
    assert collection.documents == expected and collection.has_test_split


def test_graded_queries_are_read_written_back_and_checked(tmp_path):
    """A documents file may grade its queries' relevance (as BEIR's qrels do), e.g. for the test
    queries of held-out documents that `semid index add` reads back from later.jsonl."""
    docs = [Document("a", "t", ("q",), ("tq1", "tq2")), Document("b", "u", ("r",))]
    lists = [{"id": "a", "text": "t", "queries": ["q"], "test_queries": ["tq1", "tq2"],
              "grades": {"tq1": 2, "q": 1}}, {"id": "b", "text": "u", "queries": ["r"]}]  # fmt: skip
    cells = [{**r, "queries": json.dumps(r["queries"]), "test_queries": json.dumps(r.get("test_queries", [])),
              "grades": json.dumps(r["grades"]) if "grades" in r else ""}  # an empty cell: none
             for r in lists]  # fmt: skip
    for name, records in (("d.jsonl", lists), ("d.csv", cells)):
        collection = _collection(tmp_path, name, records)
        assert collection.documents == docs and collection.grades == {("a", "tq1"): 2.0}
        assert collection.grade("a", "tq1") == 2 and collection.grade("a", "tq2") == 1
    write_documents(tmp_path / "later.jsonl", docs, collection.grades)
    assert read_documents(tmp_path / "later.jsonl").grades == {("a", "tq1"): 2.0}
    # Parquet: pandas writes dicts as a struct (every key in every row, None where absent), and a
    # map column reads as (key, value) pairs
    frame = pd.DataFrame({"id": ["a", "b"], "text": ["t", "u"], "queries": [["q"], ["r"]],
                          "grades": [{"q": 2}, {"r": 3}]})  # fmt: skip
    frame.to_parquet(tmp_path / "struct.parquet")
    expected = {("a", "q"): 2.0, ("b", "r"): 3.0}
    assert read_documents(tmp_path / "struct.parquet").grades == expected
    mapped = pa.table({"id": ["a", "b"], "text": ["t", "u"], "queries": [["q"], ["r"]],
                       "grades": pa.array([[("q", 2.0)], [("r", 3.0)]], pa.map_(pa.string(), pa.float64()))})  # fmt: skip
    pq.write_table(mapped, tmp_path / "map.parquet")
    assert read_documents(tmp_path / "map.parquet").grades == expected
    bad = {
        '{"x": 2}': "grades 'x', which is not one of the document's queries",
        '{"q": 0}': "the grade of 'q' is 0; give a number above 0",
        '{"q": "high"}': "the grade of 'q' is 'high'",
        '["q"]': '"grades" must be an object of query -> relevance grade',
    }
    for grades, message in bad.items():
        (tmp_path / "bad.jsonl").write_text(
            f'{{"id": "a", "text": "t", "queries": ["q"], "grades": {grades}}}\n'
        )
        with pytest.raises(SemidError, match=re.escape(message)):
            read_documents(tmp_path / "bad.jsonl")


def test_jsonl_fields_may_differ_by_line(tmp_path):
    records = [
        {"doc_id": "a", "text": "t", "query": "q"},
        {"id": "b", "text": "u", "queries": ["r", "s"]},
    ]
    assert _docs(tmp_path, "d.jsonl", records) == [
        Document("a", "t", ("q",)),
        Document("b", "u", ("r", "s")),
    ]


def test_a_json_array_and_a_bom(tmp_path):
    (tmp_path / "a.jsonl").write_text(json.dumps([{"id": "a", "text": "t"}], indent=1))
    with pytest.raises(SemidError, match="is a JSON array; write JSON Lines"):
        read_documents(tmp_path / "a.jsonl")
    (tmp_path / "b.jsonl").write_bytes(
        b"\xef\xbb\xbf" + json.dumps({"id": "a", "text": "t"}).encode()
    )
    assert read_documents(tmp_path / "b.jsonl").ids == ["a"]
    with pytest.raises(SemidError, match="is a folder; pass the documents file"):
        read_documents(tmp_path)


def test_text_files_of_queries_skip_a_bom_and_refuse_a_folder(tmp_path):
    from semid.data.text_files import read_lines

    (tmp_path / "q.txt").write_bytes(b"\xef\xbb\xbffirst query\nsecond\n")
    assert read_lines(tmp_path / "q.txt", "--queries") == ["first query", "second"]
    with pytest.raises(SemidError, match="is a folder; give a text file of one entry a line"):
        read_lines(tmp_path, "--queries")


@pytest.mark.parametrize(
    "header, kind",
    [
        ("doc_id,title,body", "documents"),
        ("id,text", "documents"),
        ("Doc ID,Title,Description", "documents"),  # names as the documents reader matches them
        ("User ID,Item ID,Text", "interactions"),  # as the interactions reader matches them
        ("user,item", "interactions"),
        ("filename,caption", "images"),  # any name the image tables' reader takes for the path
        ("file_name,caption", "images"),  # COCO's
        ("image_name,caption", "images"),  # Flickr30k's
        ("reviewerID,asin,image,reviewText", "interactions"),  # Amazon's reviews: a log after all
        ("id,title", "documents"),  # without a body: its reader names it (it read as a log)
        ("id,queries", "documents"),
    ],
)
def test_a_table_is_recognised_by_the_names_its_reader_accepts(tmp_path, header, kind):
    from semid.tasks.data import sniff_kind

    (tmp_path / "d.csv").write_text(f"{header}\n{','.join('x' for _ in header.split(','))}\n")
    assert sniff_kind(str(tmp_path / "d.csv")) == kind


def test_a_captioned_table_without_a_path_column_is_told_as_images(tmp_path):
    """`pth,caption,label` (a misspelt path column) was taken for a log and asked for user and
    item columns."""
    from semid.tasks.data import sniff_kind

    (tmp_path / "d.csv").write_text("pth,caption,label\na.png,a cat,cat\n")
    with pytest.raises(SemidError, match=r"caption column but no column of image paths .*found: "
                       r"pth, caption, label\); for images name it one of those, for interactions"):  # fmt: skip
        sniff_kind(str(tmp_path / "d.csv"))


def test_a_csv_queries_cell_may_hold_a_list(tmp_path):
    frame = pd.DataFrame({"id": ["a", "b", "c", "d"], "text": ["t", "u", "v", "w"],
                          "queries": [["q1", "q2"], [], ["only"], "[draft] notes"]})  # fmt: skip
    frame.to_csv(tmp_path / "pandas.csv", index=False)  # a list column as ['q1', 'q2']
    rows = [f"{i}\t{t}\t{json.dumps(q)}" for i, t, q in frame.values[:3]] + ["d\tw\t[draft] notes"]
    (tmp_path / "json.tsv").write_text("\n".join(["id\ttext\tqueries", *rows]) + "\n")
    for name in ("pandas.csv", "json.tsv"):
        assert read_documents(tmp_path / name).documents == [
            Document("a", "t", ("q1", "q2")),
            Document("b", "u"),
            Document("c", "v", ("only",)),
            Document("d", "w", ("[draft] notes",)),  # brackets that hold no list: one query
        ], name
    (tmp_path / "numbers.csv").write_text('id,text,queries\na,t,"[1, 2]"\n')
    with pytest.raises(SemidError, match='line 2: "queries" must be a list of strings'):
        read_documents(tmp_path / "numbers.csv")


def test_json_lines_end_at_line_feeds_only(tmp_path):
    """U+2028, U+0085 and the other breaks str.splitlines knows may stand raw in a JSON string."""
    texts = ["one\u2028two", "three\u0085four", "five\x0csix"]
    lines = [json.dumps({"id": str(j), "text": t}, ensure_ascii=False) for j, t in enumerate(texts)]
    (tmp_path / "d.jsonl").write_text("\r\n".join(lines) + "\r\n", encoding="utf-8")
    docs = read_documents(tmp_path / "d.jsonl").documents
    assert [d.text for d in docs] == texts
    from semid.data.text_files import read_lines

    (tmp_path / "q.txt").write_text("a query\u2028still one\nanother\n", encoding="utf-8")
    assert read_lines(tmp_path / "q.txt", "queries file") == ["a query\u2028still one", "another"]
    (tmp_path / "mac.txt").write_bytes(b"one\rtwo\r")  # an old Mac's line ends
    assert read_lines(tmp_path / "mac.txt", "queries file") == ["one", "two"]


def test_documents_files_joined_end_to_end(tmp_path):
    """A BOM starting a later line (two exported files joined) is no content; a second "text"
    column was read instead of the first, unsaid."""
    bom = "\ufeff"
    path = _write(tmp_path / "d.jsonl", [bom + json.dumps({"id": "a", "text": "x"}),
                                         bom + json.dumps({"id": "b", "text": "y"})])  # fmt: skip
    assert read_documents(path).ids == ["a", "b"]
    (tmp_path / "d.csv").write_text("id,text,text\nd0,first,second\n")
    with pytest.raises(
        SemidError, match="has two columns named 'text'; rename one in the header line"
    ):
        read_documents(tmp_path / "d.csv")
    (tmp_path / "e.csv").write_text("id,text\nd0,first\nid,text\nd1,second\n")
    with pytest.raises(SemidError, match="line 3 repeats the header line"):
        read_documents(tmp_path / "e.csv")


def test_a_body_beside_the_text_is_named_as_left_unread(tmp_path, capsys):
    path = _write(
        tmp_path / "d.jsonl", [json.dumps({"id": i, "text": "t", "body": "b"}) for i in "ab"]
    )
    assert read_documents(path).texts == ["t", "t"]
    said = capsys.readouterr().err
    assert '2 documents give both "text" and "body" (first: line 1); "text" is the document' in said


def test_document_ids_that_look_alike_are_noted(tmp_path, capsys):
    """Logs noted ids that differ only by leading zeros or Unicode form; a corpus took them as
    two documents without a word (a macOS export merged with a Linux one)."""
    import unicodedata

    ids = ["café", unicodedata.normalize("NFD", "café"), "42", "0042", "x"]
    path = tmp_path / "docs.jsonl"
    path.write_text(
        "".join(json.dumps({"id": i, "text": f"text {n}"}) + "\n" for n, i in enumerate(ids))
    )
    assert len(read_documents(path)) == 5
    err = capsys.readouterr().err
    assert "document ids '42' and '0042' differ only by leading zeros" in err
    assert "are one text in two Unicode forms" in err and "read as two documents" in err


def test_fields_of_no_accepted_name_are_named_in_a_note(tmp_path, capsys):
    """Queries under "synopsis" trained on sentences of the documents instead, without a word
    (then `eval` found no test queries)."""
    path = tmp_path / "docs.jsonl"
    rows = [
        {"doc_id": f"d{i}", "Description": f"text {i}", "synopsis": f"q {i}", "url": "u"}
        for i in range(3)
    ]  # fmt: skip  ("Description": read, case aside)
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert len(read_documents(path)) == 3
    err = capsys.readouterr().err
    assert '2 fields of no accepted name left unread: "synopsis", "url" (first: line 1)' in err
    assert "rename a field to use it" in err
    path.write_text(json.dumps({"_id": "d", "title": "t", "text": "x", "metadata": {}}) + "\n")
    read_documents(path)  # BEIR's fields: all known
    assert "left unread" not in capsys.readouterr().err


def test_documents_with_the_same_text_are_noted(tmp_path, capsys):
    """A corpus exported twice under two ids: a query of one counts the other as a miss."""
    lines = [json.dumps({"id": i, "text": t}) for i, t in
             (("a", "one text"), ("b", "another"), ("copy-of-a", "one text"), ("c", "third"))]  # fmt: skip
    read_documents(_write(tmp_path / "d.jsonl", lines))
    err = capsys.readouterr().err
    assert "1 document has the text of an earlier one (e.g. 'copy-of-a', as 'a')" in err
    read_documents(_write(tmp_path / "e.jsonl", lines[:2]))
    assert "the text of an earlier" not in capsys.readouterr().err


def test_a_documents_file_pyarrow_cannot_read_is_still_told_by_line(tmp_path):
    """`index build` guessed the kind of a file with pyarrow, whose error named "row 1" (from 0)
    for line 2's unpaired surrogate, with no fix; the documents reader names line 2 and the fix."""
    from semid.tasks.data import sniff_kind

    lines = [json.dumps({"id": "a", "text": "ok"}), '{"id": "b", "text": "bad \\ud800 here"}']
    path = _write(tmp_path / "d.jsonl", lines)
    assert sniff_kind(str(path)) == "documents"
    with pytest.raises(SemidError, match="line 2: the text holds an unpaired surrogate escape"):
        read_documents(path)
    _write(tmp_path / "e.jsonl", ['["not", "an object"]', lines[1]])
    with pytest.raises(SemidError, match="is a JSON array; write JSON Lines"):
        sniff_kind(str(tmp_path / "e.jsonl"))
