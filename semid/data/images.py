"""Image datasets: idx files (MNIST format, gzipped or not), ``.npy`` arrays (folders of images:
`semid.data.image_folders`).

Every loader returns an `ImageDataset`: images (N, H, W) or (N, C, H, W) uint8, optional integer
labels with class names, optional captions. ``fashion-mnist`` is registered as a named dataset
with text queries per class (several wordings and attribute phrases; the test wordings are
never seen in training), since Fashion-MNIST has class labels, not captions.
"""

from __future__ import annotations

import gzip
import zlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import Tensor

from semid.data.image_io import as_uint8, load_npy
from semid.data.registry import register_dataset
from semid.data.text_files import read_lines
from semid.errors import SemidError

FASHION_MNIST_DIR = Path("/usr/share/datasets/fashion-mnist")
FASHION_MNIST_INSTALL = "apt-get install -y dataset-fashion-mnist"
# idx type byte -> numpy dtype (big-endian, as the format specifies)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}
# Registered datasets that load as `ImageSplits` (the CLI routes them to semid.text2image).
IMAGE_DATASETS = ("fashion-mnist", "digits")
# names of an image path column (a table's, a captions.tsv header's), COCO's file_name and
# Flickr30k's image_name among them
PATH_COLUMNS = (
    "path",
    "file",
    "filename",
    "file_name",
    "filepath",
    "image",
    "image_path",
    "image_name",
)


@dataclass
class ImageDataset:
    """N images with optional labels (and their class names) and optional captions."""

    images: Tensor  # (N, H, W) or (N, C, H, W) uint8
    keys: list[str]
    labels: Tensor | None = None  # (N,) int64 in [0, len(class_names))
    class_names: list[str] | None = None
    captions: list[str] | None = None
    name: str = "images"
    # each image's captions after its first (Flickr30k and COCO give five per image), or None
    more_captions: list[tuple[str, ...]] | None = None
    # (N,) bool: the collection's own test images (its test/ part, a split column), or None
    given_test: Tensor | None = None

    def __post_init__(self) -> None:
        n = len(self.images)
        if self.images.ndim not in (3, 4):
            raise SemidError(
                f"{self.name}: images must be (N, H, W) or (N, C, H, W), got {tuple(self.images.shape)}"
            )
        if len(self.keys) != n or len(set(self.keys)) != n:
            raise SemidError(f"{self.name}: need {n} unique image keys, got {len(set(self.keys))}")
        if self.labels is not None:
            self.labels = torch.as_tensor(self.labels, dtype=torch.long)
            if self.labels.shape != (n,):
                raise SemidError(
                    f"{self.name}: {len(self.labels)} labels for {n} images; give one label per image"
                )
            if n and int(self.labels.min()) < 0:
                raise SemidError(f"{self.name}: labels must be >= 0")
            if self.class_names is None:
                top = int(self.labels.max()) + 1 if n else 0
                self.class_names = [str(c) for c in range(top)]
            elif n and int(self.labels.max()) >= len(self.class_names):
                raise SemidError(
                    f"{self.name}: label {int(self.labels.max())} has no class name "
                    f"({len(self.class_names)} names given)"
                )
        if self.captions is not None and len(self.captions) != n:
            raise SemidError(f"{self.name}: {len(self.captions)} captions for {n} images")
        if self.given_test is not None and self.given_test.shape != (n,):
            raise SemidError(f"{self.name}: {len(self.given_test)} split marks for {n} images")
        if self.more_captions is not None and (
            self.captions is None or len(self.more_captions) != n
        ):
            raise SemidError(
                f"{self.name}: further captions need a first caption for each of the {n} images"
            )

    def __len__(self) -> int:
        return len(self.images)

    def subset(self, rows: Sequence[int], name: str | None = None) -> ImageDataset:
        """The images at ``rows`` (in that order), with their labels, captions and split marks."""
        index = torch.as_tensor(list(rows), dtype=torch.long)
        picked = index.tolist()
        return ImageDataset(
            images=self.images[index],
            keys=[self.keys[i] for i in picked],
            labels=self.labels[index] if self.labels is not None else None,
            class_names=self.class_names,
            captions=[self.captions[i] for i in picked] if self.captions is not None else None,
            name=self.name if name is None else name,
            more_captions=(
                [self.more_captions[i] for i in picked] if self.more_captions is not None else None
            ),
            given_test=self.given_test[index] if self.given_test is not None else None,
        )

    def shown_texts(self) -> list[str]:
        """One text per image for people reading answers: its caption, else its class name, else ""."""
        if self.captions is not None:
            return list(self.captions)
        if self.labels is None or self.class_names is None:
            return [""] * len(self)
        return [self.class_names[i] for i in self.labels.tolist()]

    def caption_queries(self) -> tuple[list[str], Tensor]:
        """Every caption of every image, an image's first caption first, and the row of each
        caption's image (Q,)."""
        if self.captions is None:
            raise SemidError(f"{self.name} has no captions")
        more = self.more_captions or [()] * len(self)
        texts, rows = [], []
        for row, (first, others) in enumerate(zip(self.captions, more, strict=True)):
            texts += [first, *others]
            rows += [row] * (1 + len(others))
        return texts, torch.tensor(rows, dtype=torch.long)

    def texts(self) -> list[str]:
        """One text per image: its caption, else a description of its class."""
        if self.captions is not None:
            return list(self.captions)
        if self.labels is None:
            raise SemidError(f"{self.name} has neither captions nor labels: no text per image")
        names = [describe_class(c) for c in self.class_names or []]
        return [names[i] for i in self.labels.tolist()]


