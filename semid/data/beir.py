"""Document collections in BEIR's folder layout, the usual form of public retrieval benchmarks.

A BEIR folder holds ``corpus.jsonl`` (``_id``, ``title``, ``text``), ``queries.jsonl`` (``_id``,
``text``) and ``qrels/<split>.tsv`` (``query-id``, ``corpus-id``, ``score``), each optionally
gzipped. Every query judged relevant (score > 0) becomes a query of its document, in file order
(the files sorted by name). A folder with ``qrels/test.tsv`` beside other qrels files (train, dev)
keeps BEIR's split: the test judgements become the documents' test queries (only evaluated, never
trained on; a test query judged in another file too stays a test query), the others their
training queries. A folder whose only qrels file is ``test.tsv`` has nothing else to learn from,
so its queries are pooled and semid splits them, as for a documents file. `read_collection` reads
a documents file or such a folder.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

from semid.data.documents import QUERY_ID_FIELDS, Document, DocumentCollection, read_documents
from semid.data.tables import content_sha256, find_column, key_strings, read_table, row_label
from semid.errors import SemidError
from semid.notes import note
from semid.wording import counted

CORPUS, QUERIES, QRELS = "corpus.jsonl", "queries.jsonl", "qrels"
LAYOUT = "a BEIR folder (corpus.jsonl, queries.jsonl, qrels/*.tsv)"
QRELS_QUERY_COLUMNS = ("query-id", "query_id", "qid")
QRELS_DOCUMENT_COLUMNS = ("corpus-id", "corpus_id", "doc_id", "docid")


def read_collection(path: str | os.PathLike, name: str | None = None) -> DocumentCollection:
    """The documents of a documents file (`read_documents`) or of a BEIR folder (`read_beir`)."""
    return read_beir(path, name) if Path(path).is_dir() else read_documents(path, name)


def is_beir_folder(path: str | os.PathLike) -> bool:
    """Whether ``path`` is a folder with a BEIR corpus file."""
    return Path(path).is_dir() and _file(Path(path), CORPUS) is not None


def _holds_images(folder: Path, most: int = 1000) -> bool:
    """Whether one of the first ``most`` files under ``folder`` is a picture."""
    from semid.data.image_folders import PICTURE_SUFFIXES  # here: images load PIL

    for seen, path in enumerate(folder.rglob("*")):
        if seen >= most:
            return False
        if path.suffix.lower() in PICTURE_SUFFIXES:
            return True
    return False


def read_beir(folder: str | os.PathLike, name: str | None = None) -> DocumentCollection:
    """The corpus of a BEIR folder, each document with the queries judged relevant to it; its
    ``sha256`` is the content hash of those files alone (`content_sha256`), so that a run written
    inside the folder does not change it. A folder without queries and qrels gives the corpus
    alone (documents without queries are indexed only)."""
    folder = Path(folder)
    corpus = _file(folder, CORPUS)
    if corpus is None:
        images = ("; it holds images, which train with --model avg (text to image)"
                  if _holds_images(folder) else "")  # fmt: skip
        raise SemidError(f"{folder} is a folder without {CORPUS}; pass a documents file (JSON Lines, "
                         f"CSV, TSV or Parquet of id, text[, queries]) or {LAYOUT}{images}")  # fmt: skip
    collection = read_documents(corpus)
    queries, qrels = _file(folder, QUERIES), _qrels_files(folder)
    if (queries is None) != (not qrels):
        missing = f"{QUERIES}" if queries is None else f"{QRELS}/*.tsv"
        raise SemidError(f"{folder} has {'qrels' if queries is None else QUERIES} but no {missing}; "
                         "give both, or neither for a corpus without queries")  # fmt: skip
    documents, grades = collection.documents, {}
    if queries is not None:
        documents, grades = _with_queries(documents, _query_texts(queries), qrels, folder)
    return DocumentCollection(name or folder.resolve().name, documents,
                              content_sha256(beir_files(folder)), grades=grades)  # fmt: skip


def beir_files(folder: str | os.PathLike) -> list[Path]:
    """The files of a BEIR folder that its collection reads (corpus, queries, qrels), whose
    `content_sha256` is the collection's ``sha256``; [] without a corpus file."""
    folder = Path(folder)
    corpus, queries = _file(folder, CORPUS), _file(folder, QUERIES)
    if corpus is None:
        return []
    return [corpus, *([queries] if queries is not None else []), *_qrels_files(folder)]


def _file(folder: Path, name: str) -> Path | None:
    return next((p for p in (folder / name, folder / f"{name}.gz") if p.is_file()), None)


def _qrels_files(folder: Path) -> list[Path]:
    qrels = folder / QRELS
    if not qrels.is_dir():
        return []
    return sorted(p for p in qrels.iterdir() if p.name.endswith((".tsv", ".tsv.gz")))


def _query_texts(path: Path) -> dict[str, str]:
    """Query id -> text of a BEIR queries file."""
    table = read_table(path, "queries file")
    id_column = find_column(table, "query id", QUERY_ID_FIELDS, path, "queries file",
                            columns_option=False)  # fmt: skip
    text_column = find_column(table, "text", ("text", "query"), path, "queries file",
                              columns_option=False)  # fmt: skip
    ids = key_strings(table[id_column], path, "query id", trim=True)
    texts: dict[str, str] = {}
    for row, (i, t) in enumerate(zip(ids, table[text_column].to_pylist(), strict=True)):
        text = str(t or "").strip()
        if texts.setdefault(i, text) != text:
            raise SemidError(f"{path} {row_label(path, row)} gives query {i!r} another text "
                             f"({text[:40]!r}, was {texts[i][:40]!r}); give each query its own id")  # fmt: skip
    return texts


