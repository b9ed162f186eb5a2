"""Reading single image files (PNG, JPEG, BMP, GIF via Pillow; binary PGM and .npy natively) and
stacking them into one uint8 array, resized to a common square size when asked.

Layout: one image is (H, W) grayscale or (H, W, 3) RGB as read; a stack is (N, H, W) when every
image is grayscale, else (N, 3, H, W) with grayscale images repeated over the three channels.
Resizing scales the shorter side to S (bicubic) and crops the centre S x S, so shapes agree
without distorting aspect ratios.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image

from semid.errors import SemidError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".pgm", ".npy", ".webp", ".tif", ".tiff")
_GRAY_MODES = ("L", "1", "LA", "I", "I;16", "F")


def as_uint8(x: np.ndarray, where: str) -> np.ndarray:
    """uint8 pixels; floats in [0, 1] are scaled to [0, 255]."""
    if x.dtype == np.uint8:
        return np.ascontiguousarray(x)
    if np.issubdtype(x.dtype, np.floating):
        if not np.isfinite(x).all():
            raise SemidError(f"{where} contains NaN or infinite pixels")
        scale = 255.0 if x.max() <= 1.0 else 1.0
        x = x * scale
    if x.min() < 0 or x.max() > 255:
        raise SemidError(f"{where}: pixel values must lie in [0, 255] (or [0, 1] for floats)")
    return np.ascontiguousarray(np.rint(x).astype(np.uint8))


def read_image(path: Path) -> np.ndarray:
    """One image file as uint8 (H, W) grayscale or (H, W, 3) RGB (palette images become RGB)."""
    suffix = path.suffix.lower()
    if suffix == ".npy":
        return as_uint8(load_npy(path), str(path))
    if suffix == ".pgm":
        return read_pgm(path)
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("L" if img.mode in _GRAY_MODES else "RGB"))
    except OSError as e:
        raise SemidError(
            f"cannot read image {path}: {e}; replace the file or move it out of the collection"
        ) from None


def read_pgm(path: Path) -> np.ndarray:
    """A binary (P5) 8-bit PGM image (H, W)."""
    raw = path.read_bytes()
    fields, pos = [], 0
    while len(fields) < 4:  # magic, width, height, maxval; '#' starts a comment
        while pos < len(raw) and raw[pos : pos + 1].isspace():
            pos += 1
        if raw[pos : pos + 1] == b"#":
            pos = raw.find(b"\n", pos) + 1 or len(raw)
            continue
        end = pos
        while end < len(raw) and not raw[end : end + 1].isspace():
            end += 1
        if end == pos:
            break
        fields.append(raw[pos:end])
        pos = end
    if len(fields) < 4 or fields[0] != b"P5" or int(fields[3]) > 255:
        raise SemidError(f"{path} is not a binary 8-bit PGM (P5) image")
    w, h = int(fields[1]), int(fields[2])
    data = raw[pos + 1 : pos + 1 + w * h]
    if len(data) != w * h:
        raise SemidError(f"{path} is a truncated PGM image")
    return np.frombuffer(data, np.uint8).reshape(h, w).copy()


def load_npy(path: str | Path) -> np.ndarray:
    """A .npy array (no pickles); a missing or unreadable file raises SemidError."""
    try:
        return np.load(path, allow_pickle=False)
    except FileNotFoundError:
        raise SemidError(f"{path} not found; check the path") from None
    except (OSError, ValueError) as e:
        raise SemidError(f"cannot read {path} as .npy: {e}; check or regenerate the file") from None


def stack_images(
    arrays: Sequence[np.ndarray], where: str, size: int | str | None = None
) -> np.ndarray:
    """(N, H, W) or (N, 3, H, W) uint8 from single images (see the module docstring).

    `size`: None keeps the sizes and raises if they differ; an int resizes every image to
    size x size; "auto" keeps equal sizes and otherwise resizes to the median shorter side."""
    images = [_channels_last(a, where) for a in arrays]
    if any(a.ndim == 3 for a in images):
        images = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in images]
    shapes = {a.shape[:2] for a in images}
    if isinstance(size, str):
        if size != "auto":
            raise SemidError(f"image size must be an integer or 'auto', got {size!r}")
        size = int(np.median([min(a.shape[:2]) for a in images])) if len(shapes) > 1 else None
    if size is None and len(shapes) > 1:
        raise SemidError(
            f"images in {where} differ in size ({sorted(shapes)[:3]}); resize them first "
            "or give an image size"
        )
    if size is not None:
        if size < 1:
            raise SemidError(f"image size must be >= 1, got {size}")
        images = [resize_square(a, size) for a in images]
    stacked = np.stack(images)
    return np.ascontiguousarray(np.moveaxis(stacked, -1, 1)) if stacked.ndim == 4 else stacked


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W[, 3]) uint8 -> (size, size[, 3]): shorter side scaled to `size`, centre cropped."""
    h, w = image.shape[:2]
    scale = size / min(h, w)
    new_w, new_h = max(size, round(w * scale)), max(size, round(h * scale))
    resized = Image.fromarray(image).resize((new_w, new_h), Image.Resampling.BICUBIC)
    left, top = (new_w - size) // 2, (new_h - size) // 2
    return np.asarray(resized.crop((left, top, left + size, top + size)))


def _channels_last(image: np.ndarray, where: str) -> np.ndarray:
    """(H, W) or (H, W, 3): drops a single channel axis or an alpha channel."""
    if image.ndim == 3 and image.shape[2] in (1, 3, 4):
        return image[:, :, 0] if image.shape[2] == 1 else image[:, :, :3]
    if image.ndim != 2:
        raise SemidError(
            f"an image in {where} has shape {image.shape}; expected (H, W) or (H, W, 3)"
        )
    return image
