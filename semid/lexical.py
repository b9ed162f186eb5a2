"""Lexical scores of query texts against indexed documents: Okapi BM25 over lowercase word tokens.

:class:`LexicalIndex` keeps each document's term counts (a sparse matrix, row i = index row i) and
its vocabulary; BM25 weights (k1, b; Lucene's idf) are derived from them, so documents can be added
later (``add``) and the weights follow. Scoring is one sparse product per batch of queries; each
query term counts once, as in bm25s. ``log_probs`` turns a query's scores over all documents into a
distribution (softmax at ``temperature``), the form in which the retrieve task mixes them with a
generator's log-probabilities (:mod:`semid.hybrid`). Saved as one safetensors file whose metadata
holds the vocabulary.
"""

from __future__ import annotations

import json
import os
import re
from pathlib import Path

import numpy as np
import scipy.sparse as sp
import torch
from safetensors.numpy import load_file, save
from torch import Tensor

from semid.atomic import atomic_file
from semid.errors import SemidError
from semid.saving import check_tensors_sha256, damaged, tensors_sha256

TOKEN = re.compile(r"\w+")


class LexicalIndex:
    """BM25 over the term counts of N documents (row i = index row i)."""

    def __init__(
        self, vocab: dict[str, int], counts: sp.csr_matrix, k1: float = 1.5, b: float = 0.75
    ) -> None:
        if counts.shape[1] != len(vocab):
            raise SemidError(
                f"term counts have {counts.shape[1]} columns for a vocabulary of {len(vocab)}"
            )
        self.vocab, self.counts, self.k1, self.b = vocab, counts.tocsr(), k1, b
        self._weights: sp.csr_matrix | None = None

    @classmethod
    def from_texts(cls, texts: list[str], k1: float = 1.5, b: float = 0.75) -> LexicalIndex:
        """The index of these document texts."""
        vocab: dict[str, int] = {}
        return cls(vocab, _counts(texts, vocab, grow=True), k1, b)

    def __len__(self) -> int:
        return self.counts.shape[0]

    def add(self, texts: list[str]) -> None:
        """Append documents (new terms join the vocabulary); the BM25 weights are recomputed."""
        new = _counts(texts, self.vocab, grow=True)
        old = self.counts
        old = sp.csr_matrix(
            (old.data, old.indices, old.indptr), shape=(old.shape[0], len(self.vocab))
        )
        self.counts, self._weights = sp.vstack([old, new]).tocsr(), None

    @property
    def weights(self) -> sp.csr_matrix:
        """BM25 term weights (V, N), built on first use."""
        if self._weights is None:
            tf = self.counts.tocoo()
            n = self.counts.shape[0]
            length = np.asarray(self.counts.sum(1)).ravel()
            df = np.bincount(tf.col, minlength=len(self.vocab))
            idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
            denom = tf.data + self.k1 * (
                1 - self.b + self.b * length[tf.row] / max(length.mean(), 1e-9)
            )
            w = idf[tf.col] * tf.data * (self.k1 + 1) / denom
            self._weights = sp.csr_matrix((w, (tf.row, tf.col)), shape=tf.shape).T.tocsr()
        return self._weights

    def scores(self, queries: list[str]) -> Tensor:
        """BM25 scores (Q, N) of query texts against every document."""
        q = _counts(queries, self.vocab, grow=False)
        q.data[:] = 1.0  # each query term counts once
        return torch.from_numpy((q @ self.weights).toarray()).float()

    def log_probs(self, queries: list[str], temperature: float = 1.0) -> Tensor:
        """log softmax(temperature * BM25) (Q, N): uniform for a query without known terms."""
        return torch.log_softmax(self.scores(queries) * temperature, dim=-1)

    def search(self, queries: list[str], k: int, batch_size: int = 256) -> Tensor:
        """Top-k document rows (Q, k), scored ``batch_size`` queries at a time."""
        parts = []
        for lo in range(0, len(queries), batch_size):
            scores = self.scores(queries[lo : lo + batch_size])
            parts.append(scores.topk(min(k, scores.shape[1]), dim=1).indices)
        return torch.cat(parts)

    def save(self, path: str | os.PathLike) -> None:
        """Write the counts and vocabulary to one safetensors file (atomically)."""
        c = self.counts
        arrays = {"data": c.data.astype(np.float32), "indices": c.indices.astype(np.int64),
                  "indptr": c.indptr.astype(np.int64)}  # fmt: skip
        # one metadata entry: safetensors writes several in an order that varies between runs, and
        # the same documents must give the same bytes
        meta = {"lexical": json.dumps({"vocab": self.vocab, "shape": list(c.shape), "k1": self.k1,
                                       "b": self.b, "sha256": tensors_sha256(arrays)})}  # fmt: skip
        with atomic_file(path, "wb") as f:
            f.write(save(arrays, metadata=meta))

    @classmethod
    def load(cls, path: str | os.PathLike) -> LexicalIndex:
        """The index saved at ``path``; a damaged file is one SemidError line naming it."""
        from safetensors import SafetensorError, safe_open

        path = Path(path)
        try:
            arrays = load_file(str(path))
            with safe_open(str(path), framework="numpy") as f:
                meta = f.metadata()
            if "lexical" in meta:
                meta = json.loads(meta["lexical"])
            else:  # written before the one entry: each value a JSON or number string of its own
                meta = {"vocab": json.loads(meta["vocab"]), "shape": json.loads(meta["shape"]),
                        "k1": meta["k1"], "b": meta["b"]}  # fmt: skip
            check_tensors_sha256(path, arrays, meta.get("sha256"))  # none in older files
            counts = sp.csr_matrix(
                (arrays["data"], arrays["indices"], arrays["indptr"]), shape=tuple(meta["shape"])
            )
            return cls(meta["vocab"], counts, float(meta["k1"]), float(meta["b"]))
        except (SafetensorError, OSError, KeyError, TypeError, ValueError) as e:
            raise damaged(path, e) from None


def _counts(texts: list[str], vocab: dict[str, int], grow: bool) -> sp.csr_matrix:
    """Term counts (len(texts), len(vocab)) of lowercase word tokens; unknown terms dropped unless grow."""
    rows, cols = [], []
    for i, text in enumerate(texts):
        for token in TOKEN.findall(text.lower()):
            j = vocab.setdefault(token, len(vocab)) if grow else vocab.get(token)
            if j is not None:
                rows.append(i)
                cols.append(j)
    data = np.ones(len(rows), dtype=np.float32)
    return sp.csr_matrix((data, (rows, cols)), shape=(len(texts), len(vocab)))
