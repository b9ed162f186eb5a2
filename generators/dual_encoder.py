"""The dual-encoder baseline of text-to-image retrieval: a text tower and an image tower trained
contrastively, searched by exact inner product (faiss). AVG must beat it with the same features."""

from __future__ import annotations

from dataclasses import dataclass

import faiss
import torch
import torch.nn.functional as F
from torch import Tensor, nn


def contrastive_loss(
    queries: Tensor, images: Tensor, positive: Tensor, temperature: float
) -> Tensor:
    """Multi-positive InfoNCE: unit queries (B, d) vs unit images (B, d); positive (B, B) bool.

    Per query, -log of the softmax mass on its positives (same class counts as positive, so
    in-batch images of the query's class are not pushed away)."""
    log_prob = (queries @ images.T / temperature).log_softmax(-1)
    return -(log_prob.masked_fill(~positive, float("-inf")).logsumexp(-1)).mean()


@dataclass
class DualEncoderConfig:
    """Towers of the dual encoder: an MLP over frozen text embeddings, an MLP over image features."""

    query_dim: int = 384
    image_dim: int = 64
    d_model: int = 128
    temperature: float = 0.1


class DualEncoder(nn.Module):
    """Text tower (frozen MiniLM embedding -> MLP) and image tower (features -> MLP), contrastive."""

    def __init__(self, config: DualEncoderConfig) -> None:
        super().__init__()
        self.config = config
        d = config.d_model
        self.text_tower = nn.Sequential(nn.Linear(config.query_dim, d), nn.GELU(), nn.Linear(d, d))
        self.image_tower = nn.Sequential(nn.Linear(config.image_dim, d), nn.GELU(), nn.Linear(d, d))

    def embed_queries(self, queries: Tensor) -> Tensor:
        """Unit vectors (B, d) of query embeddings (B, query_dim)."""
        return F.normalize(self.text_tower(queries.float()), dim=-1)

    def embed_images(self, features: Tensor) -> Tensor:
        """Unit vectors (N, d) of image features (N, image_dim)."""
        return F.normalize(self.image_tower(features.float()), dim=-1)

    def forward(self, batch: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """Contrastive loss over in-batch images (same class = positive) and the similarities (B, B)."""
        q, i = self.embed_queries(batch["query"]), self.embed_images(batch["image"])
        positive = batch["labels"][:, None] == batch["labels"][None, :]
        return contrastive_loss(q, i, positive, self.config.temperature), q @ i.T


@torch.no_grad()
def dense_search(model: DualEncoder, queries: Tensor, image_features: Tensor, k: int) -> Tensor:
    """Top-k image rows (Q, k) by exact inner product (faiss IndexFlatIP)."""
    images = model.embed_images(image_features).numpy()
    index = faiss.IndexFlatIP(images.shape[1])
    index.add(images)
    _, rows = index.search(model.embed_queries(queries).numpy(), k)
    return torch.from_numpy(rows).long()
