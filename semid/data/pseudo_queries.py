"""Pseudo-queries for a corpus that comes without queries: sentences drawn from each document.

A documents file of id and text alone gives retrieval nothing to learn from. Sentences of a
document stand in for the questions it answers (as in DSI's indexing-by-span and the inverse cloze
task): each document gets up to ``count`` of its sentences, drawn with a seed of its own (the same
document, seed and count give the same queries), each cut to ``MAX_WORDS`` words. They train a run;
they are never test queries, which only a collection's own ``test_queries`` give.
"""

from __future__ import annotations

import random
import re
from dataclasses import replace

from semid.data.documents import Document, DocumentCollection

MAX_WORDS = 24  # a query is a phrase or a sentence, not a paragraph
MIN_WORDS = 3  # shorter fragments ("See also.", list bullets) say too little to find a document by
SENTENCE_END = re.compile(r"(?<=[.!?])\s+|\n+")


def sentences(text: str) -> list[str]:
    """The text's sentences and lines of at least ``MIN_WORDS`` words, each cut to ``MAX_WORDS``."""
    pieces = (" ".join(s.split()[:MAX_WORDS]) for s in SENTENCE_END.split(text))
    return [p for p in pieces if len(p.split()) >= MIN_WORDS]


def pseudo_queries(document: Document, count: int, seed: int) -> tuple[str, ...]:
    """Up to ``count`` distinct sentences of the document, in text order, drawn with a seed of
    the document's own; a document without such a sentence gives its first ``MAX_WORDS`` words."""
    found = list(dict.fromkeys(sentences(document.text)))
    if not found:
        words = document.text.split()[:MAX_WORDS]
        return (" ".join(words),) if words else ()
    if len(found) <= count:
        return tuple(found)
    picked = random.Random(f"{seed}:{document.id}").sample(range(len(found)), count)
    return tuple(found[i] for i in sorted(picked))


def with_pseudo_queries(
    collection: DocumentCollection, count: int, seed: int
) -> DocumentCollection:
    """The collection with each document's queries drawn from its text (`pseudo_queries`); given
    test queries are kept, and are then the only test queries. Unchanged when ``count`` is 0 or a
    document has queries of its own (they train instead)."""
    if not count or any(d.queries for d in collection.documents):
        return collection
    docs = [replace(d, queries=pseudo_queries(d, count, seed)) for d in collection.documents]
    return replace(collection, documents=docs, pseudo_queries=count)


def given_documents(collection: DocumentCollection) -> list[Document]:
    """The collection's documents as given: without their pseudo-queries, if it has them."""
    if not collection.pseudo_queries:
        return collection.documents
    return [replace(d, queries=()) for d in collection.documents]
