"""Transformer layers shared by several models (SASRec, MMGRec)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn


class SelfAttentionBlock(nn.Module):
    """Pre-norm Transformer block whose attention takes an additive mask/bias (B, 1 or H, T, T)."""

    def __init__(self, dim: int, heads: int, dropout: float, ff_mult: int = 1) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"dim={dim} must be divisible by heads={heads}")
        self.heads, self.dropout = heads, dropout
        self.ln1, self.ln2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.qkv, self.proj = nn.Linear(dim, 3 * dim), nn.Linear(dim, dim)
        self.mlp = nn.Sequential(
            nn.Linear(dim, ff_mult * dim), nn.GELU(), nn.Linear(ff_mult * dim, dim)
        )
        self.drop = nn.Dropout(dropout)

    def forward(self, x: Tensor, bias: Tensor, last_only: bool = False) -> Tensor:
        """x (B, T, D), bias (B, 1|H, T, T) added to the attention scores (-inf forbids) -> (B, T, D).

        ``last_only``: only the last position's output (B, 1, D), the same as ``forward(x,
        bias)[:, -1:]``: keys and values still come from every position, but attention, the output
        projection and the feed-forward run on one row. A causal stack needs nothing else from its
        top block at search time."""
        q, k, v = rearrange(
            self.qkv(self.ln1(x)), "b t (three h d) -> three b h t d", three=3, h=self.heads
        )
        if last_only:  # views only: no extra kernels for one-query searches to pay
            q, x, bias = q[:, :, -1:], x[:, -1:], bias[..., -1:, :]
        p = self.dropout if self.training else 0.0
        a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p)
        x = x + self.drop(self.proj(rearrange(a, "b h t d -> b t (h d)")))
        return x + self.drop(self.mlp(self.ln2(x)))


def causal_bias(items: Tensor) -> Tensor:
    """Additive mask (B, 1, T, T): position i sees real positions j <= i, and always itself."""
    t = items.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool, device=items.device).tril()
    allowed = causal & (items >= 0)[:, None, :]
    allowed = allowed | torch.eye(
        t, dtype=torch.bool, device=items.device
    )  # pads see themselves: no NaN rows
    return torch.zeros(allowed.shape, device=items.device).masked_fill(~allowed, float("-inf"))[
        :, None
    ]