@dataclass
class ImageSplits:
    """A train and a test `ImageDataset` sharing class names (e.g. Fashion-MNIST 60k / 10k)."""

    train: ImageDataset
    test: ImageDataset
    name: str


def class_key(name: str) -> str:
    """How a class name reads in its texts: lower-cased, runs of white space as one space. Two names
    with one key are one class (``Bag`` and ``bag ``)."""
    return " ".join(name.lower().split())


def folder_class_name(folder: str) -> str:
    """The class a folder's name reads as: ``_`` and ``-`` as spaces, runs of them as one
    (``t-shirt/`` is the class "t shirt")."""
    return " ".join(folder.replace("_", " ").replace("-", " ").split())


def class_match_key(name: str) -> str:
    """:func:`class_key` of the name read as a class folder's (:func:`folder_class_name`): how a
    table's label and a folder's class are matched (``t-shirt`` in a table is the class of a
    ``t-shirt/`` folder)."""
    return class_key(folder_class_name(name))


def describe_class(name: str) -> str:
    """The class text used for alignment: ``a photo of a t-shirt/top``, ``a photo of an eight``."""
    name = class_key(name)
    return f"a photo of {article(name)} {name}"


def article(name: str) -> str:
    """``a`` or ``an`` before a lower-case name, by its first sound as far as the spelling tells."""
    consonant_sound = name.startswith(("one", "uni", "use", "eu", "ewe"))
    return "an" if name[:1] in tuple("aeiou") and not consonant_sound else "a"


# --- idx files -------------------------------------------------------------------------------


