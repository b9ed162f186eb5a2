"""Where a run's data comes from, so a run can be evaluated from anywhere and trusts no changed data.

A dataset is a registered name (``ml-100k``, ``debian-docs``, ``fashion-mnist``) or a path. Paths
are stored absolute, with the sha256 of their content (:func:`semid.data.tables.content_sha256`),
when a run is trained; later commands reload the same files from any working directory and refuse
with one clear line if their content changed. A run folder can be moved alone, or with its data
files (a project folder renamed or copied whole: `semid.runs.moved_data` finds them at the same
place relative to the run folder).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from semid.data.beir import is_beir_folder
from semid.data.documents import BODY_FIELDS, ID_FIELDS, QUERY_FIELDS, first_record_fields
from semid.data.image_files import PATH_COLUMNS
from semid.data.image_folders import image_files, visible_entries
from semid.data.image_io import IMAGE_SUFFIXES
from semid.data.interaction_files import ITEM_COLUMNS
from semid.data.movielens import FORMATS_HELP, is_movielens_folder
from semid.data.registry import available_datasets
from semid.data.tables import (
    LINE_FORMATS,
    USER_COLUMNS,
    content_sha256,
    data_files_hint,
    folder_data_files,
    matching_columns,
    read_table,
    table_format,
    whole_lines_end,
)
from semid.errors import SemidError


def resolve_dataset(name: str | None, flag: str = "--dataset") -> str | None:
    """A registered name as it is; a path made absolute (so the run does not depend on the cwd).
    ``flag`` names the option in the error for a path that is not there (``--items``: a file)."""
    if name is None or name in available_datasets():
        return name
    path = Path(name).expanduser()
    if not path.exists() and flag == "--items":
        raise SemidError(f"--items {name} not found; give the items file (item, text columns)")
    if not path.exists():
        raise SemidError(f"dataset {name!r} is neither a registered dataset ({', '.join(available_datasets())}) "
                         "nor an existing file or folder")  # fmt: skip
    return str(path.resolve())


def data_paths(*names: str | None) -> list[str]:
    """The ones among ``names`` that are paths (not registered datasets and not None)."""
    registered = set(available_datasets())
    return [n for n in names if n is not None and n not in registered]


FilesOf = Callable[[Path], list[Path]]  # the files of a data folder that its reader reads


class DataChanged(SemidError):
    """A run's data files no longer hash to what training recorded."""


DataStamp = tuple[tuple[str, int, int, int], ...]  # (path, size, modification time, inode)


def data_stamp(*names: str | None) -> DataStamp:
    """Path, size, modification time and inode of each file among ``names`` (folders: every file
    below): a cheap key that changes when a file is rewritten (the content hash says whether it
    changed)."""
    files: list[Path] = []
    for path in map(Path, data_paths(*names)):
        files += folder_data_files(path) if path.is_dir() else [path]
    stats = [(f, f.stat()) for f in files if f.exists()]
    return tuple((str(f), st.st_size, st.st_mtime_ns, st.st_ino) for f, st in stats)


def appended_ends(before: DataStamp | None, now: DataStamp) -> dict[str, int]:
    """For each CSV, TSV or JSON Lines file (not gzipped) of ``now`` appended to since ``before``
    (a log written while served; not a file renamed over it), where its last whole line ends,
    when its last line has no line feed yet (a writer mid-line, or one that flushes in blocks):
    read up to there (`semid.data.tables.read_up_to`), a half-written ``u196,17`` (of
    ``u196,174``) is not read as an event, or as a malformed row. Other files are read whole, as
    are all on the first read (``before`` None)."""
    files = {name: (size, inode) for name, size, _, inode in before or ()}
    ends = {}
    for name, size, _, inode in now:
        # appended to: the same file (not one renamed over it), larger
        grew = name in files and files[name][1] == inode and size > files[name][0]
        if not grew or table_format(name) not in LINE_FORMATS or name.lower().endswith(".gz"):
            continue
        try:
            end = whole_lines_end(name, size)
        except OSError:  # gone or unreadable: the read itself says so
            continue
        if end < size:
            ends[name] = end
    return ends


def fingerprint(*names: str | None, files_of: FilesOf = folder_data_files) -> str | None:
    """The content hash of the files among ``names`` (of a folder: the files ``files_of`` gives,
    those its reader reads), or None when all are registered datasets."""
    paths = data_paths(*names)
    return content_sha256(paths, files_of) if paths else None


def image_collection_files(folder: Path) -> list[Path]:
    """The files an image folder's reader reads, its images (`image_files`) and captions.tsv, in
    `folder_data_files`' order: a README, notes or a NAS's thumbnails (``@eaDir``) beside them
    change no fingerprint."""
    read = {*image_files(folder), folder / "captions.tsv"}
    return [p for p in folder_data_files(folder) if p in read]


