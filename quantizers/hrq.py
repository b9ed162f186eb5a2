"""``hrq``: hyperbolic residual quantization (Piękos, Kayal & Karatzoglou 2025).

An MLP maps inputs into the Poincaré ball (exp map at the origin, tangent norm clipped); each
level assigns the nearest code by hyperbolic distance and passes on the Möbius residual
(-code) ⊕ x; the codes recompose by Möbius addition, e_1 ⊕ (e_2 ⊕ ...). Codebooks are
``geoopt.ManifoldParameter``s trained with ``RiemannianAdam``. With ``decoder=1`` (default, the
VAE-style variant) an MLP maps the quantized point back to input space and the reconstruction
loss trains the embedding; ``fit(x, pairs=...)`` adds the ranking loss of Nickel & Kiela (2017)
on (descendant, ancestor) pairs, which is how a known hierarchy is imposed.

Spec options: ``c`` (curvature, 1.0; c=0 is the Euclidean limit of the same code, the fair
baseline), ``learn_c`` (1: c is a trained parameter starting at ``c``; 0 by default), ``latent`` (32), ``hidden`` (encoder widths, ``256``; the decoder mirrors them),
``beta`` (commitment weight, 0.25), ``clip`` (tangent-norm bound, 2.0), ``decoder`` (1 or 0),
``net`` (``mlp``: a Euclidean MLP whose output is mapped into the ball by exp_0, the default;
``hnn``: hyperbolic layers, Möbius matrix products and Möbius bias additions, on exp_0 of the
input, so the embedding network itself is hyperbolic; both are the same Euclidean MLP at c=0).
Training knobs are in `HRQTrainConfig`, overridable as keywords of ``fit``; with ``patience`` set,
training stops early on a validation loss (the ranking loss of ``val_pairs`` if given, else the
quantization/reconstruction loss of held-out items) and keeps the best epoch (``fit_summary`` has the curves).

Geometry, end to end: with ``net=hnn`` inputs enter the ball by exp_0 and every encoder layer is
hyperbolic (with ``net=mlp`` the encoder's output is mapped by exp_0); residuals are Möbius differences (-e) ⊕ r; codes are assigned
and trained by hyperbolic distance; the decoder maps the quantized point back and leaves the ball by
log_0 (after its hyperbolic layers with ``hnn``, before its Euclidean ones with ``mlp``). Only the codebook initialisation (k-means on log_0 of the residuals) uses tangent space.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import geoopt
import torch
from torch import Tensor, nn

from semid.determinism import plain_torchscript, repeatable
from semid.early_stopping import EarlyStopping
from semid.errors import SemidError
from semid.hierarchy import check_pairs, is_pair, pair_keys, ranking_loss
from semid.kmeans import kmeans
from semid.layers import reset_seeded_
from semid.progress import progress_bar
from semid.quantization import (
    Quantizer,
    QuantizerSpec,
    as_embeddings,
    check_finite_loss,
    checked_rows,
    fits_on_the_cpu,
    held_out_count,
    register_quantizer,
    with_train_overrides,
)
from semid.quantizers import hyperbolic as hb
from semid.quantizers.residual import code_usage
from semid.quantizers.rqvae import mlp

# fmt: off
OPTIONS = {"c": 1.0, "learn_c": 0, "latent": 32, "hidden": "256", "beta": 0.25, "clip": 2.0,
           "decoder": 1, "net": "mlp"}
# fmt: on


def _switch(spec: QuantizerSpec, key: str) -> bool:
    """An on/off option of ``spec`` (1 or 0); SemidError for any other value."""
    value = spec.option(key, OPTIONS[key], int)
    if value not in (0, 1):
        raise SemidError(f"bad option {key}={value} in {spec}: use {key}=1 or {key}=0")
    return bool(value)


@dataclass
class HRQTrainConfig:
    """How ``hrq`` is fitted; every field can be overridden as a keyword of ``fit``."""

    epochs: int = 50
    batch_size: int = 256
    lr: float = 1e-3  # encoder, decoder and codebooks (Riemannian Adam)
    hierarchy_weight: float = 1.0  # weight of the pair ranking loss (only with pairs)
    pair_batch: int = 256  # (descendant, ancestor) pairs per step
    negatives: int = 256  # random items shared by the step's pairs as negatives
    reset_dead_until: float = 0.8  # re-seed unused codes each epoch until this fraction of epochs
    init_batch: int = 8192  # items whose first embeddings initialise the codebooks by k-means
    patience: int | None = None  # epochs without a better validation loss before stopping
    # items held out of the quantization loss for validation (with patience)
    val_fraction: float = 0.1
    val_negatives: int = 1024  # fixed random negatives of the validation ranking loss
    seed: int = 0

    def with_overrides(self, overrides: dict[str, Any]) -> HRQTrainConfig:
        """A copy with `overrides` applied; unknown names and values out of range raise SemidError."""
        return with_train_overrides(self, overrides, ("pairs", "val_pairs", "progress"))


@register_quantizer("hrq")
class HyperbolicRQ(Quantizer):
    """x (N, D) -> ball point (N, latent) -> L Möbius-residual codes -> [decoder] -> (N, D)."""

    def __init__(self, spec: QuantizerSpec, dim: int | None = None) -> None:
        spec.check_options(list(OPTIONS))
        self.c = spec.option("c", OPTIONS["c"], float)
        self.latent_dim = spec.option("latent", OPTIONS["latent"], int)
        self.beta = spec.option("beta", OPTIONS["beta"], float)
        self.clip = spec.option("clip", OPTIONS["clip"], float)
        self.has_decoder = _switch(spec, "decoder")
        self.learn_c = _switch(spec, "learn_c")
        self.net = spec.option("net", OPTIONS["net"])
        if self.net not in ("mlp", "hnn"):
            raise SemidError(f"bad option net={self.net!r} in {spec}: use net=mlp or net=hnn")
        if self.learn_c and self.c == 0:
            raise SemidError(f"bad options in {spec}: a learned curvature needs a start c > 0")
        if self.c < 0 or self.latent_dim < 1 or self.beta < 0 or self.clip <= 0:
            raise SemidError(
                f"bad options in {spec}: need c >= 0, latent >= 1, beta >= 0, clip > 0"
            )
        self.hidden = spec.widths("hidden", OPTIONS["hidden"])
        super().__init__(spec, None)
        self.ball = hb.poincare_ball(self.c, learnable=self.learn_c)
        self.fit_summary: dict[str, Any] = {}
        if dim is not None:
            self.build(dim)

    def _build(self, dim: int) -> None:
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("scale", torch.ones(()))
        net = mlp if self.net == "mlp" else lambda widths: hb.HyperbolicMLP(self.ball, widths)
        self.encoder = net([dim, *self.hidden, self.latent_dim])
        self.decoder = (
            net([self.latent_dim, *reversed(self.hidden), dim]) if self.has_decoder else None
        )
        # Small random codes near the origin; fit replaces them by k-means centroids.
        init = torch.randn(self.levels, self.spec.codebook_size, self.latent_dim) * 1e-3
        self.codebooks = geoopt.ManifoldParameter(init, manifold=self.ball)  # (L, K, latent)

    # --- the geometry of one pass ---

    @plain_torchscript()
    def embed(self, x: Tensor) -> Tensor:
        """Ball points (N, latent) of raw inputs x (N, D) (no gradient, eval mode)."""
        self.check_fitted()
        x = self.check_input(x, empty_ok=True).to(self.mean.device)
        self.eval()
        with torch.no_grad():
            return torch.cat(
                [self._embed((chunk - self.mean) / self.scale) for chunk in x.split(8192)]
            )

    def _embed(self, inputs: Tensor) -> Tensor:
        if self.net == "mlp":
            return hb.to_ball(self.ball, self.encoder(inputs), self.clip)
        out = self.encoder(hb.to_ball(self.ball, inputs))  # exp_0 in, hyperbolic layers
        return hb.to_ball(self.ball, hb.to_tangent(self.ball, out), self.clip)

    def _decode_point(self, z: Tensor) -> Tensor:
        """Input-space vectors (N, D) (normalised) of ball points z (N, latent): log_0 at the exit."""
        if self.net == "mlp":
            return self.decoder(hb.to_tangent(self.ball, z))
        return hb.to_tangent(self.ball, self.decoder(z))

    def _quantize(self, z: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Codes (N, L), quantized points (N, latent), codebook and commitment losses of z (N, latent)."""
        residual, codes, chosen = z, [], []
        codebook_loss = commitment_loss = z.new_zeros(())
        for book in self.codebooks:
            if self.learn_c:  # the ball moves with c: keep the codes inside it
                book = hb.project(self.ball, book)
            idx = hb.nearest_code(self.ball, residual.detach(), book.detach())
            e = book[idx]
            codebook_loss = (
                codebook_loss + hb.distance(self.ball, e, residual.detach()).pow(2).mean()
            )
            commitment_loss = (
                commitment_loss + hb.distance(self.ball, residual, e.detach()).pow(2).mean()
            )
            codes.append(idx)
            chosen.append(e.detach())
            residual = hb.mobius_residual(self.ball, residual, e.detach())
        z_q = hb.mobius_chain(self.ball, torch.stack(chosen, -2))
        return torch.stack(codes, -1), z_q, codebook_loss, commitment_loss

    def _residuals(self, z: Tensor) -> Tensor:
        """Inputs (N, L, latent) of each level for ball points z (N, latent)."""
        out, residual = [], z
        for book in self.codebooks:
            out.append(residual)
            residual = hb.mobius_residual(
                self.ball, residual, book[hb.nearest_code(self.ball, residual, book)]
            )
        return torch.stack(out, 1)

    # --- the protocol ---

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes (N, L) int64 of x (N, D), greedy by hyperbolic distance level by level."""
        return self.encode_latent(self.embed(x))

    @plain_torchscript()
    @torch.no_grad()
    def encode_latent(self, z: Tensor) -> Tensor:
        """Codes (N, L) int64 of ball points z (N, latent), bypassing the encoder (points off the
        ball are projected onto it)."""
        self.check_fitted()
        z = checked_rows(as_embeddings(z), self.latent_dim, "ball points", empty_ok=True)
        z = hb.project(self.ball, z.to(self.codebooks.device))
        return torch.cat([self._quantize(chunk)[0] for chunk in z.split(8192)])

    @plain_torchscript()
    @torch.no_grad()
    def decode_latent(self, codes: Tensor) -> Tensor:
        """Ball points (N, latent) e_1 ⊕ (e_2 ⊕ ...) of codes (N, L)."""
        self.check_fitted()
        codes = self.check_codes(codes, self.codebooks.device)
        levels = torch.arange(self.levels, device=codes.device)
        return hb.mobius_chain(self.ball, self.codebooks.detach()[levels, codes])

    @property
    def can_decode(self) -> bool:
        """Whether ``decode`` maps back to input space: with ``decoder=1`` only."""
        return self.has_decoder

    @plain_torchscript()
    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Reconstructions (N, D) of codes (N, L) through the decoder (needs ``decoder=1``)."""
        self.check_fitted()
        if self.decoder is None:
            raise SemidError(
                f"{self.spec} has no decoder back to input space; use decode_latent, or decoder=1"
            )
        self.eval()
        return self._decode_point(self.decode_latent(codes)) * self.scale + self.mean

    @plain_torchscript()
    @torch.no_grad()
    def last_level_distances(self, x: Tensor) -> Tensor:
        """Hyperbolic distances (N, K) from each item's last-level residual to every last-level code."""
        residual = self._residuals(self.embed(x))[:, -1]
        return hb.pairwise_distance(self.ball, residual, self.codebooks.detach()[-1])

    def extra_config(self) -> dict[str, Any]:
        """Nothing beyond the spec: every option is in it."""
        return {}

    # --- training ---

    @fits_on_the_cpu
    def fit(
        self,
        x: Tensor,
        *,
        pairs: Tensor | None = None,
        val_pairs: Tensor | None = None,
        progress: bool = True,
        **overrides: Any,
    ) -> HyperbolicRQ:
        """Train on x (N, D); `pairs` (P, 2) are (descendant, ancestor) rows of x for the hierarchy loss.

        `val_pairs` (held-out pairs of the same form) join the validation loss when ``patience`` is
        set. Keywords override `HRQTrainConfig` fields (e.g. ``epochs=5``)."""
        cfg = HRQTrainConfig().with_overrides(overrides)
        x = self.check_input(x)
        self.build(x.shape[1])
        pairs, val_pairs = check_pairs(pairs, len(x)), check_pairs(val_pairs, len(x))
        if pairs is None and self.decoder is None:
            raise SemidError(
                f"{self.spec} has no decoder, so it learns only from pairs; pass pairs=... or use decoder=1"
            )
        self.mean.copy_(x.mean(0))
        inputs = torch.sub(x, self.mean)
        self.scale.copy_(inputs.pow(2).sum(-1).mean().sqrt().clamp_min(1e-12))
        inputs.div_(self.scale)  # (x - mean) / scale, in place
        with repeatable():
            self._train(inputs, pairs, val_pairs, cfg, progress)
        self.initted.fill_(True)
        return self

    def _losses(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """Quantization (+ reconstruction) loss, the reconstruction alone, and codes (B, L) of a batch."""
        z = self._embed(inputs)
        codes, z_q, codebook_loss, commitment_loss = self._quantize(z)
        loss = codebook_loss + self.beta * commitment_loss
        recon = z.new_zeros(())
        if self.decoder is not None:
            z_st = z + (z_q - z).detach()  # straight-through; the value is a ball point
            recon = (self._decode_point(z_st) - inputs).pow(2).sum(-1).mean()
            loss = loss + recon
        return loss, recon, codes

    def _hierarchy_loss(self, inputs: Tensor, batch: Tensor, negs: Tensor, keys: Tensor) -> Tensor:
        """Ranking loss: each descendant's ancestor (batch (B, 2)) against negatives (M,) shared by all."""
        n = inputs.shape[0]
        # One encoder pass for descendants, ancestors and negatives.
        z = self._embed(inputs[torch.cat([batch[:, 0], batch[:, 1], negs])])
        z_u, z_v, z_n = z.split([len(batch), len(batch), len(negs)])
        pos = hb.distance(self.ball, z_u, z_v)  # (B,)
        neg = hb.pairwise_distance(self.ball, z_u, z_n)  # (B, M)
        # A "negative" that is the item itself or one of its ancestors is not a negative.
        u = batch[:, :1]
        invalid = is_pair(keys, u, negs[None, :], n) | (u == negs[None, :])
        return ranking_loss(pos, neg, invalid)

    @torch.no_grad()
    def _init_codebooks(self, inputs: Tensor, seed: int) -> None:
        """k-means per level on the tangent vectors at the origin of the first residuals."""
        residual = self._embed(inputs)
        for level in range(self.levels):
            centroids = kmeans(
                hb.to_tangent(self.ball, residual), self.spec.codebook_size, seed=seed + level
            )
            self.codebooks.data[level] = hb.to_ball(self.ball, centroids.to(residual), self.clip)
            book = self.codebooks.data[level]
            residual = hb.mobius_residual(
                self.ball, residual, book[hb.nearest_code(self.ball, residual, book)]
            )

    @torch.no_grad()
    def _reset_dead_codes(self, inputs: Tensor, usage: Tensor, gen: torch.Generator) -> int:
        """Re-seed codes unused this epoch (usage (L, K) == 0) at residuals far from their code."""
        dead_levels = [lvl for lvl in range(self.levels) if (usage[lvl] == 0).any()]
        if not dead_levels:
            return 0
        self.eval()
        residuals = self._residuals(torch.cat([self._embed(chunk) for chunk in inputs.split(8192)]))
        revived = 0
        for level in dead_levels:
            dead = (usage[level] == 0).nonzero().squeeze(-1)
            r = residuals[:, level]
            err = hb.pairwise_distance(self.ball, r, self.codebooks.data[level]).min(-1).values
            weights = err.clamp_min(1e-12) if float(err.sum()) > 0 else torch.ones_like(err)
            pick = torch.multinomial(
                weights, dead.numel(), replacement=dead.numel() > len(r), generator=gen
            )
            self.codebooks.data[level, dead] = r[pick]
            revived += dead.numel()
        return revived

    @torch.no_grad()
    def _val_loss(self, inputs: Tensor, val_items: Tensor, val: dict | None) -> float:
        """Validation loss (eval mode): the ranking loss of held-out pairs with fixed negatives if
        there are any, else the quantization (+ reconstruction) loss of held-out items.

        With pairs the quantization loss is left out: it grows as the ranking loss spreads the
        points apart, so the sum would stop training before the hierarchy is learnt."""
        self.eval()
        if val is None:
            return float(self._losses(inputs[val_items])[0])
        chunks = val["pairs"].split(4096)
        total = sum(
            float(self._hierarchy_loss(inputs, b, val["negs"], val["keys"])) * len(b)
            for b in chunks
        )
        return total / len(val["pairs"])

    def _train(
        self,
        inputs: Tensor,
        pairs: Tensor | None,
        val_pairs: Tensor | None,
        cfg: HRQTrainConfig,
        progress: bool,
    ) -> None:
        gen = torch.Generator().manual_seed(cfg.seed)
        reset_seeded_(self.modules(), cfg.seed, nn.Linear)
        n = inputs.shape[0]
        order = torch.randperm(n, generator=gen)
        val = None
        if val_pairs is not None and len(val_pairs) and cfg.patience is not None:
            negs = torch.randint(n, (cfg.val_negatives,), generator=gen)
            all_pairs = val_pairs if pairs is None else torch.cat([pairs, val_pairs])
            val = {"pairs": val_pairs, "negs": negs, "keys": pair_keys(all_pairs, n)}
        # Items are held out only where they are the validation data (no validation pairs).
        n_val = (
            held_out_count(n, cfg.val_fraction) if cfg.patience is not None and val is None else 0
        )
        val_items, train_items = order[:n_val], order[n_val:]
        self._init_codebooks(inputs[train_items[: cfg.init_batch]], cfg.seed)
        keys = None if pairs is None else pair_keys(pairs, n)
        opt = geoopt.optim.RiemannianAdam(self.parameters(), lr=cfg.lr)
        stopper = EarlyStopping(cfg.patience)
        train_curve: list[float] = []
        bar = progress_bar(
            range(cfg.epochs), disable=not progress, desc=f"fit {self.spec}", unit="epoch"
        )
        for epoch in bar:
            self.train()
            usage = torch.zeros(self.levels, self.spec.codebook_size, dtype=torch.long)
            total, steps = 0.0, 0
            for idx in train_items[torch.randperm(len(train_items), generator=gen)].split(
                cfg.batch_size
            ):
                loss, _, codes = self._losses(inputs[idx])
                if pairs is not None and len(pairs):
                    batch = pairs[torch.randint(len(pairs), (cfg.pair_batch,), generator=gen)]
                    negs = torch.randint(n, (cfg.negatives,), generator=gen)
                    loss = loss + cfg.hierarchy_weight * self._hierarchy_loss(
                        inputs, batch, negs, keys
                    )
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                usage += code_usage(codes, self.spec.codebook_size)
                total, steps = total + loss.item(), steps + 1
            train_curve.append(total / max(steps, 1))
            check_finite_loss(train_curve[-1], self.spec, epoch, cfg.lr)
            revived = 0
            if epoch < cfg.reset_dead_until * cfg.epochs:
                revived = self._reset_dead_codes(inputs[train_items], usage, gen)
            stop = False
            if cfg.patience is not None:
                # too few items to hold some out: the training items validate, as in rqvae
                checked = val_items if len(val_items) else train_items
                stop = stopper.update(self._val_loss(inputs, checked, val), self)
            bar.set_postfix(loss=f"{train_curve[-1]:.4f}", revived=revived, refresh=False)
            if stop:
                break
        bar.close()
        stopper.restore(self)
        self.fit_summary = {
            "epochs": len(train_curve),
            "best_epoch": stopper.best_epoch + 1,
            "stopped_early": stopper.stopped_early,
            "train_loss": train_curve,
            "val_loss": stopper.history,
            "c": float(self.ball.c.detach()),
        }
        self.eval()


__all__ = ["HRQTrainConfig", "HyperbolicRQ"]
