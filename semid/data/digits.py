"""The ``digits`` dataset: scikit-learn's bundled handwritten digits (UCI optdigits test set).

1,797 grayscale 8x8 images of the digits 0-9 (pixel counts 0-16, scaled here to 0-255 uint8),
about 180 per class, shipped inside scikit-learn (``pip install scikit-learn``), so it needs no
download. There is no standard split: a seeded split stratified by class (seed 0, fixed) puts
1,000 images in test (the index) and the other 797 in train. Class names are the digits' words
("zero" .. "nine"), so queries are the generic class wordings of `semid.data.images.class_queries`.
"""

from __future__ import annotations

import numpy as np
import torch

from semid.data.image_files import split_indices
from semid.data.images import ImageDataset, ImageSplits
from semid.data.registry import register_dataset
from semid.errors import SemidError

NAME = "digits"
DIGIT_CLASSES = ["zero", "one", "two", "three", "four", "five", "six", "seven", "eight", "nine"]
TEST_IMAGES = 1000
SPLIT_SEED = 0
INSTALL = "pip install scikit-learn"


def load_digits_arrays() -> tuple[np.ndarray, np.ndarray]:
    """Images (1797, 8, 8) uint8 in [0, 255] and labels (1797,) int64 from scikit-learn."""
    try:
        from sklearn.datasets import load_digits  # optional dependency, heavy to import
    except ModuleNotFoundError:
        raise SemidError(f"the digits dataset ships with scikit-learn; run: {INSTALL}") from None
    data = load_digits()
    images = np.rint(np.asarray(data.images, dtype=np.float64) * (255 / 16)).astype(np.uint8)
    return images, np.asarray(data.target, dtype=np.int64)


def load_digits_splits(test_images: int = TEST_IMAGES, seed: int = SPLIT_SEED) -> ImageSplits:
    """Digits split by class: about `test_images` test images, the rest train; keys are row numbers."""
    images, labels = load_digits_arrays()
    train, test = split_indices(
        torch.from_numpy(labels), len(labels), seed, test_images / len(labels), NAME
    )

    def subset(rows: np.ndarray, part: str) -> ImageDataset:
        return ImageDataset(
            images=torch.from_numpy(images[rows]),
            keys=[str(i) for i in rows],
            labels=torch.from_numpy(labels[rows]),
            class_names=list(DIGIT_CLASSES),
            name=f"{NAME}/{part}",
        )

    return ImageSplits(subset(train, "train"), subset(test, "test"), NAME)


register_dataset(
    NAME,
    load_digits_splits,
    f"handwritten digits: 1,797 8x8 images (797 train, 1,000 test), 10 classes ({INSTALL})",
    kind="images",
)
