"""``voken``: images to a short sequence of visual tokens aligned with text (AVG, Li et al. 2024,
"Revolutionizing Text-to-Image Retrieval as Autoregressive Token-to-Voken Generation").

An RQ-VAE over image features (MLP encoder, residual codebooks, MLP decoder, reconstruction
loss, so the vokens keep the image's visual information) plus an alignment loss: a linear head
maps the quantized representation to the text-embedding space and is pulled towards the
MiniLM embedding of the image's caption or class text. The loss is applied to every prefix of
the code sequence (level 1, levels 1-2, ...), so the first vokens already carry the semantics a
text query asks for, which is what a beam search decides first.

Spec options (beyond ``rqvae``'s ``latent``, ``hidden``, ``beta``, ``estimator``): ``align``
(weight of the alignment loss, 1.0). Without text embeddings, ``fit`` trains a plain RQ-VAE.
Unique IDs come from the index's collision strategy (``SemanticIDs.from_codes``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semid.errors import SemidError
from semid.quantization import QuantizerSpec, register_quantizer
from semid.quantizers.rqvae import RQVAE, TrainConfig

# Image collections are large (60k Fashion-MNIST images): fewer, bigger steps than rqvae's defaults.
DEFAULT_TRAIN_CONFIG = TrainConfig(epochs=20, batch_size=512, patience=3)


class _FirstColumns(nn.Module):
    """Keeps the first ``n`` columns: training rows carry the text targets after the features."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        return x[:, : self.n]


@register_quantizer("voken")
class VokenQuantizer(RQVAE):
    """RQ-VAE on image features (N, D) with a text-alignment loss on every code prefix."""

    OPTIONS = (*RQVAE.OPTIONS, "align")

    def __init__(
        self, spec: QuantizerSpec, dim: int | None = None, text_dim: int | None = None
    ) -> None:
        super().__init__(spec, None)
        self.align_weight = spec.option("align", 1.0, float)
        if self.align_weight < 0:
            raise SemidError(f"option align={self.align_weight} in {spec} must be >= 0")
        self.text_dim = text_dim
        self.align_head: nn.Linear | None = None
        if dim is not None:
            self.build(dim)

    def extra_config(self) -> dict[str, Any]:
        """``text_dim`` (width of the text embeddings aligned to; None if fitted without text)."""
        return {"text_dim": self.text_dim}

    def _build(self, dim: int) -> None:
        super()._build(dim)
        self.encoder = nn.Sequential(_FirstColumns(dim), *self.encoder)
        self._build_head()

    def _build_head(self) -> None:
        if self.text_dim is not None and self.align_head is None:
            self.align_head = nn.Linear(self.latent_dim, self.text_dim)

    def fit(
        self,
        x: Tensor,
        *,
        text_embeddings: Tensor | None = None,
        config: TrainConfig | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> VokenQuantizer:
        """Train on image features x (N, D) aligned to text_embeddings (N, T), one text per image;
        other keywords override `TrainConfig` fields (default `DEFAULT_TRAIN_CONFIG`)."""
        if text_embeddings is not None:
            t = torch.as_tensor(text_embeddings).float()
            if t.ndim != 2 or len(t) != len(x):
                raise SemidError(
                    f"text_embeddings must be (N, T) with one row per image (N = {len(x)}), got {tuple(t.shape)}"
                )
            if self.text_dim is not None and t.shape[1] != self.text_dim:
                raise SemidError(
                    f"text embeddings have width {t.shape[1]}, this quantizer aligns to {self.text_dim}"
                )
            self.text_dim = t.shape[1]
            if self.dim is not None:
                self._build_head()
            kwargs["text_embeddings"] = t
        config = config or DEFAULT_TRAIN_CONFIG
        super().fit(x, config=config, checkpoint_dir=checkpoint_dir, progress=progress, **kwargs)
        return self

    def _fit_inputs(
        self, x: Tensor, text_embeddings: Tensor | None = None, **kwargs: Any
    ) -> Tensor:
        """Normalised features (N, D), followed by the text targets (N, T) when given."""
        inputs = super()._fit_inputs(x, **kwargs)
        if text_embeddings is None:
            return inputs
        return torch.cat([inputs, F.normalize(text_embeddings, dim=-1)], dim=1)

    def _losses(self, inputs: Tensor) -> tuple[Tensor, Tensor, Any]:
        """Total loss, the selection objective (reconstruction + weighted alignment), the quantization."""
        x, text = inputs[:, : self.dim], inputs[:, self.dim :]
        z = self.encoder(x)
        q = self.codebooks(z, self.estimator)
        recon = (self.decoder(q.z_q) - x).pow(2).sum(-1).mean()
        total = recon + q.codebook_loss + self.beta * q.commitment_loss
        objective = recon
        if text.shape[1] and self.align_head is not None and self.align_weight > 0:
            align = self.alignment_loss(z, q.codes, text)
            total = total + self.align_weight * align
            objective = recon + self.align_weight * align
        return total, objective, q

    def prefix_representations(self, z: Tensor, codes: Tensor) -> Tensor:
        """Quantized representation of every code prefix (N, L, latent): cumulative code sums.

        The forward value is the codes' sum; gradients reach both the codebooks and (straight
        through) the encoder latent z (N, latent)."""
        levels = torch.arange(self.levels, device=codes.device)
        chosen = self.codebooks.codebooks[
            levels, codes
        ]  # (N, L, latent), differentiable in the codes
        return chosen.cumsum(1) + (z - z.detach())[:, None]

    def alignment_loss(self, z: Tensor, codes: Tensor, text: Tensor) -> Tensor:
        """Mean cosine distance between each prefix's projection and its text (N, T) target."""
        projected = self.align_head(self.prefix_representations(z, codes))  # (N, L, T)
        return (1 - F.cosine_similarity(projected, text[:, None], dim=-1)).mean()

    @torch.no_grad()
    def text_distance(self, x: Tensor, text_embeddings: Tensor) -> Tensor:
        """Cosine distance (N,) between each image's full quantized representation, projected to
        text space, and its text embedding (N, T)."""
        self.check_fitted()
        if self.align_head is None:
            raise SemidError(f"{self.spec} was fitted without text embeddings: it has no text head")
        self.eval()
        z = self._latents(self._model_inputs(self.check_input(x)))
        full = self.prefix_representations(z, self.codebooks.encode(z))[:, -1]
        return 1 - F.cosine_similarity(
            self.align_head(full), torch.as_tensor(text_embeddings).float(), dim=-1
        )

    def _reset_weights(self, seed: int) -> None:
        super()._reset_weights(seed)
        if self.align_head is not None:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed + 1)
                self.align_head.reset_parameters()
