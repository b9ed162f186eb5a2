"""Image features without pretrained weights: a small convolutional autoencoder trained here.

No pretrained image encoder is available offline, so `ImageEncoder` learns features from the
pixels alone (reconstruction, no labels: the features carry no class information by
construction, which is left to the retrievers). Its weights are saved next to the index. A user
with better features (e.g. CLIP) passes them as ``.npy`` instead: see `load_image_features`.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from semid.configs import config_from_dict
from semid.errors import SemidError
from semid.layers import reset_seeded_
from semid.progress import progress_bar
from semid.saving import load_state, read_module, write_module

KIND = "image_encoder"


@dataclass
class ImageEncoderConfig:
    """Shape of the CNN; the defaults take about a minute per epoch of 60k 28x28 images on one thread."""

    in_channels: int = 1
    image_size: int = 28
    channels: tuple[int, ...] = (16, 32)  # one conv + 2x2 max-pool per entry
    dim: int = 64  # feature width


class ImageEncoder(nn.Module):
    """Conv encoder images (N, C, H, W) -> features (N, dim), with a mirrored decoder for training."""

    def __init__(self, config: ImageEncoderConfig | None = None) -> None:
        super().__init__()
        self.config = config = config or ImageEncoderConfig()
        widths = [config.in_channels, *config.channels]
        side = config.image_size // 2 ** len(config.channels)
        if side < 1:
            raise SemidError(
                f"images of {config.image_size} px are too small for the image encoder's "
                f"{len(config.channels)} pooling layers; give images of at least "
                f"{2 ** len(config.channels)} px on their shorter side (the median one sets the size)"
            )
        self._grid = (config.channels[-1], side, side)
        convs: list[nn.Module] = []
        for a, b in zip(widths[:-1], widths[1:], strict=True):
            convs += [nn.Conv2d(a, b, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2)]
        self.encoder = nn.Sequential(
            *convs, nn.Flatten(), nn.Linear(config.channels[-1] * side * side, config.dim)
        )
        ups: list[nn.Module] = []
        for a, b in zip(widths[::-1][:-1], widths[::-1][1:], strict=True):
            ups += [nn.ConvTranspose2d(a, b, 4, stride=2, padding=1), nn.ReLU()]
        self.decoder_in = nn.Linear(config.dim, config.channels[-1] * side * side)
        self.decoder = nn.Sequential(*ups[:-1])  # no ReLU on the output logits

    def forward(self, images: Tensor) -> Tensor:
        """Features (N, dim) of images (N, C, H, W) float in [0, 1]."""
        return self.encoder(images)

    def reconstruct(self, features: Tensor) -> Tensor:
        """Pixel logits (N, C, H, W) from features (N, dim)."""
        grid = self.decoder_in(features).relu().view(-1, *self._grid)
        out = self.decoder(grid)
        size = self.config.image_size
        if out.shape[-1] != size:  # sizes not divisible by 2**levels: resample to the input size
            out = F.interpolate(out, size=(size, size), mode="bilinear", align_corners=False)
        return out

    def fit(
        self,
        images: Tensor,
        epochs: int = 2,
        batch_size: int = 256,
        lr: float = 2e-3,
        seed: int = 0,
        progress: bool = True,
        min_steps: int = 0,
    ) -> ImageEncoder:
        """Train as an autoencoder on images (N, [C,] H, W) uint8 (binary cross-entropy on pixels)
        for `epochs`, or for `min_steps` batches if that is more."""
        x = self._pixels(images)
        gen = torch.Generator().manual_seed(seed)
        reset_seeded_((m for m in self.modules() if m is not self), seed)
        opt = torch.optim.AdamW(self.parameters(), lr=lr)
        self.train()
        steps = max(epochs * ((len(x) + batch_size - 1) // batch_size), min_steps)
        bar = progress_bar(total=steps, disable=not progress, desc="fit image encoder", unit="step")
        done = 0
        while done < steps:
            for idx in torch.randperm(len(x), generator=gen).split(batch_size)[: steps - done]:
                batch = x[idx].float() / 255
                loss = F.binary_cross_entropy_with_logits(self.reconstruct(self(batch)), batch)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                opt.step()
                done += 1
                bar.update()
                bar.set_postfix(bce=f"{loss.item():.4f}", refresh=False)
        bar.close()
        self.eval()
        return self

    @torch.no_grad()
    def encode(self, images: Tensor, batch_size: int = 1024, device: str = "cpu") -> Tensor:
        """Features (N, dim) float32, on the CPU, of images (N, [C,] H, W) uint8, computed on
        ``device``; the encoder is back where it was afterwards (saving it reads CPU weights)."""
        x = self._pixels(images)
        home = next(self.parameters()).device
        self.eval().to(device)
        try:
            return torch.cat(
                [self(chunk.to(device).float() / 255).cpu() for chunk in x.split(batch_size)]
            )
        finally:
            self.to(home)

    def _pixels(self, images: Tensor) -> Tensor:
        """Images as (N, C, H, W) uint8, checked against the config."""
        images = torch.as_tensor(images)
        if images.ndim == 3:
            images = images[:, None]
        c, s = self.config.in_channels, self.config.image_size
        if images.ndim == 4 and {c, images.shape[1]} == {1, 3}:
            images = match_channels(images, c)
        if images.ndim != 4 or images.shape[1:] != (c, s, s):
            raise SemidError(
                f"this image encoder takes images of shape (N, {c}, {s}, {s}), got {tuple(images.shape)}"
            )
        if images.dtype != torch.uint8:
            raise SemidError(f"images must be uint8 pixels, got {images.dtype}")
        return images

    def save_pretrained(self, path: str | os.PathLike) -> None:
        """Write config.json and model.safetensors into the folder ``path``, atomically."""
        write_module(path, KIND, "cnn", dataclasses.asdict(self.config), self)

    @classmethod
    def from_pretrained(cls, path: str | os.PathLike) -> ImageEncoder:
        """Load an encoder folder written by `save_pretrained`."""
        _, raw = read_module(path, KIND, "rebuild the index with `semid index build`")
        config = config_from_dict(ImageEncoderConfig, raw, f"{path}/config.json")
        model = cls(dataclasses.replace(config, channels=tuple(config.channels)))
        load_state(model, path)
        return model.eval()


def match_channels(images: Tensor, channels: int) -> Tensor:
    """uint8 images (N, 1 or 3, H, W) as (N, channels, H, W): grey is repeated over RGB, colour
    becomes its luma (ITU-R 601, as Pillow's "L"), so one collection may mix the two."""
    if images.shape[1] == channels:
        return images
    if channels == 3:
        return images.expand(-1, 3, -1, -1)
    weights = torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)
    return (images.float() * weights).sum(1, keepdim=True).round().clamp(0, 255).to(torch.uint8)


def load_image_features(path: str | os.PathLike, num_images: int | None = None) -> Tensor:
    """Precomputed image embeddings (N, D) float32 from a ``.npy`` file (e.g. CLIP features)."""
    try:
        x = np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SemidError(f"image features {path} not found; check the path") from None
    except (OSError, ValueError) as e:
        raise SemidError(f"cannot read {path} as .npy: {e}; check or regenerate the file") from None
    if x.ndim != 2 or not np.issubdtype(x.dtype, np.number):
        raise SemidError(
            f"{path} must hold a numeric (N, D) matrix of image features, got {x.shape}"
        )
    if num_images is not None and len(x) != num_images:
        raise SemidError(
            f"{path} holds {len(x)} feature rows for {num_images} images; one row per image, same order"
        )
    x = x.astype(np.float32)
    if not np.isfinite(x).all():
        raise SemidError(f"{path} contains NaN or infinite values")
    return torch.from_numpy(x)