def trained_on(data_sha256: str | None, dataset: str, ids_sha256: str, spec: Any,
               fields: tuple[str, ...]) -> dict[str, Any]:  # fmt: skip
    """What a run's training checkpoints learn from, checked when training resumes (see
    `semid.training.Trainer`): the data's content hash (a registered dataset's name), the IDs'
    hash (``SemanticIDs.sha256``) and the spec's ``fields`` that shape the examples."""
    return {"data": data_sha256 or dataset, "ids": ids_sha256,
            **{name: getattr(spec, name) for name in fields}}  # fmt: skip


def check_fingerprint(run: Any, *names: str | None, files_of: FilesOf = folder_data_files,
                      fix: str = "restore it or retrain the run") -> None:  # fmt: skip
    """SemidError unless the run's data files still exist; DataChanged, ending with ``fix``, unless
    they hash to what training recorded (with ``files_of``, as `fingerprint`; a run whose hash
    covered every file of its folder, from before ``files_of``, is checked that way)."""
    expected = run.state.get("data_sha256")
    paths = data_paths(*names)
    if expected is None or not paths:
        return
    missing = [p for p in paths if not Path(p).exists()]
    if missing:
        raise SemidError(f"{run.path} was trained on {missing[0]}, which is gone; put the data back there "
                         "or retrain the run")  # fmt: skip
    actual = content_sha256(paths, files_of)
    if actual != expected and files_of is not folder_data_files:
        # a run from before ``files_of`` was given hashed every file of its folder
        actual = expected if content_sha256(paths) == expected else actual
    if actual != expected:
        raise DataChanged(f"the data of {run.path} changed since training ({', '.join(paths)}: sha256 "
                         f"{actual[:12]}, trained on {expected[:12]}); {fix}")  # fmt: skip


def _folder_contents(folder: Path) -> str:
    """What a folder that is neither an image collection nor MovieLens holds, in a few words."""
    if not visible_entries(folder):
        return "is empty"
    if image_files(folder):
        return ("holds images but no class subfolders (or a captions.tsv of image<TAB>caption "
                "lines beside them)")  # fmt: skip
    return "holds neither class subfolders of images nor MovieLens files"


def sniff_kind(path: str) -> str:
    """What a data path holds, from its form and columns: ``interactions``, ``documents`` or
    ``images``; SemidError for a table with a text column that is neither documents (no id
    column) nor a log (no user column), naming the fix of each reading."""
    p = Path(path)
    if p.is_dir():
        if is_beir_folder(p):
            return "documents"
        if any(image_files(d) for d in visible_entries(p) if d.is_dir()):
            return "images"
        if (p / "captions.tsv").is_file() and image_files(p):  # a flat folder of captioned images
            return "images"
        if is_movielens_folder(p):
            return "interactions"
        raise SemidError(
            f"{p} {_folder_contents(p)}{data_files_hint(p)}; pass an image folder with one subfolder per class "
            f"({p}/<class>/<image>) or a CSV of path,caption rows, or {FORMATS_HELP}"
        )
    if table_format(p) is None:
        if p.suffix.lower() == ".npy":
            raise SemidError(f"{p} is an array: item vectors are given with --embeddings {p} --keys "
                             "KEYS.txt; --dataset takes interactions, documents or images")  # fmt: skip
        if p.suffix.lower() in IMAGE_SUFFIXES:
            raise SemidError(f"{p} is an image; pass the folder of the collection (one subfolder per "
                             "class) or a CSV of path,caption rows")  # fmt: skip
        return "interactions"
    try:
        headers = read_table(p, "data file").column_names
    except SemidError:  # pyarrow names a row (from 0) and no fix: the kind's reader says it better
        if table_format(p) != "jsonl":
            raise
        headers = first_record_fields(p)
    users = matching_columns(headers, USER_COLUMNS)  # headers as the readers match them
    if users and matching_columns(headers, ITEM_COLUMNS):  # a log, whatever else it has
        return "interactions"  # (Amazon's reviews have an "image" field, its text a "reviewText")
    if matching_columns(headers, PATH_COLUMNS):  # as the image tables' reader finds it
        return "images"
    if (
        not users
        and matching_columns(headers, ID_FIELDS)
        and matching_columns(headers, ("title", *QUERY_FIELDS))
    ):
        return "documents"  # without a body: the documents' reader names what they lack
    if matching_columns(headers, ("text", *BODY_FIELDS)) and not users:
        if matching_columns(headers, ID_FIELDS):
            return "documents"
        raise SemidError(
            f"{p} has a text column but neither a document id column (accepted names: "
            f"{', '.join(ID_FIELDS)}) nor a user column (found: {', '.join(headers)}); for documents "
            "add an id column, for interactions name the columns with --columns user=NAME,item=NAME"
        )
    if not users and matching_columns(headers, ("caption", "captions")):  # images, path misnamed
        raise SemidError(
            f"{p} has a caption column but no column of image paths (accepted names: "
            f"{', '.join(PATH_COLUMNS)}; found: {', '.join(headers)}); for images name it one of "
            "those, for interactions name the columns with --columns user=NAME,item=NAME"
        )
    return "interactions"