def read_idx(path: str | Path) -> np.ndarray:
    """Read an idx file (gzipped or plain, detected from its bytes) into an array of its shape."""
    path = Path(path)
    if not path.is_file():
        raise SemidError(f"idx file {path} not found; check the path")
    raw = path.read_bytes()
    if raw[:2] == b"\x1f\x8b":
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as e:
            raise SemidError(
                f"{path} is a corrupt gzip file ({e}); download or reinstall it"
            ) from None
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise SemidError(
            f"{path} is not an idx file (bad magic number {raw[:4].hex()}); expected MNIST-style idx"
        )
    dtype, ndim = np.dtype(_IDX_DTYPES[raw[2]]), raw[3]
    header = 4 + 4 * ndim
    if ndim == 0 or len(raw) < header:
        raise SemidError(
            f"{path} is a corrupt idx file: truncated header; reinstall or re-download it"
        )
    shape = tuple(int(d) for d in np.frombuffer(raw, ">u4", count=ndim, offset=4))
    expected = int(np.prod(shape)) * dtype.itemsize
    if len(raw) - header != expected:
        raise SemidError(
            f"{path} is a corrupt idx file: header promises {shape} ({expected} bytes) but it holds "
            f"{len(raw) - header} bytes; reinstall or re-download it"
        )
    return np.frombuffer(raw, dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def load_idx(
    images_path: str | Path,
    labels_path: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    name: str = "images",
    key_prefix: str = "",
) -> ImageDataset:
    """An `ImageDataset` from an idx image file (N, H, W) and optionally an idx label file (N,)."""
    images = read_idx(images_path)
    if images.ndim not in (3, 4):
        raise SemidError(f"{images_path} holds shape {images.shape}, not images (N, H, W)")
    labels = None
    if labels_path is not None:
        labels = read_idx(labels_path)
        if labels.ndim != 1 or len(labels) != len(images):
            raise SemidError(
                f"{labels_path} holds {labels.shape} labels for {len(images)} images in {images_path}"
            )
        labels = torch.from_numpy(labels.astype(np.int64))
    return ImageDataset(
        images=torch.from_numpy(as_uint8(images, str(images_path))),
        keys=[f"{key_prefix}{i}" for i in range(len(images))],
        labels=labels,
        class_names=list(class_names) if class_names is not None else None,
        name=name,
    )


# --- arrays and folders ----------------------------------------------------------------------


def load_image_arrays(
    images_path: str | Path,
    labels_path: str | Path | None = None,
    captions_path: str | Path | None = None,
    class_names: Sequence[str] | None = None,
    name: str = "images",
) -> ImageDataset:
    """Images from a ``.npy`` (N, H, W[, C]) plus optional labels (``.npy`` or text, one per line)
    and captions (text, one per line)."""
    images = load_npy(images_path)
    if images.ndim == 4 and images.shape[-1] in (1, 3) and images.shape[1] not in (1, 3):
        images = np.moveaxis(images, -1, 1)  # (N, H, W, C) -> (N, C, H, W)
    labels = None
    if labels_path is not None:
        labels_path = Path(labels_path)
        raw = (
            load_npy(labels_path)
            if labels_path.suffix == ".npy"
            else _read_lines(labels_path, "labels file")
        )
        labels = _labels_from(raw, class_names, str(labels_path))
        if class_names is None and not _is_integer_like(raw):
            class_names = sorted(set(raw))
    captions = _read_lines(captions_path, "captions file") if captions_path is not None else None
    return ImageDataset(
        images=torch.from_numpy(as_uint8(images, str(images_path))),
        keys=[str(i) for i in range(len(images))],
        labels=labels,
        class_names=list(class_names) if class_names is not None else None,
        captions=captions,
        name=name,
    )


# Image files found beside the class subfolders (a .npy there may be something else, features)
def _read_lines(path: str | Path, what: str) -> list[str]:
    return [line.rstrip("\r") for line in read_lines(path, what) if line]


def _is_integer_like(raw: np.ndarray | list[str]) -> bool:
    if isinstance(raw, np.ndarray):
        return np.issubdtype(raw.dtype, np.integer)
    return all(s.strip().lstrip("-").isdigit() for s in raw)


def _labels_from(raw, class_names: Sequence[str] | None, where: str) -> Tensor:
    """Integer labels (N,) from integers, or from class-name strings."""
    if _is_integer_like(raw):
        return torch.as_tensor(np.asarray(raw, dtype=np.int64))
    names = list(class_names) if class_names is not None else sorted(set(raw))
    unknown = sorted(set(raw) - set(names))
    if unknown:
        raise SemidError(f"{where}: labels {unknown[:3]} are not among the class names")
    return torch.tensor([names.index(s) for s in raw])


# --- Fashion-MNIST ----------------------------------------------------------------------------

FASHION_CLASSES = [
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
]  # fmt: skip
# Per class: synonyms (the last one is held out for test) and attribute phrases (ditto).
_FASHION_WORDS: dict[str, tuple[list[str], list[str]]] = {
    "T-shirt/top": (["t-shirt", "tee", "short-sleeved top", "casual top"],
                    ["with short sleeves", "made of cotton jersey", "with a round neckline", "for everyday wear"]),
    "Trouser": (["pair of trousers", "pair of pants", "pair of slacks", "pair of jeans"],
                ["with long straight legs", "with a waistband", "in full length", "with a tailored fit"]),
    "Pullover": (["pullover", "sweater", "jumper", "knitted sweater"],
                 ["with long sleeves", "made of warm wool", "for cold days", "with a ribbed hem"]),
    "Dress": (["dress", "gown", "frock", "sundress"],
              ["in one piece", "with a flared skirt", "of knee length", "for a party"]),
    "Coat": (["coat", "jacket", "overcoat", "parka"],
             ["with buttons down the front", "for winter", "with a zipper", "as heavy outerwear"]),
    "Sandal": (["sandal", "flip-flop", "open-toe shoe", "strappy sandal"],
               ["with thin straps", "for summer", "open at the toes", "with a flat sole"]),
    "Shirt": (["shirt", "blouse", "button-up shirt", "dress shirt"],
              ["with a collar", "with buttons", "with long sleeves and cuffs", "for the office"]),
    "Sneaker": (["sneaker", "trainer", "running shoe", "athletic shoe"],
                ["with laces", "with a rubber sole", "for sport", "with a low top"]),
    "Bag": (["bag", "handbag", "purse", "tote"],
            ["with a handle", "to carry things in", "made of leather", "with a shoulder strap"]),
    "Ankle boot": (["ankle boot", "boot", "bootie", "chelsea boot"],
                   ["covering the ankle", "with a low heel", "with a side zip", "for autumn"]),
}  # fmt: skip
_TRAIN_TEMPLATES = [
    "a photo of a {noun}",
    "a {noun} {attr}",
    "a picture of a {noun} {attr}",
    "{noun}",
]
_TEST_TEMPLATES = [
    "show me a {noun} {attr}",
    "i am looking for a {noun}",
    "find an image of a {noun} {attr}",
]


def class_queries(
    split: str, class_names: Sequence[str] = FASHION_CLASSES
) -> tuple[list[str], Tensor]:
    """Text queries and their class labels (Q,) for ``split`` "train" or "test".

    Fashion-MNIST's classes get their own word lists: test queries use templates, a synonym and an
    attribute phrase never seen in training, so a retriever must generalise over wording, not
    memorise strings. Any other class list gets the generic wordings of `class_texts`."""
    if split not in ("train", "test"):
        raise SemidError(f"split must be 'train' or 'test', got {split!r}")
    if not all(cls in _FASHION_WORDS for cls in class_names):
        return class_texts(class_names, split)
    texts, labels = [], []
    for label, cls in enumerate(class_names):
        nouns, attrs = _FASHION_WORDS[cls]
        if split == "train":
            templates, nouns, attrs = _TRAIN_TEMPLATES, nouns[:-1] or nouns, attrs[:-1] or attrs
        else:
            templates, attrs = _TEST_TEMPLATES, attrs[-1:]
        seen: set[str] = set()
        for template in templates:
            for noun in nouns:
                for attr in attrs if "{attr}" in template else [""]:
                    text = template.format(noun=noun, attr=attr)
                    if text not in seen:
                        seen.add(text)
                        texts.append(text)
                        labels.append(label)
    return texts, torch.tensor(labels)


# Generic wordings for any class name; no test wording is a training wording.
GENERIC_TRAIN_TEMPLATES = [
    "a photo of {a} {name}",
    "{name}",
    "an image of {a} {name}",
    "a picture of {a} {name}",
]
GENERIC_TEST_TEMPLATES = [
    "show me {a} {name}",
    "i am looking for {a} {name}",
    "find a photo showing {a} {name}",
]


def class_texts(class_names: Sequence[str], split: str = "train") -> tuple[list[str], Tensor]:
    """Generic text queries for class names and their labels (Q,), for "train" or "test".

    No dataset-specific words: each name (lower-cased) fills GENERIC_TRAIN_TEMPLATES or
    GENERIC_TEST_TEMPLATES, e.g. "a photo of an apple" for training, "show me an apple" for test."""
    if split not in ("train", "test"):
        raise SemidError(f"split must be 'train' or 'test', got {split!r}")
    templates = GENERIC_TRAIN_TEMPLATES if split == "train" else GENERIC_TEST_TEMPLATES
    texts, labels = [], []
    for label, cls in enumerate(class_names):
        name = class_key(cls)
        for template in templates:
            texts.append(template.format(a=article(name), name=name))
            labels.append(label)
    return texts, torch.tensor(labels, dtype=torch.long)


def fashion_mnist_files(root: str | Path | None = None) -> dict[str, Path]:
    """Paths of the four Fashion-MNIST idx files (gzipped or not) under ``root``."""
    root = Path(root) if root is not None else FASHION_MNIST_DIR
    if not root.is_dir():
        raise SemidError(
            f"Fashion-MNIST not found in {root}; run: {FASHION_MNIST_INSTALL} (or pass the folder with the idx files)"
        )
    files = {}
    for part in ("train-images-idx3", "train-labels-idx1", "t10k-images-idx3", "t10k-labels-idx1"):
        found = [
            root / f"{part}-ubyte{ext}"
            for ext in (".gz", "")
            if (root / f"{part}-ubyte{ext}").is_file()
        ]
        if not found:
            raise SemidError(f"{root} lacks {part}-ubyte[.gz]; run: {FASHION_MNIST_INSTALL}")
        files[part] = found[0]
    return files


def load_fashion_mnist(root: str | Path | None = None) -> ImageSplits:
    """Fashion-MNIST: 60k train and 10k test 28x28 images, 10 named classes; keys ``train/i``, ``test/i``."""
    f = fashion_mnist_files(root)
    train = load_idx(
        f["train-images-idx3"],
        f["train-labels-idx1"],
        FASHION_CLASSES,
        "fashion-mnist/train",
        "train/",
    )
    test = load_idx(
        f["t10k-images-idx3"], f["t10k-labels-idx1"], FASHION_CLASSES, "fashion-mnist/test", "test/"
    )
    return ImageSplits(train, test, "fashion-mnist")


register_dataset(
    "fashion-mnist",
    load_fashion_mnist,
    f"Fashion-MNIST: 70,000 28x28 images (60k train, 10k test), 10 named classes ({FASHION_MNIST_INSTALL})",
    kind="images",
)
