"""``voken``: images to a short sequence of visual tokens aligned with text (AVG, Li et al. 2024,
"Revolutionizing Text-to-Image Retrieval as Autoregressive Token-to-Voken Generation").

An RQ-VAE over image features (MLP encoder, residual codebooks, MLP decoder, reconstruction
loss, so the vokens keep the image's visual information) plus an alignment loss: a linear head
maps the quantized representation to the text-embedding space and is pulled towards the
MiniLM embedding of the image's caption or class text. The loss is applied to every prefix of
the code sequence (level 1, levels 1-2, ...), so the first vokens already carry the semantics a
text query asks for, which is what a beam search decides first.

Text-led latent (the default when ``fit`` gets text embeddings): the alignment loss alone does
not make the first level follow the text on every collection (the visual variance of the
features can dominate it). So a small MLP is first trained to project image features into the
text space, contrastively against the (deduplicated, centred) texts, like a dual encoder's image
tower; the latent the codebooks quantize is then ``[proj * projection(x), unit(encoder(x))]``.
With ``proj`` well above 1, two images of different texts are much farther apart than any two
visual latents, so the first level's clusters are the text side's and the residual levels carry
the visual detail. Encoding new images needs only their features: the projection is saved with
the quantizer.

Spec options (beyond ``rqvae``'s ``latent``, ``hidden``, ``beta``, ``estimator``): ``align``
(weight of the alignment loss, 1.0), ``proj`` (weight of the text-side projection in the latent,
4.0; ``proj=0`` is the earlier voken, led by the alignment loss alone). Without text embeddings,
``fit`` trains a plain RQ-VAE. Unique IDs come from the index's collision strategy
(``SemanticIDs.from_codes``).
"""

from __future__ import annotations

import os
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semid.errors import SemidError
from semid.layers import reset_seeded_
from semid.quantization import (
    QuantizerSpec,
    as_embeddings,
    checked_rows,
    fits_on_the_cpu,
    register_quantizer,
)
from semid.quantizers.rqvae import RQVAE, TrainConfig, mlp
from semid.wording import counted

# Image collections range from 1k to 60k images: a few epochs of big batches on large ones, at
# least `min_steps` batches on small ones (early stopping waits for them).
DEFAULT_TRAIN_CONFIG = TrainConfig(epochs=20, batch_size=512, patience=3, min_steps=300)
PROJECTION_HIDDEN = 256
PROJECTION_EPOCHS = 3  # of the projection's contrastive training, at least PROJECTION_MIN_STEPS
PROJECTION_MIN_STEPS = 1000
PROJECTION_BATCH = 256
PROJECTION_TEMPERATURE = 0.1  # as the dual encoder's


class _FirstColumns(nn.Module):
    """Keeps the first ``n`` columns: training rows carry the text targets after the features."""

    def __init__(self, n: int) -> None:
        super().__init__()
        self.n = n

    def forward(self, x: Tensor) -> Tensor:
        return x[:, : self.n]


