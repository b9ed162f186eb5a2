"""The examples and splits of a retrieval run: documents and queries -> PromptDSI training examples.

A collection is read by name or path (``load_collection``); D0's training documents must have
queries (``check_trainable``); a seeded share of them holds out its queries to choose the ranking
mix (``valid_split``); indexing examples (document -> row) and retrieval examples (query -> row)
are mixed into one dataset (``dsi_examples``), as in DSI. ``describe_split`` says what a run indexes
and tests, ``relevant_rows`` turns test queries' relevant documents into index rows.
"""

from __future__ import annotations

from collections.abc import Collection
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from torch import Tensor
from torch.utils.data import Dataset

from semid.data.beir import read_collection
from semid.data.corpus import CorpusSplit
from semid.data.documents import QUERY_FIELDS_HELP, DocumentCollection
from semid.data.registry import load_dataset
from semid.errors import SemidError
from semid.generators.promptdsi_states import EncodedTexts, pad_states, select_states, token_counts
from semid.ids import SemanticIDs
from semid.notes import note
from semid.wording import counted

if TYPE_CHECKING:
    from semid.generators.promptdsi import PromptDSI

# training documents whose queries choose the ranking mix instead
VALID_SHARE, MAX_VALID = 0.1, 1000


class ExampleDataset(Dataset):
    """(encoded text -> target row) pairs; ``collate`` pads into a PromptDSI batch."""

    def __init__(
        self, texts: EncodedTexts, targets: Tensor, codes: Tensor, is_query: Tensor
    ) -> None:
        if not len(texts.states) == len(targets) == len(is_query):
            raise SemidError(f"{len(texts.states)} texts for {len(targets)} targets")
        self.texts, self.targets, self.codes, self.is_query = (
            texts,
            targets.long(),
            codes,
            is_query.bool(),
        )

    def __len__(self) -> int:
        return len(self.targets)

    def __getitem__(self, i: int) -> int:
        return i

    def collate(self, rows: list[int]) -> dict[str, Tensor]:
        """hidden (B, T, H), attention_mask (B, T), embedding (B, H), targets (B,), target_codes
        (B, L), is_query (B,)."""
        batch = pad_states(select_states(self.texts.states, rows))
        batch["embedding"] = self.texts.embeddings[rows]
        batch["targets"] = self.targets[rows]
        batch["target_codes"] = self.codes[batch["targets"]]
        batch["is_query"] = self.is_query[rows]
        return batch


def dsi_examples(docs: EncodedTexts, doc_rows: Tensor, queries: EncodedTexts, query_rows: Tensor,
                 codes: Tensor) -> ExampleDataset:  # fmt: skip
    """Indexing examples (each document -> its row) mixed with retrieval examples (query -> row)."""
    texts = EncodedTexts(
        docs.states + queries.states, torch.cat([docs.embeddings, queries.embeddings])
    )
    is_query = torch.cat(
        [
            torch.zeros(len(doc_rows), dtype=torch.bool),
            torch.ones(len(query_rows), dtype=torch.bool),
        ]
    )
    return ExampleDataset(texts, torch.cat([doc_rows, query_rows]), codes, is_query)


def load_collection(name: str) -> DocumentCollection:
    """A registered document dataset by name (e.g. debian-docs), a documents file or a BEIR folder."""
    if name.endswith(".jsonl") or Path(name).is_file() or Path(name).is_dir():
        return read_collection(name)
    data = load_dataset(name)
    if not isinstance(data, DocumentCollection):
        raise SemidError(f"{name} is not a document collection; pass debian-docs, manpages or a "
                         "documents file (JSON Lines, CSV, TSV or Parquet of id, text[, queries])")  # fmt: skip
    return data


def check_trainable(collection: DocumentCollection, train_rows: Tensor) -> None:
    """SemidError unless some of the documents at ``train_rows`` (D0's training share) have
    queries: retrieval is learned from them."""
    with_queries = sum(bool(d.queries) for d in collection.documents)
    if not with_queries:
        raise SemidError(f"no document of {collection.name} has queries, so there is nothing to learn retrieval "
                         f"from; give documents {QUERY_FIELDS_HELP}, or train on sentences of the "
                         "documents with --pseudo-queries 3")  # fmt: skip
    if not any(collection.documents[int(r)].queries for r in train_rows):
        raise SemidError(f"only {counted(with_queries, 'document')} of {collection.name} "
                         f"{'has' if with_queries == 1 else 'have'} queries and none is among the training "
                         f"documents; give more documents {QUERY_FIELDS_HELP}")  # fmt: skip


