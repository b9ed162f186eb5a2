"""Image folders: ``folder/<class>/...<image>``, split parts (``train/<class>/...``,
``test/<class>/...``) and captioned folders (a ``captions.tsv`` of ``path<TAB>caption`` lines), read
into an `ImageDataset`; the listing of a folder's image files and the checks of their names."""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import Tensor

from semid.data.image_io import IMAGE_SUFFIXES, UNREAD_SUFFIXES, read_images
from semid.data.images import PATH_COLUMNS, ImageDataset
from semid.data.tables import folder_data_files
from semid.data.text_files import read_lines
from semid.errors import SemidError
from semid.notes import note
from semid.wording import counted

PICTURE_SUFFIXES = tuple(s for s in IMAGE_SUFFIXES if s != ".npy")


def load_image_folder(
    folder: str | Path, name: str | None = None, image_size: int | str | None = None
) -> ImageDataset:
    """Images from ``folder/<class name>/...<image>``; the first-level subfolder names are the
    classes, and their images are found at any depth (``shoes/2019 trip/a.jpg`` is a shoe). A
    folder of split parts (`split_parts`: ``train/<class>/...``, ``test/<class>/...``) takes its
    classes from the second level; keys keep the part (``test/shoes/a.jpg``), and `given_test`
    marks the test part's images. Parts that hold their images without class subfolders
    (``train/a.jpg``) are read so when the folder has captions (below): captions, no classes.

    Hidden and system entries (names starting with ``.`` or ``@``, ``__MACOSX``) are skipped.
    ``.npy`` and ``.pgm`` files are read natively, other formats through Pillow. With
    `image_size` None all images must share one size; an int or "auto" resizes them
    (`semid.data.image_io.read_images`). An optional ``folder/captions.tsv``
    (``relative/path<TAB>caption``) adds captions; with it, a folder whose images lie directly in
    it (no subfolders) is read too: captions, no classes. Subfolders that are all split parts
    without both a training and a test part are refused (they are no classes)."""
    folder = Path(folder)
    if not folder.is_dir():
        raise SemidError(f"image folder {folder} not found")
    dataset = _read_image_folder(folder, name, image_size)
    _note_unread_files(folder, dataset)
    return dataset


def _read_image_folder(
    folder: Path, name: str | None, image_size: int | str | None
) -> ImageDataset:
    """`load_image_folder` of an existing folder."""
    parts = split_parts(folder)  # train/<class>/..., test/<class>/...: classes below
    captioned = (folder / "captions.tsv").is_file()
    if not parts and captioned and (bare := split_parts(folder, classes=False)):
        return _captioned_files(folder, [f for part in bare for f in image_files(part)], name,
                                image_size, parts=True)  # fmt: skip
    subfolders = [p.name for p in visible_entries(folder) if p.is_dir()]
    if captioned and not subfolders:  # a flat folder of captioned images
        return _captioned_files(folder, image_files(folder), name, image_size, parts=False)
    named = {n.lower() for n in subfolders}
    one_side = not (named & set(TEST_PARTS) and named & set(TRAIN_PARTS))
    if subfolders and named <= {*TRAIN_PARTS, *TEST_PARTS} and one_side:
        fix = ("add a train/ part with the training images" if named & set(TEST_PARTS) else
               "rename the part of the test images to test/ (e.g. val -> test)")  # fmt: skip
        raise SemidError(f"the subfolders of {folder} ({', '.join(subfolders)}) are split parts, "
                         f"not classes, and a split needs a training and a test part: {fix}, or "
                         "list the images in a CSV of path,label or path,caption rows")  # fmt: skip
    roots = parts or [folder]
    class_folders = [c for root in roots for c in visible_entries(root) if c.is_dir()]
    for c in class_folders:  # its name is a class name and a part of its images' keys
        check_utf8_name(c)
    files = [(c.name, p) for c in class_folders for p in image_files(c)]
    classes = sorted({c for c, _ in files})  # subfolders without images are no classes
    empty = sorted({c.name for c in class_folders} - set(classes))
    if empty and files:
        shown = ", ".join(repr(e) for e in empty[:3]) + (", ..." if len(empty) > 3 else "")
        note(f"{counted(len(empty), 'class folder')} of {folder} without images left out: {shown}")
    if not files and image_files(folder):  # images, but none in a class subfolder
        raise SemidError(f"{folder} holds images but no class subfolders; put them in "
                         f"{folder}/<class>/, or caption them: a captions.tsv of image<TAB>caption "
                         "lines beside them, or a CSV of path,caption rows")  # fmt: skip
    if not files:
        raise SemidError(
            f"no images in {folder}; expected {folder}/<class>/<image> with suffix {', '.join(IMAGE_SUFFIXES)}"
        )
    stray = [
        p.name
        for root in roots
        for p in visible_entries(root)
        if p.suffix.lower() in PICTURE_SUFFIXES and p.is_file()
    ]
    if stray:  # they belong to no class: left out, they would go missing unsaid
        raise SemidError(
            f"{folder} holds {counted(len(stray), 'image')} beside its class subfolders (e.g. "
            f"{stray[0]!r}); move them into a class subfolder or out of {folder}"
        )
    keys = [str(p.relative_to(folder)) for _, p in files]
    captions, more_captions = _folder_captions(folder, keys) if captioned else (None, None)
    images = read_images([p for _, p in files], str(folder), image_size)
    return ImageDataset(
        images=torch.from_numpy(images),
        keys=keys,
        labels=torch.tensor([classes.index(c) for c, _ in files]),
        class_names=classes,
        captions=captions,
        more_captions=more_captions,
        name=name or folder.name,
        given_test=_test_part_marks(keys) if parts else None,
    )


