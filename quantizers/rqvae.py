"""``rqvae``: the RQ-VAE of TIGER (Rajput et al. 2023): MLP encoder, residual codebooks, MLP decoder.

Spec options (saved with the model): ``latent`` (latent size, 32), ``hidden`` (encoder widths,
``256-128``; the decoder mirrors them), ``beta`` (commitment weight, 0.25), ``estimator``
(gradient through the quantizer: ``ste``, TIGER's straight-through estimator, the default, or
``rotation``, the rotation trick). Training knobs are in `TrainConfig`.

What makes the defaults work on sentence embeddings without tuning: inputs are centred and
scaled to unit mean squared norm (MiniLM vectors share a large common direction, which would
otherwise dominate the first level); codebooks start from k-means on the first latents; codes
left unused for an epoch are re-seeded where quantization error is largest; training stops on
the reconstruction loss of a held-out slice and keeps the best weights. Tried and not kept as
defaults on MiniLM embeddings of the ML-1M items (benchmarks/quantizers.py): the rotation
estimator (about as few collisions over 6 seeds, 12% higher reconstruction error) and a
uniformity term on the latents (first-level perplexity fell to ~160 of 256).
"""

from __future__ import annotations

import copy
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from semid.atomic import atomic_file, check_writable
from semid.determinism import repeatable
from semid.errors import SemidError
from semid.layers import reset_seeded_
from semid.progress import progress_bar
from semid.quantization import (
    Quantizer,
    QuantizerSpec,
    check_finite_loss,
    fits_on_the_cpu,
    held_out_count,
    register_quantizer,
    with_train_overrides,
)
from semid.quantizers.residual import ESTIMATORS, ResidualCodebooks, code_usage
from semid.training.checkpoints import DamagedCheckpointError, load_torch_file


@dataclass
class TrainConfig:
    """How a learned quantizer is fitted; every field can be overridden as a keyword of ``fit``."""

    epochs: int = 300  # upper bound; early stopping usually ends sooner
    batch_size: int = 512
    lr: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 20  # epochs without a better validation loss before stopping
    min_steps: int = 0  # optimizer steps before stopping is allowed: more epochs on small data
    val_fraction: float = 0.05  # seeded held-out slice; none below `min_val_items`
    min_val_items: int = 20
    reset_dead_every: int = 1  # epochs between dead-code re-seeding (0: never)
    reset_dead_until: float = 0.8  # fraction of `epochs` after which codes are left to settle
    init_batch: int = 8192  # rows of the first batch whose latents initialise the codebooks
    checkpoint_every: int = 10  # epochs between checkpoints when a checkpoint_dir is given
    seed: int = 0

    def with_overrides(self, overrides: dict[str, Any], inputs: Sequence[str] = ()) -> TrainConfig:
        """A copy with `overrides` applied; unknown names and values out of range raise SemidError
        (naming the fit keywords besides these fields, the family's ``inputs`` among them)."""
        return with_train_overrides(
            self, overrides, (*inputs, "config", "checkpoint_dir", "progress")
        )


def mlp(widths: list[int]) -> nn.Sequential:
    """Linear layers of the given widths with SiLU between them (none after the last)."""
    layers: list[nn.Module] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        layers.append(nn.Linear(a, b))
        if i < len(widths) - 2:
            layers.append(nn.SiLU())
    return nn.Sequential(*layers)


