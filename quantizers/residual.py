"""Residual codebooks for the learned quantizers (``rqvae``, ``graph_rqvae``).

Level l quantizes what levels < l left over (residual quantization, Juang & Gray 1982; as used
by RQ-VAE, Lee et al. 2022, and TIGER, Rajput et al. 2023). Codebooks are parameters trained by
the codebook loss; k-means initialisation and dead-code re-seeding are in-place methods.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from einops import rearrange
from torch import Tensor, nn

from semid.kmeans import kmeans

Estimator = Callable[[Tensor, Tensor], Tensor]


def straight_through(z: Tensor, z_q: Tensor) -> Tensor:
    """Forward ``z_q`` (N, d), backward the identity to ``z`` (van den Oord et al. 2017)."""
    return z + (z_q - z).detach()


def rotation_trick(z: Tensor, z_q: Tensor, eps: float = 1e-8) -> Tensor:
    """Forward ``z_q`` (N, d); backward through the rotation and rescaling that maps z onto z_q.

    Fifty et al. 2024, "Restructuring vector quantization with the rotation trick": gradients keep
    the angle between the gradient and z, so codes that sit apart receive different updates."""
    z_norm = z.norm(dim=-1, keepdim=True).clamp_min(eps)
    q_norm = z_q.norm(dim=-1, keepdim=True).clamp_min(eps)
    u = (z / z_norm).detach()
    q = (z_q / q_norm).detach()
    w = u + q
    w = w / w.norm(dim=-1, keepdim=True).clamp_min(eps)
    # R z = z - 2 w (w.z) + 2 q (u.z), the Householder-based rotation taking u to q.
    rotated = z - 2 * w * (w * z).sum(-1, keepdim=True) + 2 * q * (u * z).sum(-1, keepdim=True)
    return rotated * (q_norm / z_norm).detach()


ESTIMATORS: dict[str, Estimator] = {"ste": straight_through, "rotation": rotation_trick}


def squared_distances(z: Tensor, codebook: Tensor) -> Tensor:
    """Squared L2 distances (N, K) between rows of z (N, d) and codes (K, d)."""
    return (
        z.pow(2).sum(-1, keepdim=True) - 2 * z @ codebook.T + codebook.pow(2).sum(-1)
    ).clamp_min(0)


@dataclass
class Quantized:
    """One pass through the residual codebooks."""

    z_q: Tensor  # (N, d) sum of the chosen codes, carrying the estimator's gradient to z
    codes: Tensor  # (N, L) int64
    residuals: Tensor  # (N, L, d) the input to each level, detached
    codebook_loss: Tensor  # scalar: moves codes towards their residuals
    commitment_loss: Tensor  # scalar: moves residuals towards their codes


class ResidualCodebooks(nn.Module):
    """L codebooks of K codes in d dimensions, applied one after another to residuals."""

    def __init__(self, levels: int, size: int, dim: int) -> None:
        super().__init__()
        self.codebooks = nn.Parameter(torch.randn(levels, size, dim) * 0.01)  # (L, K, d)

    @property
    def levels(self) -> int:
        """Number of levels L."""
        return self.codebooks.shape[0]

    @property
    def size(self) -> int:
        """Codes per level K."""
        return self.codebooks.shape[1]

    def forward(self, z: Tensor, estimator: Estimator = straight_through) -> Quantized:
        """Quantize z (N, d) level by level; gradients reach z through `estimator`."""
        residual = z
        chosen, codes, inputs = [], [], []
        codebook_loss = commitment_loss = z.new_zeros(())
        for book in self.codebooks:
            idx = squared_distances(residual.detach(), book.detach()).argmin(-1)
            e = book[idx]
            codebook_loss = codebook_loss + (e - residual.detach()).pow(2).sum(-1).mean()
            commitment_loss = commitment_loss + (residual - e.detach()).pow(2).sum(-1).mean()
            inputs.append(residual.detach())
            codes.append(idx)
            chosen.append(e.detach())
            residual = residual - e.detach()
        z_q = torch.stack(chosen).sum(0)
        return Quantized(
            z_q=estimator(z, z_q),
            codes=torch.stack(codes, -1),
            residuals=rearrange(torch.stack(inputs), "l n d -> n l d"),
            codebook_loss=codebook_loss,
            commitment_loss=commitment_loss,
        )

    @torch.no_grad()
    def encode(self, z: Tensor) -> Tensor:
        """Codes (N, L) int64 of latents z (N, d)."""
        return self(z).codes

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Sum (N, d) of the codes (N, L) chosen at each level."""
        levels = torch.arange(self.levels, device=codes.device)
        return self.codebooks[levels, codes].sum(1)

    @torch.no_grad()
    def last_level_distances(self, z: Tensor) -> Tensor:
        """Squared distances (N, K) from the last-level residual of z (N, d) to each last-level code."""
        residual = self(z).residuals[:, -1]
        return squared_distances(residual, self.codebooks[-1])

    @torch.no_grad()
    def init_kmeans_(self, z: Tensor, seed: int = 0) -> None:
        """Set each level's codes to the k-means centroids of that level's residuals of z (N, d)."""
        residual = z.detach()
        for level in range(self.levels):
            self.codebooks[level] = kmeans(residual, self.size, seed=seed + level).to(z)
            residual = (
                residual
                - self.codebooks[level][
                    squared_distances(residual, self.codebooks[level]).argmin(-1)
                ]
            )

    @torch.no_grad()
    def reset_dead_codes_(
        self, residuals: Tensor, usage: Tensor, generator: torch.Generator | None = None
    ) -> int:
        """Re-seed codes never used (usage (L, K) == 0) from residuals (N, L, d); returns how many.

        New codes are drawn with probability proportional to the squared distance of a residual to
        its current code (k-means++ style), so they land where quantization is worst, which also
        splits crowded codes whose items would otherwise share an ID."""
        revived = 0
        for level in range(self.levels):
            dead = (usage[level] == 0).nonzero().squeeze(-1)
            if dead.numel() == 0:
                continue
            r = residuals[:, level]
            err = squared_distances(r, self.codebooks[level]).min(-1).values
            weights = err if float(err.sum()) > 0 else torch.ones_like(err)
            replace = dead.numel() > r.shape[0]
            pick = torch.multinomial(
                weights.cpu(), dead.numel(), replacement=replace, generator=generator
            )
            self.codebooks[level, dead] = r[pick.to(r.device)]
            revived += dead.numel()
        return revived


def code_usage(codes: Tensor, size: int) -> Tensor:
    """Counts (L, K) of how often each code of each level occurs in codes (N, L)."""
    levels = codes.shape[1]
    offsets = torch.arange(levels, device=codes.device) * size
    return torch.bincount((codes + offsets).flatten(), minlength=levels * size).view(levels, size)