def _captioned_files(folder: Path, files: list[Path], name: str | None,
                     image_size: int | str | None, parts: bool) -> ImageDataset:  # fmt: skip
    """Images without classes, captioned by the folder's captions.tsv: those of split parts
    (``train/a.jpg``, ``test/b.jpg``; ``parts``: the test part's images are the given test
    images) or of a flat folder (``a.jpg``)."""
    if not files:
        raise SemidError(
            f"no images in {folder}; expected images with suffix {', '.join(IMAGE_SUFFIXES)}"
        )
    keys = [str(p.relative_to(folder)) for p in files]
    captions, more_captions = _folder_captions(folder, keys)  # checked before the images are read
    return ImageDataset(
        images=torch.from_numpy(read_images(files, str(folder), image_size)),
        keys=keys,
        captions=captions,
        more_captions=more_captions,
        name=name or folder.name,
        given_test=_test_part_marks(keys) if parts else None,
    )


def _folder_captions(
    folder: Path, keys: list[str]
) -> tuple[list[str], list[tuple[str, ...]] | None]:
    """Each image key's first caption and its further ones (None when no image has more) from
    ``folder/captions.tsv`` (``relative/path<TAB>caption`` lines; an image on several lines has
    several captions, as in a table); SemidError naming the line of a line without a tab or a
    caption, of an image the folder lacks, and an image without a caption."""
    path = folder / "captions.tsv"
    known = {os.path.normpath(k): k for k in keys}
    captions: dict[str, list[str]] = {}
    content_seen = False
    for number, line in enumerate(read_lines(path, "captions file"), start=1):
        line = line.rstrip("\r")
        if not line.strip():
            continue
        image, tab, caption = line.partition("\t")
        first, content_seen = not content_seen, True
        if first and image.strip().lower() in PATH_COLUMNS:  # a header line
            continue
        where = f"{path} line {number}"
        if not tab or not caption.strip():
            raise SemidError(f"{where} has no caption ({line[:60]!r}); write image<TAB>caption")
        key = known.get(os.path.normpath(image.strip()))
        if key is None:
            raise SemidError(f"{where} names {image!r}, which is no image of {folder}; give the "
                             "path below the folder of an image in it, or remove the line")  # fmt: skip
        texts = captions.setdefault(key, [])
        if caption.strip() not in texts:  # each caption is a query once
            texts.append(caption.strip())
    missing = [k for k in keys if k not in captions]
    if missing:
        raise SemidError(f"{path} has no caption for {counted(len(missing), 'image')} (e.g. "
                         f"{missing[0]!r}); add a line {missing[0]}<TAB>caption for each")  # fmt: skip
    more = [tuple(captions[k][1:]) for k in keys]
    return [captions[k][0] for k in keys], more if any(more) else None


def _test_part_marks(keys: list[str]) -> Tensor:
    """Whether each image key lies in its folder's test part (N,) bool."""
    return torch.tensor([is_test_part(key) for key in keys], dtype=torch.bool)


TRAIN_PARTS, TEST_PARTS = ("train", "training", "val", "valid", "validation"), ("test", "testing")