@register_quantizer("rqvae")
class RQVAE(Quantizer):
    """RQ-VAE: x (N, D) -> latent (N, latent) -> L residual codes -> reconstruction (N, D)."""

    checkpoint_name = "fit_checkpoint.pt"

    OPTIONS = ("latent", "hidden", "beta", "estimator")  # spec options this family accepts
    FIT_INPUTS: tuple[str, ...] = ()  # fit keywords that are data, not training options

    def __init__(self, spec: QuantizerSpec, dim: int | None = None) -> None:
        spec.check_options(self.OPTIONS)
        latent = spec.option("latent", 32, int)
        beta = spec.option("beta", 0.25, float)
        estimator = spec.option("estimator", "ste")
        if latent < 1:
            raise SemidError(f"option latent={latent} in {spec} must be a positive integer")
        if beta < 0:
            raise SemidError(f"option beta={beta} in {spec} must be >= 0")
        if estimator not in ESTIMATORS:
            raise SemidError(
                f"option estimator={estimator!r} in {spec}; choose one of {', '.join(ESTIMATORS)}"
            )
        hidden = spec.widths("hidden", "256-128")
        super().__init__(spec, None)
        self.latent_dim, self.hidden, self.beta = latent, hidden, beta
        self.estimator = ESTIMATORS[estimator]
        if dim is not None:
            self.build(dim)

    # --- hooks that graph_rqvae overrides: what the autoencoder sees and gives back ---

    def _model_dim(self, dim: int) -> int:
        """Width of the autoencoder's input for inputs of width `dim`."""
        return dim

    def _build(self, dim: int) -> None:
        model_dim = self._model_dim(dim)
        self.register_buffer("mean", torch.zeros(model_dim))
        self.register_buffer("scale", torch.ones(model_dim))  # per column, so blocks can differ
        self.encoder = mlp([model_dim, *self.hidden, self.latent_dim])
        self.decoder = mlp([self.latent_dim, *reversed(self.hidden), model_dim])
        self.codebooks = ResidualCodebooks(self.levels, self.spec.codebook_size, self.latent_dim)

    def _fit_inputs(self, x: Tensor) -> Tensor:
        """Set the input statistics from x (N, D) and return the model inputs (N, D_model)."""
        self.mean.copy_(x.mean(0))
        centered = torch.sub(x, self.mean)
        self.scale.fill_(float(centered.square_().sum(-1).mean().sqrt().clamp_min(1e-12)))
        del centered
        return self._model_inputs(x)

    def _model_inputs(self, x: Tensor) -> Tensor:
        """Model inputs (N, D_model), on the quantizer's device, of checked inputs x (N, D) on any
        (encoding CPU vectors with a quantizer on the GPU failed inside torch)."""
        inputs = torch.sub(x.to(self.mean.device), self.mean)  # (x - mean) / scale, in place
        return inputs.div_(self.scale)

    def _outputs(self, y: Tensor) -> Tensor:
        """Reconstructions (N, D) in input space from model outputs y (N, D_model)."""
        return y * self.scale + self.mean

    # --- the protocol ---

    @fits_on_the_cpu
    def fit(
        self,
        x: Tensor,
        *,
        config: TrainConfig | None = None,
        checkpoint_dir: str | os.PathLike | None = None,
        progress: bool = True,
        **kwargs: Any,
    ) -> RQVAE:
        """Train on x (N, D); keyword arguments override `TrainConfig` fields (e.g. ``epochs=50``).

        With `checkpoint_dir`, state is written there atomically every ``checkpoint_every`` epochs
        and an interrupted fit with the same data and config resumes from it. Afterwards
        ``fit_summary`` holds the epochs run and the best validation reconstruction loss."""
        cfg = (config or TrainConfig()).with_overrides(
            {k: v for k, v in kwargs.items() if k not in self.FIT_INPUTS}, self.FIT_INPUTS
        )
        x = self.check_input(x)
        self.build(x.shape[1])
        inputs = self._fit_inputs(x, **{k: v for k, v in kwargs.items() if k in self.FIT_INPUTS})
        with repeatable():
            self._train(
                inputs, cfg, Path(checkpoint_dir) if checkpoint_dir is not None else None, progress
            )
        self.initted.fill_(True)
        return self

    @torch.no_grad()
    def encode(self, x: Tensor) -> Tensor:
        """Codes (N, L) int64 of x (N, D)."""
        self.check_fitted()
        z = self._latents(self._model_inputs(self.check_input(x, empty_ok=True)))
        return self.codebooks.encode(z)

    @torch.no_grad()
    def decode(self, codes: Tensor) -> Tensor:
        """Reconstructions (N, D) of codes (N, L)."""
        self.check_fitted()
        codes = self.check_codes(codes, self.mean.device)
        self.eval()
        return self._outputs(self.decoder(self.codebooks.decode(codes)))

    @torch.no_grad()
    def last_level_distances(self, x: Tensor) -> Tensor:
        """Squared distances (N, K) from each item's last-level latent residual to every last-level code."""
        self.check_fitted()
        return self.codebooks.last_level_distances(
            self._latents(self._model_inputs(self.check_input(x, empty_ok=True)))
        )

    def _latents(self, inputs: Tensor) -> Tensor:
        self.eval()
        return torch.cat([self.encoder(chunk) for chunk in inputs.split(8192)])

    # --- training ---

    def _losses(self, inputs: Tensor) -> tuple[Tensor, Tensor, Any]:
        """Total loss, reconstruction loss (relative squared error per item) and the quantization."""
        q = self.codebooks(self.encoder(inputs), self.estimator)
        recon = (self.decoder(q.z_q) - inputs).pow(2).sum(-1).mean()
        return recon + q.codebook_loss + self.beta * q.commitment_loss, recon, q

    def _reset_weights(self, seed: int) -> None:
        reset_seeded_([*self.encoder, *self.decoder], seed, nn.Linear)

    def _train(
        self, inputs: Tensor, cfg: TrainConfig, ckpt_dir: Path | None, progress: bool
    ) -> None:
        if ckpt_dir is not None:  # before the first epoch, in the caller's words
            check_writable(ckpt_dir / self.checkpoint_name, "give a writable checkpoint_dir")
        gen = torch.Generator().manual_seed(cfg.seed)
        n = inputs.shape[0]
        perm = torch.randperm(n, generator=gen)
        n_val = held_out_count(n, cfg.val_fraction, cfg.min_val_items)
        # training rows are gathered a batch at a time (a copy of them all: 1x more memory)
        val, train_rows = inputs[perm[:n_val]], perm[n_val:]
        self._reset_weights(cfg.seed)
        opt = torch.optim.AdamW(self.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
        # small collections get more epochs, so that they still see `min_steps` batches
        batches = max(-(-len(train_rows) // cfg.batch_size), 1)
        epochs = max(cfg.epochs, -(-cfg.min_steps // batches))
        state = {"epoch": 0, "best": float("inf"), "best_state": None, "bad_epochs": 0}
        resumed = self._load_checkpoint(ckpt_dir, inputs, cfg, opt, gen, state)
        if not resumed:
            with torch.no_grad():
                first = inputs[
                    train_rows[torch.randperm(len(train_rows), generator=gen)[: cfg.init_batch]]
                ]
                self.codebooks.init_kmeans_(self.encoder(first), seed=cfg.seed)
        bar = progress_bar(
            range(state["epoch"], epochs),
            disable=not progress,
            desc=f"fit {self.spec}",
            unit="epoch",
        )
        for epoch in bar:
            self.train()
            usage = torch.zeros(self.levels, self.spec.codebook_size, dtype=torch.long)
            residuals = []  # this epoch's level inputs: where dead codes are re-seeded
            for idx in torch.randperm(len(train_rows), generator=gen).split(cfg.batch_size):
                loss, recon, q = self._losses(inputs[train_rows[idx]])
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                usage += code_usage(q.codes, self.spec.codebook_size)
                residuals.append(q.residuals)
            revived = 0
            if (
                cfg.reset_dead_every
                and (epoch + 1) % cfg.reset_dead_every == 0
                and epoch < cfg.reset_dead_until * epochs
            ):
                revived = self.codebooks.reset_dead_codes_(torch.cat(residuals), usage, gen)
            val_loss = self._eval_loss(val if n_val else inputs[train_rows])
            check_finite_loss(val_loss, self.spec, epoch, cfg.lr)
            state["epoch"] = epoch + 1
            if val_loss < state["best"] - 1e-6:
                state.update(
                    best=val_loss, best_state=copy.deepcopy(self.state_dict()), bad_epochs=0
                )
            else:
                state["bad_epochs"] += 1
            bar.set_postfix(
                recon=f"{recon.item():.4f}", val=f"{val_loss:.4f}", revived=revived, refresh=False
            )
            stop = state["bad_epochs"] >= cfg.patience and state["epoch"] * batches >= cfg.min_steps
            if ckpt_dir is not None and (
                stop or state["epoch"] % cfg.checkpoint_every == 0 or state["epoch"] == epochs
            ):
                self._save_checkpoint(ckpt_dir, inputs, cfg, opt, gen, state)
            if stop:
                break
        bar.close()
        self.fit_summary = {"epochs": state["epoch"], "best_val_recon": state["best"]}
        if state["best_state"] is not None:
            self.load_state_dict(state["best_state"])

    @torch.no_grad()
    def _eval_loss(self, inputs: Tensor) -> float:
        self.eval()
        return float(self._losses(inputs)[1])

    # --- checkpoints: one file, written atomically, tied to the data and config it was made with ---

    def _fingerprint(self, inputs: Tensor, cfg: TrainConfig) -> dict[str, Any]:
        return {
            "spec": str(self.spec),
            "shape": list(inputs.shape),
            "sum": float(inputs.double().sum()),
            "config": asdict(cfg),
        }

    def _save_checkpoint(
        self, ckpt_dir: Path, inputs: Tensor, cfg: TrainConfig, opt, gen, state
    ) -> None:
        payload = {
            "fingerprint": self._fingerprint(inputs, cfg),
            "model": self.state_dict(),
            "optimizer": opt.state_dict(),
            "generator": gen.get_state(),
            "state": state,
        }
        with atomic_file(ckpt_dir / self.checkpoint_name, "wb") as f:
            torch.save(payload, f)

    def _load_checkpoint(
        self, ckpt_dir: Path | None, inputs: Tensor, cfg: TrainConfig, opt, gen, state
    ) -> bool:
        path = None if ckpt_dir is None else ckpt_dir / self.checkpoint_name
        if path is None or not path.is_file():
            return False
        try:
            payload = load_torch_file(
                path
            )  # weights_only: a fit checkpoint is tensors and plain data
        except DamagedCheckpointError as e:
            raise SemidError(
                f"checkpoint {path} is damaged ({e}); delete it to restart the fit from scratch"
            ) from None
        if not isinstance(payload, dict) or payload.get("fingerprint") != self._fingerprint(
            inputs, cfg
        ):
            raise SemidError(f"checkpoint {path} was written for other data or settings (or is "
                             "not a semid fit checkpoint); remove it or use another "
                             "checkpoint_dir")  # fmt: skip
        self.load_state_dict(payload["model"])
        opt.load_state_dict(payload["optimizer"])
        gen.set_state(payload["generator"])
        state.update(payload["state"])
        return True


__all__ = ["RQVAE", "TrainConfig", "mlp"]