def _with_queries(documents: list[Document], texts: dict[str, str], qrels: list[Path],
                  folder: Path) -> tuple[list[Document], dict[tuple[str, str], float]]:  # fmt: skip
    """The documents, each with its own queries and then the relevant queries of the qrels, and
    the grades of the judgements that are not 1 (the test file's grade where files differ); with
    BEIR's own test split (`test_file`), its queries become test queries, never trained on."""
    known = {d.id for d in documents}
    test_file = _test_file(qrels)
    judged = {path: _judgements(path, texts, known) for path in qrels}
    last = sorted(judged, key=lambda path: path == test_file)  # the test file's grades win
    grades = {(doc, query): score for path in last for doc, query, score in judged[path]}
    if not any(judged.values()):
        raise SemidError(f"{folder}: no query of {QUERIES} is judged relevant to a document of "
                         f"{CORPUS} in {counted(len(qrels), 'qrels file')}; check that their ids match")  # fmt: skip
    if test_file is not None and not judged[test_file]:  # as if there were none: said
        note(f"{test_file} judges no query relevant (a score above 0) to a document of {CORPUS}, "
             "so it gives no test queries: a share of the documents is held out as the test "
             "split instead; give its relevant judgements a score above 0 to keep BEIR's")  # fmt: skip
    if test_file is not None:
        _note_shared_test_texts(judged[test_file], texts, test_file)
    test = _by_document(judged.pop(test_file) if test_file is not None else [])
    held_out = {q for queries in test.values() for q in queries}
    train = _by_document(
        pair for pairs in judged.values() for pair in pairs if pair[1] not in held_out
    )
    documents = [
        Document(
            d.id,
            d.text,
            _merged(d.queries, train.get(d.id, ())),
            _merged(d.test_queries, test.get(d.id, ())),
        )  # fmt: skip
        for d in documents
    ]
    return documents, {pair: score for pair, score in grades.items() if score != 1}


def _test_file(qrels: list[Path]) -> Path | None:
    """The qrels file of BEIR's test split, when there is one beside other (training) qrels: alone,
    its queries are all there is to learn from, so they are pooled and split by semid."""
    test = [p for p in qrels if p.name.split(".")[0].lower() == "test"]
    return test[0] if len(test) == 1 and len(qrels) > 1 else None


def _judgements(path: Path, texts: dict[str, str], known: set[str]) -> list[tuple[str, str, float]]:
    """(document id, query text, score) for every relevant judgement (score > 0; 1 without a
    score column) of a qrels file whose query has a text and whose document is in the corpus,
    in file order."""
    table = read_table(path, "qrels file")
    what = "qrels file"
    query_col = find_column(
        table, "query id", QRELS_QUERY_COLUMNS, path, what, columns_option=False
    )
    doc_col = find_column(
        table, "document id", QRELS_DOCUMENT_COLUMNS, path, what, columns_option=False
    )
    score_col = find_column(
        table, "score", ("score",), path, what, required=False, columns_option=False
    )
    scores = [1.0] * table.num_rows
    if score_col is not None:
        try:
            column = table[score_col]
            if pa.types.is_string(column.type):  # "1 ": a space before the line break
                column = pc.utf8_trim_whitespace(column)
            scores = pc.cast(column, "double").to_pylist()
        except (ValueError, TypeError, NotImplementedError) as e:
            raise SemidError(
                f"{path}: the score column must hold numbers ({e}); fix the file"
            ) from None
    query_ids = key_strings(table[query_col], path, "query id", trim=True)
    doc_ids = key_strings(table[doc_col], path, "document id", trim=True)
    relevant = [(query, doc, score) for query, doc, score in zip(query_ids, doc_ids, scores, strict=True)
                if score is not None and score > 0]  # fmt: skip
    no_query = [(q, d) for q, d, _ in relevant if not texts.get(q)]
    no_document = [(q, d) for q, d, _ in relevant if texts.get(q) and d not in known]
    for pairs, what in ((no_query, f"queries {QUERIES} lacks (or gives no text)"),
                        (no_document, f"documents {CORPUS} lacks")):  # fmt: skip
        if pairs:
            note(f"{path}: {counted(len(pairs), 'relevant judgement')} of {what} skipped (first: "
                 f"{pairs[0][0]} -> {pairs[0][1]})")  # fmt: skip
    return [(doc, texts[query], score) for query, doc, score in relevant
            if texts.get(query) and doc in known]  # fmt: skip


def _note_shared_test_texts(judgements: list[tuple[str, str, float]], texts: dict[str, str],
                            test_file: Path) -> None:  # fmt: skip
    """A note when test queries of several ids share one text: a query is its text here, so they
    are one query, scored once against all their relevant documents (BEIR scores each id)."""
    ids_of = Counter(texts.values())
    shared = list(dict.fromkeys(text for _, text, _ in judgements if ids_of[text] > 1))
    if shared:
        note(f"{test_file}: {counted(len(shared), 'test query text')} of {QUERIES} "
             f"{'belongs' if len(shared) == 1 else 'belong'} to several query ids (e.g. "
             f"{shared[0][:40]!r}); a query is its text here, so theirs is one query, scored once "
             "against all its relevant documents")  # fmt: skip


def _by_document(judgements: Iterable[tuple[str, str, float]]) -> dict[str, list[str]]:
    """Document id -> its distinct query texts, in order."""
    out: dict[str, list[str]] = {}
    for doc, text, _ in judgements:
        queries = out.setdefault(doc, [])
        if text not in queries:
            queries.append(text)
    return out


def _merged(own: tuple[str, ...], judged: Iterable[str]) -> tuple[str, ...]:
    """A document's own (test) queries, then the judged ones it does not have yet."""
    return own + tuple(q for q in dict.fromkeys(judged) if q not in own)
