"""Text-retrieval baselines measured beside PromptDSI: BM25 and dense exact inner-product search."""

from __future__ import annotations

import re

import faiss
import numpy as np
import scipy.sparse as sp
import torch


class BM25:
    """Okapi BM25 (k1, b; Lucene idf) over lowercase word tokens, scored with one sparse product."""

    def __init__(self, texts: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        self.vocab: dict[str, int] = {}
        tf = self._counts(texts, grow=True)
        n = tf.shape[0]
        dl = np.asarray(tf.sum(1)).ravel()
        df = np.bincount(tf.indices, minlength=len(self.vocab))
        idf = np.log(1 + (n - df + 0.5) / (df + 0.5))
        tf = tf.tocoo()
        denom = tf.data + k1 * (1 - b + b * dl[tf.row] / dl.mean())
        w = idf[tf.col] * tf.data * (k1 + 1) / denom
        self.weights = sp.csr_matrix((w, (tf.row, tf.col)), shape=tf.shape).T.tocsr()  # (V, N)

    def _counts(self, texts: list[str], grow: bool) -> sp.csr_matrix:
        rows, cols = [], []
        for i, t in enumerate(texts):
            for tok in re.findall(r"\w+", t.lower()):
                j = self.vocab.setdefault(tok, len(self.vocab)) if grow else self.vocab.get(tok)
                if j is not None:
                    rows.append(i)
                    cols.append(j)
        shape = (len(texts), len(self.vocab))
        return sp.csr_matrix((np.ones(len(rows)), (rows, cols)), shape=shape)

    def search(self, queries: list[str], k: int) -> torch.Tensor:
        """Top-k document rows (Q, k)."""
        q = self._counts(queries, grow=False)
        q.data[:] = 1.0  # each query term counts once, as in bm25s
        scores = torch.from_numpy((q @ self.weights).toarray())
        return scores.topk(k, dim=1).indices


def dense_search(doc_emb: torch.Tensor, query_emb: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k rows (Q, k) by exact inner product (faiss IndexFlatIP)."""
    index = faiss.IndexFlatIP(doc_emb.shape[1])
    index.add(np.ascontiguousarray(doc_emb.numpy()))
    return torch.from_numpy(index.search(np.ascontiguousarray(query_emb.numpy()), k)[1]).long()
