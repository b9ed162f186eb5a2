"""A user's own image collection, split into train and test: a class-per-folder tree or a table.

Two layouts:
- a folder with one subfolder per class (the ImageFolder layout, `load_image_folder`); class
  names are the folder names with ``_`` and ``-`` read as spaces (``golden_retriever`` ->
  ``golden retriever``);
- a table file (CSV, TSV, JSON Lines, Parquet; semid.data.tables) with a ``path`` column (paths
  relative to the table's folder, or absolute) and a ``caption`` and/or a ``label`` column
  (names in PATH_COLUMNS, CAPTION_COLUMNS, LABEL_COLUMNS). Keys are the paths as written. An
  image on several rows has several captions (Flickr30k and COCO give five), each a query. An
  optional ``split`` column keeps the table's own split (Karpathy's COCO and Flickr30k splits):
  ``test`` rows are the test side, ``train``, ``val`` and ``restval`` rows train.

Images of different sizes are resized to one square size (semid.data.image_io). The split is
seeded and stratified by class (every class with 2+ images has images on both sides); without
labels it is a plain seeded shuffle. Each side keeps file order. A folder that ships its own split
(``train/<class>/...`` and ``test/<class>/...``, perhaps ``val/<class>/...``: `split_parts`) keeps
it: its test part is the test side, the other parts train; so does a table with a split column.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch

from semid.data.documents import BODY_FIELDS, ID_FIELDS, QUERY_FIELDS
from semid.data.image_folders import TEST_PARTS, TRAIN_PARTS, load_image_folder
from semid.data.image_io import read_images
from semid.data.images import (
    PATH_COLUMNS,
    ImageDataset,
    ImageSplits,
    class_key,
    folder_class_name,
)
from semid.data.tables import (
    file_stem,
    find_column,
    key_strings,
    matching_columns,
    read_table,
    row_label,
    table_format,
)
from semid.errors import SemidError
from semid.notes import note
from semid.wording import counted

CAPTION_COLUMNS = ("caption", "text", "captions")
LABEL_COLUMNS = ("label", "class")
SPLIT_COLUMNS = ("split",)
TRAIN_SPLITS = (*TRAIN_PARTS, "restval")  # Karpathy's split: COCO's restval images train too


def load_image_collection(
    path: str | os.PathLike,
    seed: int = 0,
    test_fraction: float = 0.2,
    image_size: int | str = "auto",
    name: str | None = None,
) -> ImageSplits:
    """Train and test `ImageDataset`s from an image folder tree or a table of image paths.

    `image_size`: "auto" keeps a common size and otherwise resizes to the median shorter side;
    an int resizes every image to that square size."""
    if not 0 < test_fraction < 1:
        raise SemidError(f"test fraction must lie strictly between 0 and 1, got {test_fraction}")
    path = Path(path)
    if path.is_dir():
        data = load_image_folder(path, name, image_size)
        if data.class_names is not None:  # a captioned folder of split parts has none
            data.class_names = class_names_from_folders(data.class_names, path)
    elif table_format(path) is not None:
        data = _load_image_table(path, image_size, name)
    elif path.exists():
        raise SemidError(
            f"{path} is neither a folder of class subfolders nor a table of image paths "
            "(.csv, .tsv, .jsonl, .parquet)"
        )
    else:
        raise SemidError(f"image collection {path} not found; pass a folder or a CSV of paths")
    if data.labels is not None and data.class_names and len(data.labels.unique()) == 1:
        note(
            f"{path} holds one class ({data.class_names[int(data.labels[0])]!r}): every image is "
            "relevant to every query, so `semid eval`'s figures say nothing; add other classes"
        )
    if data.given_test is not None:  # the collection's own split: its test images are indexed
        given = data.given_test.numpy()
        test, train = np.flatnonzero(given), np.flatnonzero(~given)
        _note_untrained_classes(data, train, test, path)
    else:
        train, test = split_indices(data.labels, len(data), seed, test_fraction, str(path))
    label = data.name
    return ImageSplits(
        data.subset(train, f"{label}/train"), data.subset(test, f"{label}/test"), label
    )


def _note_untrained_classes(
    data: ImageDataset, train: np.ndarray, test: np.ndarray, path: Path
) -> None:
    """Note the classes of a collection's own test part that its train part lacks: their queries
    ask for a class the model never trained on."""
    if data.labels is None or not data.class_names:
        return
    labels = data.labels.numpy()
    untrained = sorted(set(labels[test].tolist()) - set(labels[train].tolist()))
    if untrained:
        names = ", ".join(repr(data.class_names[c]) for c in untrained[:3])
        more = f" and {len(untrained) - 3:,} more" if len(untrained) > 3 else ""
        has, them = ("has", "it") if len(untrained) == 1 else ("have", "them")
        note(
            f"{counted(len(untrained), 'class', 'classes')} of {path} ({names}{more}) {has} "
            f"images only in its test part: the model never trains on {them}; give {them} "
            "training images"
        )


def load_images(
    path: str | os.PathLike, image_size: int | str = "auto", name: str | None = None
) -> ImageDataset:
    """All images of a folder tree (one subfolder per class) or of a table of image paths, unsplit."""
    path = Path(path)
    if path.is_dir():
        data = load_image_folder(path, name, image_size)
        if data.class_names is not None:
            data.class_names = class_names_from_folders(data.class_names, path)
        return data
    if table_format(path) is not None:
        return _load_image_table(path, image_size, name)
    if not path.exists():
        raise SemidError(
            f"{path} not found; pass a folder of class subfolders or a table of image paths"
        )
    raise SemidError(f"{path} is neither a folder of class subfolders nor a table of image paths")


def class_names_from_folders(folders: list[str], where: str | os.PathLike) -> list[str]:
    """Folder names as class names: ``_`` and ``-`` become spaces; two folders may not collide,
    case aside (a class's text is lower-cased: ``Bag/`` and ``bag/`` would share one)."""
    names = [folder_class_name(f) for f in folders]
    nameless = [f for f, n in zip(folders, names, strict=True) if not n]
    if nameless:
        raise SemidError(f"class folder {nameless[0]!r} in {where} names no class once '_' and '-' "
                         "read as spaces; rename it to the class's name")  # fmt: skip
    refuse_clashing_classes(names, folders, f"class folders in {where}")
    return names


def refuse_clashing_classes(names: list[str], given: list[str], what: str) -> None:
    """SemidError when two class names read the same (:func:`class_key`: case and runs of white
    space aside, so ``Bag`` and ``bag`` would be two classes of one text); ``given``: the names as
    written."""
    read = [class_key(n) for n in names]
    for i, n in enumerate(read):
        if n in read[:i]:
            raise SemidError(f"{what}: {given[read.index(n)]!r} and {given[i]!r} both read as "
                             f"class {n!r}; rename one")  # fmt: skip


def split_indices(
    labels: torch.Tensor | None, n: int, seed: int, test_fraction: float, where: str
) -> tuple[np.ndarray, np.ndarray]:
    """Sorted train and test row indices: per class (or over all rows without labels), a seeded
    shuffle puts round(count * test_fraction) rows in test, at least one and never all."""
    rng = np.random.default_rng(seed)
    values = labels.numpy() if labels is not None else np.zeros(n, dtype=np.int64)
    train, test = [], []
    for c in np.unique(values):
        rows = rng.permutation(np.flatnonzero(values == c))
        k = min(max(round(len(rows) * test_fraction), 1), len(rows) - 1) if len(rows) > 1 else 0
        test.append(rows[:k])
        train.append(rows[k:])
    test_rows, train_rows = np.sort(np.concatenate(test)), np.sort(np.concatenate(train))
    if len(test_rows) == 0:
        raise SemidError(f"{where} holds too few images to split ({n}); give at least 2 per class")
    return train_rows, test_rows


def _looks_like_documents(columns: list[str]) -> bool:
    """Whether a table without an image path column has a document's columns: a text and an id
    or queries (a corpus given where images were expected)."""
    return (
        not matching_columns(columns, PATH_COLUMNS)
        and bool(matching_columns(columns, ("text", *BODY_FIELDS)))
        and bool(matching_columns(columns, (*ID_FIELDS, *QUERY_FIELDS)))
    )


def _load_image_table(path: Path, image_size: int | str, name: str | None) -> ImageDataset:
    """The images of a table; `given_test` marks the test images of its split column, if any."""
    what = "image list"
    table = read_table(path, what)
    if _looks_like_documents(table.column_names):
        raise SemidError(f"{path} holds documents ({', '.join(table.column_names[:4])}), not a "
                         f"list of images (a path column: {', '.join(PATH_COLUMNS[:3])}, ...); "
                         "documents train with --model promptdsi (the default)")  # fmt: skip
    # no command takes --columns for images
    path_col = find_column(table, "path", PATH_COLUMNS, path, what, columns_option=False)
    caption_col = find_column(table, "caption", CAPTION_COLUMNS, path, what, required=False,
                              columns_option=False)  # fmt: skip
    label_col = find_column(table, "label", LABEL_COLUMNS, path, what, required=False,
                            columns_option=False)  # fmt: skip
    if caption_col is None and label_col is None:
        raise SemidError(
            f"{what} {path} needs a caption column ({', '.join(CAPTION_COLUMNS)}) or a label "
            f"column ({', '.join(LABEL_COLUMNS)}) besides {path_col}"
        )
    keys = key_strings(table[path_col], path, "image path")
    captions = _row_captions(table, caption_col, path) if caption_col is not None else None
    names = None
    if label_col is not None:
        names = [name.strip() for name in key_strings(table[label_col], path, "label")]
        blank = next((row for row, name in enumerate(names) if not name), None)
        if blank is not None:  # " dog" and "dog" are one class; a label of spaces is none
            raise SemidError(f"{path} {row_label(path, blank)}: empty label; give every row one")
    splits = _row_splits(table, path, what)
    first_rows, more, files = _ImageRows(path, keys, captions, names, splits).distinct_images()
    labels = class_names = None
    if names is not None:
        class_names = sorted(set(names))
        refuse_clashing_classes(class_names, class_names, f"labels of {path}")
        index = {c: i for i, c in enumerate(class_names)}
        labels = torch.tensor([index[names[row]] for row in first_rows], dtype=torch.long)
    given_test = None if splits is None else _given_test(path, splits, first_rows)
    images = read_images(files, str(path), image_size)
    return ImageDataset(
        images=torch.from_numpy(images),
        keys=[keys[row] for row in first_rows],
        labels=labels,
        class_names=class_names,
        captions=None if captions is None else [captions[row][0] for row in first_rows],
        name=name or file_stem(path),
        more_captions=[tuple(more.get(row, ())) for row in first_rows] if more else None,
        given_test=given_test,
    )


def _given_test(path: Path, splits: list[str], first_rows: list[int]) -> torch.Tensor:
    """Whether each image (by its first row) is a test image of the table's split column;
    SemidError if the column leaves either side empty."""
    given_test = torch.tensor([splits[row] in TEST_PARTS for row in first_rows])
    for side, missing in (("test", not given_test.any()), ("training", given_test.all())):
        if missing:
            raise SemidError(
                f"{path}: its split column marks no image as a {side} image; mark some "
                f"({', '.join(TEST_PARTS if side == 'test' else TRAIN_SPLITS)}), or drop the "
                "column and semid draws a split"
            )
    return given_test


def _row_splits(table: pa.Table, path: Path, what: str) -> list[str] | None:
    """Each row's split, lower-cased, when the table has a split column (else None); SemidError
    naming the row of a value that is neither a training nor a test split."""
    column = find_column(table, "split", SPLIT_COLUMNS, path, what, required=False,
                         columns_option=False)  # fmt: skip
    if column is None:
        return None
    splits = [value.strip().lower() for value in key_strings(table[column], path, "split")]
    for row, value in enumerate(splits):
        if value not in TRAIN_SPLITS and value not in TEST_PARTS:
            raise SemidError(
                f"{path} {row_label(path, row)}: split {value!r} is neither a training split "
                f"({', '.join(TRAIN_SPLITS)}) nor a test split ({', '.join(TEST_PARTS)}); fix the row"
            )
    return splits


def _row_captions(table: pa.Table, column: str, path: Path) -> list[list[str]]:
    """The captions of each row: its caption, or, in a list column (JSON Lines or Parquet, as
    ``"captions": ["a dog", "a brown dog"]``), its captions; a row without one raises."""
    cells = table[column]
    if not (pa.types.is_list(cells.type) or pa.types.is_large_list(cells.type)):
        return [[caption] for caption in key_strings(cells, path, "caption", texts=True)]
    rows = []
    for row, cell in enumerate(cells.to_pylist()):
        texts = [str(c).strip() for c in cell or [] if c is not None and str(c).strip()]
        if not texts:
            raise SemidError(
                f"{path} {row_label(path, row)}: no caption in {column!r}; give every row one"
            )
        rows.append(texts)
    return rows


def _add_captions(more: dict[int, list[str]], first: int, texts: list[str], caption: str) -> None:
    """Add ``texts`` to the further captions of the image first listed at row ``first``, leaving
    out its first ``caption`` and those it has (each caption is a query once)."""
    known = more.setdefault(first, [])
    known += [t for t in dict.fromkeys(texts) if t != caption and t not in known]


@dataclass(frozen=True)
class _ImageRows:
    """The columns of an image list, row by row, to check a row that lists an image again."""

    path: Path
    keys: Sequence[str]
    captions: list[list[str]] | None
    labels: list[str] | None
    splits: list[str] | None

    def check_repeat(self, row: int, first: int) -> None:
        """Row ``row`` names the image of row ``first`` again, to give it more captions; SemidError
        if the table has no captions, or the row's label or split differs from the first's."""
        labels, splits = self.labels, self.splits
        if self.captions is None:
            raise self._repeat_error(row, first, "; list each image once (several rows of an "
                                     "image give it several captions)")  # fmt: skip
        if labels is not None and labels[row] != labels[first]:
            raise self._repeat_error(row, first, f" with label {labels[row]!r} instead of "
                                     f"{labels[first]!r}; give an image one label")  # fmt: skip
        if splits is not None and (splits[row] in TEST_PARTS) != (splits[first] in TEST_PARTS):
            raise self._repeat_error(row, first, f" in split {splits[row]!r} instead of "
                                     f"{splits[first]!r}; put an image in one split")  # fmt: skip

    def _repeat_error(self, row: int, first: int, what: str) -> SemidError:
        """The error of row ``row`` repeating row ``first``'s image, ending with ``what`` (made only
        for an error: naming a CSV row's line reads the file up to it)."""
        path, keys = self.path, self.keys
        spelt = "" if keys[first] == keys[row] else f" as {keys[first]!r}"
        return SemidError(f"{path} {row_label(path, row)} repeats {keys[row]!r} (first at "
                          f"{row_label(path, first)}{spelt}){what}")  # fmt: skip

    def distinct_images(self) -> tuple[list[int], dict[int, list[str]], list[Path]]:
        """The first row of each image (its path without "." and ".." steps: ``./a.png`` and
        ``imgs/../a.png`` name the image ``a.png`` names), the further captions of each image's
        first row, and each image's file; SemidError for a bad repeat, a URL or a missing file."""
        path, keys, captions = self.path, self.keys, self.captions
        seen: dict[str, int] = {}  # the normal path -> its image's first row
        first_rows: list[int] = []
        more: dict[int, list[str]] = {}
        files = []
        for row, key in enumerate(keys):
            same = os.path.normpath(key)
            if same in seen:
                first = seen[same]
                self.check_repeat(row, first)
                _add_captions(more, first, captions[row], captions[first][0])
                continue
            seen[same] = row
            first_rows.append(row)
            if captions is not None:
                _add_captions(more, row, captions[row][1:], captions[row][0])
            if "://" in key:  # https://..., s3://...
                raise SemidError(
                    f"{path} {row_label(path, row)}: image {key} is a URL; semid reads local files "
                    "only: download the images and list their paths"
                )
            file = path.parent / key
            if file.is_dir():
                raise SemidError(f"{path} {row_label(path, row)}: {file} is a folder; list the "
                                 "image files in it, one a row")  # fmt: skip
            if not file.is_file():
                raise SemidError(f"{path} {row_label(path, row)}: image {file} not found (paths "
                                 f"are read relative to the table's folder, {path.parent})")  # fmt: skip
            files.append(file)
        return first_rows, more, files
