"""Reading single image files (PNG, JPEG, BMP, GIF via Pillow; binary PGM and .npy natively) and
stacking them into one uint8 array, resized to a common square size when asked.

Layout: one image is (H, W) grayscale or (H, W, 3) RGB as read; a stack is (N, H, W) when every
image is grayscale, else (N, 3, H, W) with grayscale images repeated over the three channels.
Resizing scales the shorter side to S (bicubic) and crops the centre S x S, so shapes agree
without distorting aspect ratios. Transparent images are composited onto white, so a shape drawn
only in the alpha channel (an icon) stays visible. 16-bit greyscale (scientific and scanner PNG or
TIFF) is scaled to 8 bits, not clipped. A camera's EXIF orientation is applied.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path

import numpy as np
from PIL import ExifTags, Image, ImageOps

from semid.errors import SemidError
from semid.notes import note
from semid.progress import with_progress
from semid.wording import counted

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".jfif", ".jpe", ".bmp", ".gif", ".pgm", ".ppm", ".npy", ".webp", ".avif", ".tif", ".tiff")  # fmt: skip
# Photo formats Pillow does not read (iPhone HEIC, camera raw): refused by name, never skipped unsaid
UNREAD_SUFFIXES = (".heic", ".heif", ".jxl", ".svg", ".dng", ".cr2", ".cr3", ".nef", ".arw", ".raw")  # fmt: skip
_GRAY_MODES = ("L", "1", "LA")
# The 'auto' working size is the median shorter side, capped: the CNN learns features of a few
# thousand pixels; photo resolution costs memory and time (a 750 px batch of 96 needs 1.7 GB).
AUTO_MAX_SIZE = 64
READ_QUIETLY = 500  # images read without a progress bar (a few seconds of photos)


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


def read_image(path: Path, min_size: int | None = None) -> np.ndarray:
    """One image file as uint8 (H, W) grayscale or (H, W, 3) RGB (palette images become RGB).

    `min_size`: the image is only needed at `min_size` x `min_size` or more, so a JPEG is decoded
    at a reduced scale (1/2, 1/4 or 1/8, the largest that keeps both sides at least `min_size`):
    a phone photo read for a 64-pixel working size decodes about 9x faster. The pixels differ a
    little from a full decode's resized (by about 1 level of 255 at 64 px)."""
    return _read_sized(path, min_size)[0]


def _read_sized(path: Path, min_size: int | None) -> tuple[np.ndarray, int]:
    """`read_image`, and the shorter side of the image as stored (a reduced decode's is smaller)."""
    suffix = path.suffix.lower()
    if suffix in (".npy", ".pgm"):
        pixels = as_uint8(load_npy(path), str(path)) if suffix == ".npy" else read_pgm(path)
        return pixels, min(pixels.shape[:2], default=0)  # not an image: refused by the caller
    try:
        with Image.open(path) as opened:
            stored = min(opened.size)
            if min_size is not None:
                opened.draft(None, (min_size, min_size))  # a no-op for formats other than JPEG
            return _pixels(_upright(opened), path), stored
    except Image.DecompressionBombError:
        raise SemidError(
            f"image {path} is over Pillow's limit of {Image.MAX_IMAGE_PIXELS * 2:,} pixels (a guard "
            "against decompression bombs); shrink it (semid works at 64 px or less)"
        ) from None
    except OSError as e:
        empty = path.is_file() and path.stat().st_size == 0  # an interrupted copy, say
        why = "it is empty (0 bytes)" if empty else str(e)
        raise SemidError(f"cannot read image {path}: {why}; {_unreadable_fix(e)}") from None


def _pixels(img: Image.Image, path: Path) -> np.ndarray:
    """An opened image's pixels as `read_image` returns them."""
    if img.mode.startswith("I") or img.mode == "F":
        return _deep_grey(np.asarray(img), img.mode, path)
    mode = "L" if img.mode in _GRAY_MODES else "RGB"
    if _has_alpha(img):
        white = Image.new("RGBA", img.size, (255, 255, 255, 255))
        return np.asarray(Image.alpha_composite(white, img.convert("RGBA")).convert(mode))
    return np.asarray(img.convert(mode))


def _upright(img: Image.Image) -> Image.Image:
    """The image as a viewer shows it: a camera's EXIF orientation (a phone photo held upright is
    often stored on its side) applied."""
    if img.getexif().get(ExifTags.Base.Orientation, 1) == 1:
        return img
    return ImageOps.exif_transpose(img)


def _deep_grey(x: np.ndarray, mode: str, path: Path) -> np.ndarray:
    """(H, W) uint8 of a 16-bit, 32-bit or float greyscale image, scaled by its range: Pillow's
    own conversion to 8 bits clips every value over 255 to white (or a float to black)."""
    if mode == "F":
        return as_uint8(x, str(path))
    if x.size and (x.min() < 0 or x.max() > 65535):
        raise SemidError(
            f"image {path} holds values outside 0..65535; save it as 8- or 16-bit greyscale"
        )
    if mode.startswith("I;16") or (x.size and x.max() > 255):  # 16-bit: 65535 is white
        return np.rint(x / 257.0).astype(np.uint8)
    return x.astype(np.uint8)


def _has_alpha(img: Image.Image) -> bool:
    """Whether a Pillow image has transparency (an alpha channel or a transparent palette entry)."""
    return img.mode in ("RGBA", "LA", "PA", "La", "RGBa") or "transparency" in img.info


