"""Seeded splits of a document collection: an initial corpus D0 and a later corpus D1, and in each the
documents whose queries are trained on and those whose queries are only evaluated."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

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