class TextProjection(nn.Module):
    """MLP image features (N, D) -> unit vectors (N, T) in the centred text space."""

    def __init__(self, dim: int, text_dim: int, hidden: int = PROJECTION_HIDDEN) -> None:
        super().__init__()
        self.net = mlp([dim, hidden, text_dim])

    def forward(self, x: Tensor) -> Tensor:
        """Unit vectors (N, T) for image features x (N, D)."""
        return F.normalize(self.net(x), dim=-1)

    def fit_(self, x: Tensor, texts: Tensor, seed: int) -> TextProjection:
        """Contrastive training on features x (N, D) against their texts (N, T): in-batch InfoNCE
        where rows of identical text are positives. Texts are deduplicated and centred first
        (their common direction says nothing about which image is which)."""
        unique, inverse = torch.unique(texts, dim=0, return_inverse=True)
        if len(unique) > 1:
            unique = unique - unique.mean(0)
        targets = F.normalize(unique, dim=-1)  # (U, T)
        gen = torch.Generator().manual_seed(seed)
        reset_seeded_(self.net, seed, nn.Linear)
        self.requires_grad_(True)
        opt = torch.optim.AdamW(self.parameters(), lr=2e-3, weight_decay=1e-4)
        per_epoch = -(-len(x) // PROJECTION_BATCH)
        steps = max(PROJECTION_EPOCHS * per_epoch, PROJECTION_MIN_STEPS)
        self.train()
        done = 0
        while done < steps:
            batches = torch.randperm(len(x), generator=gen).split(PROJECTION_BATCH)
            for idx in batches[: steps - done]:
                rows = inverse[idx]
                logits = self(x[idx]) @ targets[rows].T / PROJECTION_TEMPERATURE  # (B, B)
                # the dual encoder's multi-positive InfoNCE: same text = positive
                positive = rows[:, None] == rows[None, :]
                log_prob = logits.log_softmax(-1).masked_fill(~positive, float("-inf"))
                loss = -log_prob.logsumexp(-1).mean()
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
        self.eval()
        self.requires_grad_(False)  # frozen: the RQ-VAE that follows quantizes its output
        return self


class _TextLedEncoder(nn.Module):
    """Latent (N, T + latent) of model inputs (N, D[+T]): ``[weight * projection, unit visual latent]``."""

    def __init__(
        self, dim: int, projection: TextProjection, visual: nn.Sequential, weight: float
    ) -> None:
        super().__init__()
        self.dim, self.weight = dim, weight
        self.projection, self.visual = projection, visual

    def forward(self, inputs: Tensor) -> Tensor:
        x = inputs[:, : self.dim]
        return torch.cat(
            [self.weight * self.projection(x), F.normalize(self.visual(x), dim=-1)], -1
        )


@register_quantizer("voken")
class VokenQuantizer(RQVAE):
    """RQ-VAE on image features (N, D) with a text-alignment loss on every code prefix; with texts,
    a text-side projection leads the latent (module docstring)."""

    OPTIONS = (*RQVAE.OPTIONS, "align", "proj")
    FIT_INPUTS = ("text_embeddings",)

    def __init__(
        self,
        spec: QuantizerSpec,
        dim: int | None = None,
        text_dim: int | None = None,
        text_led: bool | None = None,
    ) -> None:
        super().__init__(spec, None)
        # saved configs say whether the latent is text-led; one with a text_dim but without that
        # key predates the text-led latent (it loads as the alignment-only voken it was)
        self._led = text_led if text_led is not None or text_dim is None else False
        self.align_weight = spec.option("align", 1.0, float)
        if self.align_weight < 0:
            raise SemidError(f"option align={self.align_weight} in {spec} must be >= 0")
        self.proj_weight = spec.option("proj", 4.0, float)
        if self.proj_weight < 0:
            raise SemidError(f"option proj={self.proj_weight} in {spec} must be >= 0")
        self.text_dim = text_dim
        self.align_head: nn.Linear | None = None
        if dim is not None:
            self.build(dim)

    @property
    def text_led(self) -> bool:
        """Whether the latent starts with the text-side projection (texts given and proj > 0)."""
        return self.text_dim is not None and self.proj_weight > 0 and self._led is not False

    def extra_config(self) -> dict[str, Any]:
        """``text_dim`` (width of the text embeddings aligned to; None if fitted without text) and
        ``text_led`` (whether the text-side projection leads the latent)."""
        return {"text_dim": self.text_dim, "text_led": self.text_led}

    def _build(self, dim: int) -> None:
        super()._build(dim)
        self.align_head = None
        if self.text_led:
            width = self.text_dim + self.latent_dim
            self.encoder = _TextLedEncoder(
                dim, TextProjection(dim, self.text_dim), self.encoder, self.proj_weight
            )
            self.decoder = mlp([width, *reversed(self.hidden), dim])
            self.codebooks = type(self.codebooks)(self.levels, self.spec.codebook_size, width)
        else:
            self.encoder = nn.Sequential(_FirstColumns(dim), *self.encoder)
        self._build_head()

    def _build_head(self) -> None:
        if self.text_dim is not None and self.align_head is None:
            width = self.latent_dim + (self.text_dim if self.text_led else 0)
            self.align_head = nn.Linear(width, self.text_dim)

    @fits_on_the_cpu
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
        other keywords override `TrainConfig` fields (default `DEFAULT_TRAIN_CONFIG`). Training
        runs at least ``min_steps`` batches whatever ``epochs`` says (small collections get more
        epochs), and the text projection at least its own floor of steps. Without
        text_embeddings it fits a plain RQ-VAE, whatever an earlier fit aligned to."""
        self.check_input(x)  # before any change: a refused fit leaves the quantizer as it was
        if text_embeddings is None and self.text_dim is not None:  # an earlier fit's texts
            self.text_dim, self._led = None, None
            if self.dim is not None:
                self.rebuild()
        if text_embeddings is not None:
            t = as_embeddings(text_embeddings).float()  # numbers, or one clear error
            if t.ndim != 2 or len(t) != len(x):
                raise SemidError(
                    f"text_embeddings must be (N, T) with one row per image (N = {len(x)}), got {tuple(t.shape)}"
                )
            if t.shape[1] == 0 or not torch.isfinite(t).all():
                raise SemidError(
                    "text_embeddings hold NaN or infinity (or no columns); clean them first"
                )
            if self.text_dim is not None and t.shape[1] != self.text_dim:
                raise SemidError(
                    f"text embeddings have width {t.shape[1]}, this quantizer aligns to {self.text_dim}"
                )
            rebuild = self.text_dim is None and self.dim is not None
            self.text_dim = t.shape[1]
            if rebuild:  # built for features alone: the latent's width changes with the texts
                self.rebuild()
            kwargs["text_embeddings"] = t
        config = config or DEFAULT_TRAIN_CONFIG
        super().fit(x, config=config, checkpoint_dir=checkpoint_dir, progress=progress, **kwargs)
        return self

    def _fit_inputs(self, x: Tensor, text_embeddings: Tensor | None = None) -> Tensor:
        """Normalised features (N, D), followed by the text targets (N, T) when given."""
        inputs = super()._fit_inputs(x)
        if text_embeddings is None:
            return inputs
        return torch.cat([inputs, F.normalize(text_embeddings, dim=-1)], dim=1)

    def _train(self, inputs: Tensor, cfg: TrainConfig, ckpt_dir, progress: bool) -> None:
        if self.text_led and inputs.shape[1] > self.dim:
            self.encoder.projection.fit_(inputs[:, : self.dim], inputs[:, self.dim :], cfg.seed)
        super()._train(inputs, cfg, ckpt_dir, progress)

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
        x = self.check_input(x)
        text = checked_rows(as_embeddings(text_embeddings), self.text_dim, "text embeddings")
        text = text.to(self.mean.device)
        if len(text) != len(x):
            raise SemidError(f"{counted(len(text), 'text embedding')} for "
                             f"{counted(len(x), 'image')}; give one text per image")  # fmt: skip
        self.eval()
        z = self._latents(self._model_inputs(x))
        full = self.prefix_representations(z, self.codebooks.encode(z))[:, -1]
        return 1 - F.cosine_similarity(self.align_head(full), text, dim=-1)

    @torch.no_grad()
    def text_projection(self, x: Tensor) -> Tensor:
        """Unit vectors (N, T) of image features x (N, D) in the centred text space (text-led only)."""
        self.check_fitted()
        if not self.text_led:
            raise SemidError(
                f"{self.spec} has no text-side projection (fitted without text, or proj=0)"
            )
        self.eval()
        return self.encoder.projection(self._model_inputs(self.check_input(x)))

    def _reset_weights(self, seed: int) -> None:
        # the same seeded sequence as rqvae's; the text-side projection is trained before, kept
        visual = self.encoder.visual if self.text_led else self.encoder
        reset_seeded_([*visual, *self.decoder], seed, nn.Linear)
        if self.align_head is not None:
            reset_seeded_([self.align_head], seed + 1)


__all__ = ["TextProjection", "VokenQuantizer"]