def read_images(files: Sequence[Path], where: str, size: int | str | None = "auto") -> np.ndarray:
    """Image files stacked as `stack_images` does, each shrunk to at most the working size as it is
    read (a JPEG decoded at a reduced scale), so a folder of photos is never held at full size.

    `size`: an int resizes every image to size x size; "auto" picks `auto_size` of the files;
    None keeps the sizes (they must agree)."""
    files = with_progress(files, "read images", "image", quiet_up_to=READ_QUIETLY)
    cap = None if size is None else _checked_size(size) or AUTO_MAX_SIZE
    images, shorter = [], []  # the 'auto' size: of the images as stored, not as decoded
    unreadable: list[tuple[Path, SemidError]] = []  # all told at once, not one run per file
    with _pillow_warnings_noted(where) as read:
        for file in files:
            try:
                image, stored = read(file, cap)
            except SemidError as e:
                unreadable.append((file, e))
                continue
            shorter.append(stored)
            images.append(image if cap is None else
                          resize_square(_channels_last(image, str(file)), min(stored, cap)))  # fmt: skip
    if unreadable:
        raise _unreadable_error(unreadable)
    if size is None:
        return stack_images(images, where)
    return stack_images(images, where, size if isinstance(size, int) else auto_size(shorter))


def _unreadable_error(unreadable: Sequence[tuple[Path, SemidError]]) -> SemidError:
    """One line for the images that could not be read: the first one's error, and the others'
    names (up to 5), so that a folder's bad files are fixed in one go."""
    (_, first), others = unreadable[0], [str(file) for file, _ in unreadable[1:]]
    if not others:
        return first
    named = ", ".join(others[:5]) + (f" and {len(others) - 5:,} more" if len(others) > 5 else "")
    return SemidError(f"{first} (and {counted(len(others), 'other image')} that cannot be read "
                      f"either: {named})")  # fmt: skip


@contextmanager
def _pillow_warnings_noted(
    where: str,
) -> Iterator[Callable[[Path, int | None], tuple[np.ndarray, int]]]:
    """`_read_sized`, with the warnings Pillow gives while reading (a damaged EXIF block, a very
    large image) gathered and noted on stderr in one line on the way out, instead of two lines of
    Python's warning format per image."""
    warned: list[tuple[Path, str]] = []

    def read(file: Path, min_size: int | None = None) -> tuple[np.ndarray, int]:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            sized = _read_sized(file, min_size)
        warned.extend((file, " ".join(str(w.message).split())) for w in caught)
        return sized

    yield read
    if warned:  # (an image that failed to read has its own one-line error instead)
        files = len({file for file, _ in warned})
        file, message = warned[0]
        note(f"{where}: Pillow warned while reading {counted(files, 'image')} "
             f"(first, {file}: {message})")  # fmt: skip


def auto_size(shorter_sides: Sequence[int]) -> int:
    """The 'auto' working size: the median shorter side, at most AUTO_MAX_SIZE."""
    return min(int(np.median(shorter_sides)), AUTO_MAX_SIZE)


def _checked_size(size: int | str | None) -> int | None:
    """An int size (>= 1) as given; None for "auto" or None; anything else raises."""
    if isinstance(size, str) and size != "auto":
        raise SemidError(f"image size must be an integer or 'auto', got {size!r}")
    if isinstance(size, int) and size < 1:
        raise SemidError(f"image size must be >= 1, got {size}")
    return size if isinstance(size, int) else None


def _unreadable_fix(error: OSError) -> str:
    """What to do about an image file that could not be read because of ``error``."""
    if isinstance(error, PermissionError):
        return "make it readable (chmod +r) or move it out of the collection"
    return "replace the file or move it out of the collection"


def read_pgm(path: Path) -> np.ndarray:
    """A binary (P5) 8-bit PGM image (H, W)."""
    try:
        raw = path.read_bytes()
    except OSError as e:  # as Pillow's formats: a broken link, no permission
        raise SemidError(f"cannot read image {path}: {e}; {_unreadable_fix(e)}") from None
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
    if (
        len(fields) < 4
        or fields[0] != b"P5"
        or not all(f.isdigit() for f in fields[1:])
        or int(fields[3]) > 255
    ):
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
    size x size; "auto" resizes to `auto_size` (a square, whatever the images' shapes)."""
    images = [_channels_last(a, where) for a in arrays]
    if any(a.ndim == 3 for a in images):
        images = [a if a.ndim == 3 else np.repeat(a[:, :, None], 3, axis=2) for a in images]
    shapes = {a.shape[:2] for a in images}
    if size == "auto":
        size = auto_size([min(a.shape[:2]) for a in images])
    size = _checked_size(size)
    if size is None and len(shapes) > 1:
        raise SemidError(
            f"images in {where} differ in size ({sorted(shapes)[:3]}); resize them first "
            "or give an image size"
        )
    if size is not None:
        images = [resize_square(a, size) for a in images]
    stacked = np.stack(images)
    return np.ascontiguousarray(np.moveaxis(stacked, -1, 1)) if stacked.ndim == 4 else stacked


def resize_square(image: np.ndarray, size: int) -> np.ndarray:
    """(H, W[, 3]) uint8 -> (size, size[, 3]): shorter side scaled to `size`, centre cropped."""
    h, w = image.shape[:2]
    if h == w == size:
        return image
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
