"""Dense baselines in the same harness as the generators: most-popular and SASRec with full cross-entropy.

SASRec (Kang & McAuley, 2018) trained with a softmax over *all* items rather than sampled negatives:
independent re-runs of TIGER found this the strongest dense baseline, so it is the one to beat.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from semid.errors import SemidError
from semid.generator import load_weights, read_model_config, save_model_folder
from semid.recommend import mask_seen


class MostPopular:
    """Recommends the k items with the most train interactions to everyone."""

    def __init__(self, popularity: Tensor) -> None:
        self.popularity = popularity.double()  # (N,) train interactions per index row

    def recommend(self, batch: dict[str, Tensor], k: int) -> Tensor:
        """The k most popular rows (B, k) not in ``batch["seen"]``; stable ties (lower row first)."""
        scores = self.popularity.expand(batch["items"].shape[0], -1)
        scores = mask_seen(scores, batch.get("seen"))
        return torch.sort(-scores, dim=1, stable=True).indices[:, :k]


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

    def forward(self, x: Tensor, bias: Tensor) -> Tensor:
        """x (B, T, D), bias (B, 1|H, T, T) added to the attention scores (-inf forbids) -> (B, T, D)."""
        q, k, v = rearrange(
            self.qkv(self.ln1(x)), "b t (three h d) -> three b h t d", three=3, h=self.heads
        )
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


@dataclass
class SASRecConfig:
    """SASRec hyper-parameters (defaults follow RecBole's SASRec, with full-softmax CE)."""

    num_items: int
    max_len: int = 50
    dim: int = 64
    layers: int = 2
    heads: int = 2
    dropout: float = 0.2
    ff_mult: int = 4  # RecBole: inner size 256 for hidden 64


class SASRec(nn.Module):
    """Causal self-attention over item embeddings; scores every item with the shared embedding table."""

    name = "sasrec"

    def __init__(self, config: SASRecConfig) -> None:
        super().__init__()
        self.config = c = config
        self.item_emb = nn.Embedding(c.num_items + 1, c.dim, padding_idx=0)  # row 0 is PAD
        self.pos_emb = nn.Embedding(c.max_len, c.dim)
        self.blocks = nn.ModuleList(
            SelfAttentionBlock(c.dim, c.heads, c.dropout, c.ff_mult) for _ in range(c.layers)
        )
        self.ln, self.drop = nn.LayerNorm(c.dim), nn.Dropout(c.dropout)
        nn.init.normal_(self.item_emb.weight, std=0.02)
        nn.init.normal_(self.pos_emb.weight, std=0.02)

    def encode(self, items: Tensor) -> Tensor:
        """Hidden states (B, T, D) for left-padded histories of index rows (B, T), PAD = -1."""
        items = items[:, -self.config.max_len :]
        x = self.item_emb(items + 1) * self.config.dim**0.5 + self.pos_emb.weight[-items.shape[1] :]
        x = self.drop(x)
        bias = causal_bias(items)
        for block in self.blocks:
            x = block(x, bias)
        return self.ln(x)

    def scores(self, hidden: Tensor) -> Tensor:
        """Logits (..., N) over every item for hidden states (..., D)."""
        return hidden @ self.item_emb.weight[1:].T

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Cross-entropy over all items at every position with a next item -> (loss, logits (B, T, N))."""
        logits = self.scores(self.encode(batch["items"]))
        target = batch["next_items"][:, -logits.shape[1] :]
        loss = F.cross_entropy(logits.flatten(0, 1), target.flatten(), ignore_index=-1)
        return loss, logits

    @torch.no_grad()
    def recommend(self, batch: dict[str, Tensor], k: int) -> Tensor:
        """Top-k rows (B, k) from the last position's scores over all items the model knows,
        except the rows in ``batch["seen"]``."""
        logits = mask_seen(self.scores(self.encode(batch["items"])[:, -1]), batch.get("seen"))
        return logits.topk(min(k, logits.shape[1]), dim=1).indices

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json + model.safetensors into ``path``."""
        save_model_folder(self, path, self.name, self.config)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> SASRec:
        """Load a folder written by :meth:`save_pretrained`."""
        meta = read_model_config(path)
        if meta["generator"] != cls.name:
            raise SemidError(f"{path} holds a {meta['generator']!r} model, not sasrec")
        model = cls(SASRecConfig(**meta["config"]))
        load_weights(model, os.path.join(path, "model.safetensors"))
        return model
