"""k-means as a pure function on tensors, backed by faiss (CPU, or GPU with faiss-gpu)."""

from __future__ import annotations

import faiss
import numpy as np
import torch
from torch import Tensor


def faiss_seed(seed: int) -> int:
    """``seed`` as faiss takes it (a C int): any Python integer maps to one, small ones to themselves."""
    return seed % 2**31


def kmeans(
    x: Tensor, k: int, *, niter: int = 20, seed: int = 0, max_points_per_centroid: int = 256
) -> Tensor:
    """Centroids (k, D) of x (N, D) by Lloyd's algorithm from a seeded random init (faiss).

    Deterministic for a given seed on one machine. If N < k, the missing centroids repeat points
    (and are left for dead-code handling by the caller)."""
    xn = np.ascontiguousarray(x.detach().cpu().float().numpy())
    n, d = xn.shape
    if n < k:
        reps = np.resize(np.arange(n), k)
        return torch.from_numpy(xn[reps].copy())
    km = faiss.Kmeans(
        d,
        k,
        niter=niter,
        seed=faiss_seed(seed),
        max_points_per_centroid=max_points_per_centroid,
        min_points_per_centroid=1,  # small catalogues are normal here; faiss would warn on stderr
        verbose=False,
    )
    km.train(xn)
    return torch.from_numpy(km.centroids.copy())


def nearest(x: Tensor, centroids: Tensor) -> tuple[Tensor, Tensor]:
    """Squared L2 distance (N,) and index (N,) int64 of each row's nearest centroid, exact."""
    index = faiss.IndexFlatL2(centroids.shape[1])
    index.add(np.ascontiguousarray(centroids.detach().cpu().float().numpy()))
    dist, idx = index.search(np.ascontiguousarray(x.detach().cpu().float().numpy()), 1)
    return torch.from_numpy(dist[:, 0]), torch.from_numpy(idx[:, 0]).long()