def split_parts(folder: Path, classes: bool = True) -> list[Path]:
    """The split subfolders of a folder that ships its own split (``train/<class>/...`` and
    ``test/<class>/...``, perhaps ``val/<class>/...``, as many image datasets do): every visible
    subfolder is named as a part, one is a test part, another a training part, and each holds
    class subfolders (with ``classes`` False: none does, its images lie directly in it). Empty for
    any other folder, whose subfolders are its classes."""
    subfolders = [p for p in visible_entries(folder) if p.is_dir()]
    names = [p.name.lower() for p in subfolders]
    if not (set(names) & set(TEST_PARTS) and set(names) & set(TRAIN_PARTS)):
        return []
    if not set(names) <= {*TRAIN_PARTS, *TEST_PARTS}:
        return []
    with_subfolders = [any(c.is_dir() for c in visible_entries(p)) for p in subfolders]
    return subfolders if (all(with_subfolders) if classes else not any(with_subfolders)) else []


def is_test_part(key: str) -> bool:
    """Whether an image key (its path below a split folder) lies in the folder's test part."""
    return key.replace("\\", "/").split("/", 1)[0].lower() in TEST_PARTS


def image_files(folder: Path) -> list[Path]:
    """Image files under `folder` at any depth, sorted, without hidden or system entries; a link
    to a folder that holds it (a loop) raises SemidError."""
    real = folder.resolve()
    return _image_files(folder, {real, *real.parents})


def _image_files(folder: Path, holders: set[Path]) -> list[Path]:
    """`image_files` below `folder`, whose real path and those of the folders above it are `holders`."""
    found = []
    for entry in visible_entries(folder):
        if entry.is_dir():
            target = entry.resolve()
            if target in holders:  # followed, it would list the same images again and again
                raise SemidError(
                    f"{entry} links to {target}, a folder that holds it; remove the link"
                )
            check_utf8_name(entry)  # a part of its images' keys
            found += _image_files(entry, holders | {target})
        elif entry.suffix.lower() in IMAGE_SUFFIXES:
            check_utf8_name(entry)
            found.append(entry)
        elif entry.suffix.lower() in UNREAD_SUFFIXES:
            raise SemidError(
                f"{entry}: {entry.suffix[1:].upper()} images cannot be read; convert them to JPEG "
                "or PNG, or move them out of the collection"
            )
    return found


SYSTEM_FILES = frozenset({"thumbs.db", "desktop.ini"})  # written by file browsers, never data


def _note_unread_files(folder: Path, dataset: ImageDataset) -> None:
    """Tell how many files below an image folder are not part of its collection (neither its
    images nor its captions.tsv; hidden and system entries aside), so that a format semid does not
    read, or images outside the class folders or split parts, do not vanish unsaid."""
    read = {folder / key for key in dataset.keys}
    if dataset.captions is not None:
        read.add(folder / "captions.tsv")
    unread = [
        p for p in folder_data_files(folder)
        if p not in read and p.name.lower() not in SYSTEM_FILES
        and not any(part.startswith("@") or part == "__MACOSX" for part in p.relative_to(folder).parts)
    ]  # fmt: skip
    if unread:
        note(f"{folder}: {counted(len(unread), 'file')} not part of the collection, left out (e.g. "
             f"{str(unread[0].relative_to(folder))!r}; images are {', '.join(IMAGE_SUFFIXES)} "
             "files in class subfolders or split parts, or beside a captions.tsv)")  # fmt: skip


def check_utf8_name(path: Path) -> None:
    """SemidError unless ``path``'s name is valid UTF-8: its key is written to JSON files, which
    cannot hold the undecodable bytes of a name from another encoding (``caf\\xe9.png``)."""
    try:
        path.name.encode("utf-8")
    except UnicodeEncodeError:
        shown = os.fsencode(path.name).decode("utf-8", "backslashreplace")
        raise SemidError(f"{path.parent / shown}: the file name is not valid UTF-8; rename the "
                         "file (e.g. with `convmv -f latin1 -t utf8`)") from None  # fmt: skip


def visible_entries(folder: Path) -> list[Path]:
    """Sorted entries of `folder` other than hidden or system ones (``.*``, ``@eaDir``, AppleDouble
    ``._*`` files, ``__MACOSX``); SemidError naming a folder that cannot be listed."""
    try:
        entries = list(folder.iterdir())
    except OSError as e:
        raise SemidError(f"cannot list {folder}: {e.strerror or e}; make it readable (chmod +rx) or "
                         "move it out of the collection") from None  # fmt: skip
    return sorted(p for p in entries if not p.name.startswith((".", "@")) and p.name != "__MACOSX")
