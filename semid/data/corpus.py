"""Seeded splits of a document collection: an initial corpus D0 and a later corpus D1, and in each the
documents whose queries are trained on and those whose queries are only evaluated; and the training
examples and test queries such a split gives."""

from __future__ import annotations

from collections.abc import Collection
from dataclasses import dataclass, replace
from typing import Any

import torch
from torch import Tensor

from semid.data.documents import DocumentCollection
from semid.errors import SemidError


@dataclass
class CorpusSplit:
    """Row indices into a collection: D0/D1 documents and, in each, train and test query rows."""

    d0: Tensor
    d1: Tensor
    d0_train: Tensor  # rows of D0 whose queries are trained on
    d0_test: Tensor  # rows of D0 whose queries are only evaluated
    d1_train: Tensor
    d1_test: Tensor


def split_corpus(
    n: int, seed: int = 0, later_fraction: float = 0.1, test_fraction: float = 0.2
) -> CorpusSplit:
    """The seeded D0/D1 and train/test-query split of n documents (rows sorted within each part)."""
    if not (0 <= later_fraction < 1 and 0 <= test_fraction < 1):
        raise SemidError("later and test fractions must lie in [0, 1)")
    g = torch.Generator().manual_seed(seed)
    perm = torch.randperm(n, generator=g)
    n1 = round(n * later_fraction)
    d0, d1 = perm[: n - n1], perm[n - n1 :]

    def cut(rows: Tensor) -> tuple[Tensor, Tensor]:
        n_test = round(len(rows) * test_fraction)
        return rows[n_test:].sort().values, rows[:n_test].sort().values

    (d0_train, d0_test), (d1_train, d1_test) = cut(d0), cut(d1)
    return CorpusSplit(d0.sort().values, d1.sort().values, d0_train, d0_test, d1_train, d1_test)


def subset_rows(n: int, size: int | None, seed: int = 0) -> Tensor:
    """A seeded sample of ``size`` rows of n (sorted), or all rows."""
    if size is None or size >= n:
        return torch.arange(n)
    g = torch.Generator().manual_seed(seed + 7919)
    return torch.randperm(n, generator=g)[:size].sort().values


def evaluation_queries(collection: DocumentCollection, rows: Tensor | list[int],
                       indexed: Tensor | list[int]) -> list[list[Any]]:  # fmt: skip
    """[query, [relevant document ids]] for each distinct test query of the documents at ``rows``
    (their given test queries when the collection has its own split, else their queries), in
    order. A query's relevant documents are all those at ``indexed`` that list it, so a query of
    several documents is scored once, against all of them; when the collection grades one of
    them other than 1 (BEIR's graded qrels) they are {id: grade} instead of a list."""
    given = collection.has_test_split
    docs = collection.documents
    relevant: dict[str, list[str]] = {}
    for r in rows:
        for q in docs[int(r)].test_queries if given else docs[int(r)].queries:
            relevant.setdefault(q, [])
    for r in indexed:
        d = docs[int(r)]
        for q in d.test_queries if given else d.queries:
            if q in relevant and d.id not in relevant[q]:
                relevant[q].append(d.id)
    return [[q, _graded(collection, q, ids)] for q, ids in relevant.items()]


def with_added_documents(parts: dict[str, list[list[Any]]], collection: DocumentCollection,
                         new_pairs: list[list[Any]]) -> tuple[dict[str, list[list[Any]]], list[list[Any]]]:  # fmt: skip
    """Recorded test-query parts ({part: [[query, relevant]]}) once ``collection``'s documents are
    indexed too, and the pairs of its own test queries that no part holds yet: a recorded query
    that some of the new documents list (as `evaluation_queries` reads them) gains them as relevant
    documents, so a query judged relevant to documents of two parts is scored once, in the part
    that recorded it first, against all of them (it was scored in each part against that part's
    documents alone, and a hit on the other part's counted as a miss)."""
    given, recorded = collection.has_test_split, {q for pairs in parts.values() for q, _ in pairs}
    listing: dict[str, list[str]] = {}
    for d in collection.documents:
        for q in d.test_queries if given else d.queries:
            if q in recorded and d.id not in listing.setdefault(q, []):
                listing[q].append(d.id)
    merged = {name: [[q, _merged_relevance(collection, q, rel, listing.get(q, []))] for q, rel in pairs]
              for name, pairs in parts.items()}  # fmt: skip
    return merged, [pair for pair in new_pairs if pair[0] not in recorded]


def _merged_relevance(collection: DocumentCollection, query: str, relevant: str | list[str] | dict[str, float],
                      added: list[str]) -> list[str] | dict[str, float]:  # fmt: skip
    """A recorded query's relevant documents (ids, {id: grade}, or one id as runs recorded it
    before a query could have several) and the ``added`` ones."""
    if not added:
        return relevant
    if isinstance(relevant, str):
        relevant = [relevant]
    grades = relevant if isinstance(relevant, dict) else dict.fromkeys(relevant, 1.0)
    return _relevance(
        {**grades, **{d: collection.grade(d, query) for d in added if d not in grades}}
    )


def _graded(
    collection: DocumentCollection, query: str, ids: list[str]
) -> list[str] | dict[str, float]:
    """A query's relevant document ids, or {id: grade} when a grade is not 1."""
    return _relevance({d: collection.grade(d, query) for d in ids})


def _relevance(grades: dict[str, float]) -> list[str] | dict[str, float]:
    """Relevant documents as a run records them: their ids when every grade is 1, else {id: grade}."""
    return list(grades) if all(g == 1 for g in grades.values()) else grades


def held_out_queries(collection: DocumentCollection, split: CorpusSplit) -> set[str]:
    """The queries of the held-out documents (D1) when `semid index add` may test them (a drawn
    split: the add draws its own test documents), so that D0 never trains on them; none for a
    collection that names its test queries or whose queries are sentences of its documents."""
    if collection.has_test_split or collection.pseudo_queries:
        return set()
    return {q for r in split.d1 for q in collection.documents[int(r)].queries}


def query_examples(collection: DocumentCollection, rows: list[int],
                   held_out: Collection[str] = ()) -> tuple[list[str], list[int]]:  # fmt: skip
    """Every query of the documents at ``rows`` but the ``held_out`` (test) ones and, for each,
    the row of its document."""
    pairs = [(q, r) for r in rows for q in collection.documents[r].queries if q not in held_out]
    return [q for q, _ in pairs], [r for _, r in pairs]


def split_name(collection: DocumentCollection) -> str:
    """How a collection's test queries were chosen: ``given`` by it, ``drawn`` by document, or
    ``none`` (its queries are pseudo-queries, and it gives no test queries)."""
    if collection.gives_test_queries:
        return "given"
    return "none" if collection.pseudo_queries else "drawn"


def own_test_split(split: CorpusSplit) -> CorpusSplit:
    """The split of a collection with its own test queries: every indexed document's queries are
    trained on and its test queries evaluated."""
    return replace(split, d0_train=split.d0, d0_test=split.d0, d1_train=split.d1, d1_test=split.d1)
