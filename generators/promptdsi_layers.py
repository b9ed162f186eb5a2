"""PromptDSI's building blocks: the frozen encoder's loader and the decoder's cross-attention layer."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch.nn.functional as F
from einops import rearrange
from torch import Tensor, nn

from semid.determinism import seeded_cpu_rng
from semid.encoders import hide_weight_loading_bar, model_load_errors
from semid.errors import SemidError


def split_heads(x: Tensor, h: int) -> Tensor:
    """(B, T, h*d) -> (B, h, T, d)."""
    return rearrange(x, "b t (h d) -> b h t d", h=h)


class DecoderLayer(nn.Module):
    """Pre-norm decoder layer whose cross-attention K/V are computed once per query (``memory_kv``)."""

    def __init__(self, d: int, heads: int, d_ff: int, dropout: float) -> None:
        super().__init__()
        self.heads, self.p = heads, dropout
        self.norm1, self.norm2, self.norm3 = nn.LayerNorm(d), nn.LayerNorm(d), nn.LayerNorm(d)
        self.qkv, self.self_out = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.cross_q, self.cross_kv, self.cross_out = (
            nn.Linear(d, d),
            nn.Linear(d, 2 * d),
            nn.Linear(d, d),
        )
        self.ff = nn.Sequential(nn.Linear(d, d_ff), nn.GELU(), nn.Linear(d_ff, d))
        self.drop = nn.Dropout(dropout)

    def memory_kv(self, memory: Tensor) -> tuple[Tensor, Tensor]:
        """Cross-attention keys and values (B, h, S, d_h) of the encoder memory (B, S, d)."""
        k, v = self.cross_kv(memory).chunk(2, dim=-1)
        return split_heads(k, self.heads), split_heads(v, self.heads)

    def forward(self, x: Tensor, kv: tuple[Tensor, Tensor], memory_mask: Tensor) -> Tensor:
        """x (R, T, d) causal over T, attending to memory K/V (G, h, S, d_h) with mask (G, S) True =
        real -> (R, T, d). G is R, or the number of queries when the R rows are grouped by query in
        R / G blocks (each block reads its query's one copy: see :func:`grouped_cross_attention`)."""
        p = self.p if self.training else 0.0
        q, k, v = (split_heads(t, self.heads) for t in self.qkv(self.norm1(x)).chunk(3, dim=-1))
        a = F.scaled_dot_product_attention(q, k, v, dropout_p=p, is_causal=True)
        x = x + self.drop(self.self_out(rearrange(a, "b h t d -> b t (h d)")))
        q = split_heads(self.cross_q(self.norm2(x)), self.heads)
        a = grouped_cross_attention(q, *kv, memory_mask, p)
        x = x + self.drop(self.cross_out(rearrange(a, "b h t d -> b t (h d)")))
        return x + self.drop(self.ff(self.norm3(x)))


def grouped_cross_attention(
    q: Tensor, k: Tensor, v: Tensor, memory_mask: Tensor, p: float
) -> Tensor:
    """Attention of q (R, h, T, d) over k, v (G, h, S, d) with mask (G, S) -> (R, h, T, d), where the
    R rows come in G blocks of R / G rows that share one key/value row: the block's R / G x T
    positions become one attention call over it (no position attends to another, so nothing leaks),
    and no key or value is copied per row."""
    rows, groups = q.shape[0], k.shape[0]
    mask = memory_mask[:, None, None, :]
    if rows == groups:  # a row per copy (training, per-row copies, no rows at all)
        return F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    if not groups or rows % groups:
        raise ValueError(f"{rows} query rows cannot be grouped over {groups} key/value rows")
    per_group = rows // groups
    q = rearrange(q, "(g r) h t d -> g h (r t) d", r=per_group)
    a = F.scaled_dot_product_attention(q, k, v, attn_mask=mask, dropout_p=p)
    return rearrange(a, "g h (r t) d -> (g r) h t d", r=per_group)


def load_encoder(config: Any) -> nn.Module:
    """The frozen BERT encoder of a PromptDSI config: randomly initialised from ``encoder_config``
    (seeded; for tests), else loaded offline from ``encoder_path`` or the packaged MiniLM."""
    from transformers import AutoModel, BertConfig, BertModel

    if config.encoder_config is not None:
        with seeded_cpu_rng(config.encoder_seed):
            return BertModel(BertConfig(**config.encoder_config), add_pooling_layer=False)
    path = config.encoder_path or str(default_encoder_path())
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    hide_weight_loading_bar()
    try:
        return AutoModel.from_pretrained(path, local_files_only=True)
    except model_load_errors() as e:
        raise SemidError(
            f"cannot load the PromptDSI encoder from {path}: {e}; pass a local model folder"
        ) from None


def default_encoder_path() -> Path:
    """Folder of the packaged sentence encoder (all-MiniLM-L6-v2), the default PromptDSI encoder."""
    from semid.encoders import default_model_path

    return default_model_path()


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x (B, T, H) over positions where mask (B, T) is 1 -> (B, H)."""
    m = mask.to(x.dtype)[..., None]
    return (x * m).sum(1) / m.sum(1).clamp(min=1)
