"""Code vocabulary: per-level semantic-ID codes <-> model token ids.

Level ``l`` code ``c`` becomes token ``num_special + offsets[l] + c``, so every level owns a
disjoint, contiguous block of token ids after the special tokens (pad, eos, ...).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from semid.errors import SemidError


class CodeVocabulary:
    """Maps codes (..., L) to token ids (..., L) and back; level ``l`` owns ``level_slice(l)``."""

    def __init__(self, codebook_sizes: Sequence[int], num_special: int = 0) -> None:
        sizes = [int(v) for v in codebook_sizes]
        if not sizes or min(sizes) < 1:
            raise SemidError(
                f"bad codebook_sizes {list(codebook_sizes)}; pass one positive size per level, e.g. [256, 256, 256]"
            )
        if num_special < 0:
            raise SemidError(
                f"bad num_special {num_special}; it counts special tokens and must be >= 0"
            )
        self.codebook_sizes: list[int] = sizes
        self.levels: int = len(sizes)
        self.num_special: int = int(num_special)
        offsets = [0]
        for v in sizes[:-1]:
            offsets.append(offsets[-1] + v)
        self.offsets: list[int] = offsets
        self.size: int = self.num_special + sum(sizes)
        self._offsets_t = torch.tensor(offsets, dtype=torch.int64) + self.num_special
        self._sizes_t = torch.tensor(sizes, dtype=torch.int64)

    def __repr__(self) -> str:
        return (
            f"CodeVocabulary(codebook_sizes={self.codebook_sizes}, num_special={self.num_special})"
        )

    def level_slice(self, level: int) -> slice:
        """Token ids of ``level`` as a slice of the model's vocabulary."""
        if not 0 <= level < self.levels:
            raise SemidError(
                f"level {level} out of range; this vocabulary has levels 0..{self.levels - 1}"
            )
        start = self.num_special + self.offsets[level]
        return slice(start, start + self.codebook_sizes[level])

    def _check_last_dim(self, x: Tensor, what: str) -> None:
        if x.ndim < 1 or x.shape[-1] != self.levels:
            raise SemidError(
                f"{what} must have shape (..., {self.levels}), got {tuple(x.shape)}; pass one entry per level"
            )

    def codes_to_tokens(self, codes: Tensor) -> Tensor:
        """Codes (..., L) int -> token ids (..., L) int64; raises SemidError for out-of-range codes."""
        self._check_last_dim(codes, "codes")
        codes = codes.long()
        sizes = self._sizes_t.to(codes.device)
        if ((codes < 0) | (codes >= sizes)).any():
            raise SemidError(
                f"codes out of range for codebook sizes {self.codebook_sizes}; check the index"
            )
        return codes + self._offsets_t.to(codes.device)

    def tokens_to_codes(self, tokens: Tensor) -> Tensor:
        """Token ids (..., L) -> codes (..., L) int64; raises SemidError if a token is of the wrong level."""
        self._check_last_dim(tokens, "tokens")
        codes = tokens.long() - self._offsets_t.to(tokens.device)
        if ((codes < 0) | (codes >= self._sizes_t.to(tokens.device))).any():
            raise SemidError(
                "tokens do not belong to their level's block; were they made by this vocabulary?"
            )
        return codes
