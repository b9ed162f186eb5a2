"""Text-retrieval baselines measured beside PromptDSI: BM25 and dense exact inner-product search."""

from __future__ import annotations

import faiss
import numpy as np
import torch

from semid.lexical import LexicalIndex


class BM25(LexicalIndex):
    """Okapi BM25 (k1, b; Lucene idf) over lowercase word tokens: :class:`semid.lexical.LexicalIndex`."""

    def __init__(self, texts: list[str], k1: float = 1.5, b: float = 0.75) -> None:
        index = LexicalIndex.from_texts(texts, k1, b)
        super().__init__(index.vocab, index.counts, k1, b)


def dense_search(doc_emb: torch.Tensor, query_emb: torch.Tensor, k: int) -> torch.Tensor:
    """Top-k rows (Q, k) by exact inner product (faiss IndexFlatIP)."""
    index = faiss.IndexFlatIP(doc_emb.shape[1])
    index.add(np.ascontiguousarray(doc_emb.numpy()))
    return torch.from_numpy(index.search(np.ascontiguousarray(query_emb.numpy()), k)[1]).long()