def valid_split(rows: list[int], seed: int) -> tuple[list[int], list[int]]:
    """(train, valid) rows: a seeded share of the training documents whose queries are held out to
    choose the ranking mix (none under 20 documents)."""
    n_valid = min(round(len(rows) * VALID_SHARE), MAX_VALID) if len(rows) >= 20 else 0
    perm = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed + 31)).tolist()
    valid = set(perm[:n_valid])
    return [r for i, r in enumerate(rows) if i not in valid], [
        r for i, r in enumerate(rows) if i in valid
    ]


def describe_split(
    collection: DocumentCollection, split: CorpusSplit, tested: Collection[str],
    untrained: Collection[str] = (),
) -> str:  # fmt: skip
    """One line on what a run indexes and tests: D0 and the held-out D1, the ``tested`` queries
    (with BEIR's test split, whether only held-out documents answer some), and the training
    documents' queries left out (``untrained``, default ``tested``) because test or held-out
    documents share them."""
    line = f"indexing {counted(len(split.d0), 'document')}"
    if len(split.d1):
        line += f" ({len(split.d1):,} held out for `semid index add`)"
    if collection.pseudo_queries:
        line += (f"; no document has queries, so up to {collection.pseudo_queries} sentences of each "
                 "train as its queries (pseudo-queries, never tested: --pseudo-queries sets how many)")  # fmt: skip
    if collection.pseudo_queries and not tested:
        line += '; no test queries (give documents "test_queries" to evaluate)'
    elif collection.has_test_split:
        given = len({q for d in collection.documents for q in d.test_queries})
        line += (
            f"; {len(tested):,} of the {given:,} given test queries (qrels/test or test_queries)"
        )
        if given > len(tested):
            line += ("; the rest answer only held-out documents and are scored once `semid index add` "
                     "adds them (or train with --hold-out 0)")  # fmt: skip
    else:
        line += f"; {counted(len(tested), 'test query', 'test queries')} of {counted(len(split.d0_test), 'test document')}"
    docs = collection.documents
    shared = sum(q in (untrained or tested) for r in split.d0_train for q in docs[int(r)].queries)
    if shared:
        line += (f"; {counted(shared, 'query', 'queries')} of training documents left out of "
                 "training: test or held-out documents have them too")  # fmt: skip
    return line


def relevant_rows(ids: SemanticIDs,
                  relevant: list[str | list[str] | dict[str, float]]) -> tuple[Tensor, Tensor]:  # fmt: skip
    """Index rows (Q, R) of each query's relevant documents, R the most any query has, padded
    with -1, and their grades (Q, R); a query's relevant documents are one id (runs from before
    sets), a list of ids (grade 1) or {id: grade} (`evaluation_queries`)."""
    keys = [[r] if isinstance(r, str) else list(r) for r in relevant]
    rows = torch.full((len(keys), max(map(len, keys), default=1)), -1, dtype=torch.long)
    grades = torch.zeros(rows.shape, dtype=torch.float64)
    for i, (row, given) in enumerate(zip(keys, relevant, strict=True)):
        rows[i, : len(row)] = ids.rows_of_keys(row)
        grades[i, : len(row)] = torch.tensor(
            [float(given[d]) for d in row] if isinstance(given, dict) else [1.0] * len(row)
        )
    return rows, grades


def note_long_documents(model: PromptDSI, docs: EncodedTexts, training: bool) -> None:
    """Say how many documents reach the model's `token_limit`, so are read up to it (their later
    words neither train nor index them), and what reads more: at ``training``, a larger
    ``max_length`` while the encoder has more positions; an added document is read as the run
    reads every text, up to the limit it was trained with."""
    limit = model.token_limit()
    cut = sum(n >= limit for n in token_counts(docs))
    if not cut:
        return
    positions = getattr(model.encoder.config, "max_position_embeddings", None) or 2 * limit
    if not training:
        fix = "its max_length is fixed at training: a run trained with a larger one reads more"
    elif limit >= positions:
        fix = "the encoder has no more positions"
    else:
        fix = (f'add "max_length": {min(2 * limit, positions)} to --model-config to read more of '
               "each, for more time per text")  # fmt: skip
    one = cut == 1
    note(
        f"{cut:,} of the {counted(len(docs.embeddings), 'document')} {'reaches' if one else 'reach'} "
        f"the limit of {limit} tokens, so {'it is' if one else 'they are'} read up to "
        f"{'its' if one else 'their'} first {limit} tokens; {fix}"
    )
