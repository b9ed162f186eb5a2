"""Pinned document corpora: built once from system files into a JSONL plus a JSON of its sha256.

``debian-docs`` and ``manpages`` are built from files that change with the machine (apt lists,
installed manual pages). Pinning writes the built corpus once under ``$SEMID_CACHE/datasets``
(default ``~/.cache/semid/datasets``); later loads read that file and check its hash, so results
stay comparable after the sources change. A new ``build_version`` rebuilds it.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path

from semid.atomic import check_writable
from semid.data.documents import DocumentCollection, read_documents
from semid.errors import SemidError


def default_dataset_dir() -> Path:
    """$SEMID_CACHE/datasets if SEMID_CACHE is set, else ~/.cache/semid/datasets."""
    root = os.environ.get("SEMID_CACHE")
    return Path(root) / "datasets" if root else Path.home() / ".cache" / "semid" / "datasets"


def load_pinned(name: str, out_dir: str | os.PathLike | None, build_version: int,
                build: Callable[[Path], object]) -> DocumentCollection:  # fmt: skip
    """``out_dir/<name>.jsonl`` (built by ``build(out_dir)`` when missing or of another build
    version), its content hash checked against the one recorded in ``<name>.json``."""
    fix = (
        "give a writable folder" if out_dir is not None else "set SEMID_CACHE to a writable folder"
    )
    out_dir = Path(out_dir) if out_dir is not None else default_dataset_dir()
    path, meta_path = out_dir / f"{name}.jsonl", out_dir / f"{name}.json"
    meta = json.loads(meta_path.read_text()) if meta_path.is_file() else {}
    if not path.is_file() or meta.get("build_version") != build_version:
        check_writable(path, fix=fix)  # before the build
        build(out_dir)
        meta = json.loads(meta_path.read_text())
    collection = read_documents(path, name)
    if collection.sha256 != meta["sha256"]:
        raise SemidError(
            f"{path} changed since it was pinned (sha256 {collection.sha256[:12]} != {meta['sha256'][:12]}); "
            f"delete {path} and {meta_path} to rebuild it"
        )
    collection.metadata = meta
    return collection
