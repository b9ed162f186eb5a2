"""Transformer layers shared by several models (SASRec, MMGRec)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from semid.determinism import seeded_cpu_rng
from semid.dropout import BitDropout, bit_dropout


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
        # cheap CPU masks here and on the attention weights; use_torch_dropout turns both back to torch's
        self.drop = BitDropout(dropout)

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
        if p > 0 and q.device.type == "cpu" and isinstance(self.drop, BitDropout):
            a = _attention_with_bit_dropout(q, k, v, bias.to(q.dtype), p)
        else:
            a = F.scaled_dot_product_attention(q, k, v, attn_mask=bias.to(q.dtype), dropout_p=p)
        x = x + self.drop(self.proj(rearrange(a, "b h t d -> b t (h d)")))
        return x + self.drop(self.mlp(self.ln2(x)))


def _attention_with_bit_dropout(q: Tensor, k: Tensor, v: Tensor, bias: Tensor, p: float) -> Tensor:
    """Scaled dot-product attention whose attention-weight dropout draws :func:`bit_dropout`'s cheap
    masks: on the CPU, ``scaled_dot_product_attention`` with ``dropout_p`` draws one Bernoulli
    sample per weight, the largest cost of a 200-item MMGRec training step after the matmuls."""
    weights = torch.softmax(q @ k.transpose(-2, -1) * q.shape[-1] ** -0.5 + bias, dim=-1)
    return bit_dropout(weights, p) @ v


def reset_seeded_(
    modules: Iterable[nn.Module], seed: int, kind: type[nn.Module] = nn.Module
) -> None:
    """Re-initialise, in order, each of ``modules`` that is a ``kind`` and has ``reset_parameters``,
    from torch's generator seeded with ``seed``; the caller's random state is left as it was."""
    with seeded_cpu_rng(seed):
        for module in modules:
            if isinstance(module, kind) and hasattr(module, "reset_parameters"):
                module.reset_parameters()


def gather_rows(weight: Tensor, index: Tensor) -> Tensor:
    """``weight[index]`` (..., D) for a table ``weight`` (N, D) and integer ``index`` (...), like
    ``F.embedding``, whose CPU backward sorts the indices; this one's backward is an
    ``index_add_``, 5-10x faster for the millions of lookups into a small table that a (B, T, T)
    relation bias makes. Gradients are the same."""
    return weight.index_select(0, index.reshape(-1)).view(*index.shape, weight.shape[1])


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
