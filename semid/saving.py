"""One save format for every trained module: models, quantizers, the image encoder.

A module folder holds ``config.json`` and ``model.safetensors``::

    {"format_version": 2, "kind": "model", "name": "mmgrec", "config": {...}, "versions": {...},
     "weights_sha256": "..."}

``kind`` says which registry ``name`` belongs to (``model`` or ``quantizer``, or a single class such
as ``image_encoder``); ``config`` is what the family needs to rebuild the module before its weights
are loaded. :func:`write_module` and :func:`read_module` are the only writer and reader, and
:func:`load_state` loads weights strictly, so every family saves and loads the same way
(cf. Hugging Face ``PyTorchModelHubMixin``).
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import json
import os
import platform
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save, save_file
from torch import Tensor, nn

import semid
from semid.atomic import (
    atomic_dir,
    atomic_file,
    check_file_sha256,
    check_replaceable,
    file_sha256,
    read_json,
    recover,
)
from semid.errors import SemidError

MODULE_FORMAT = 2
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def versions() -> dict[str, str]:
    """Versions of Python and the libraries that shape results (transformers' from its package
    metadata: importing it takes about a second)."""
    return {
        "semid": semid.__version__,
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": importlib.metadata.version("transformers"),
    }


def write_module(
    path: str | os.PathLike, kind: str, name: str, config: dict[str, Any], module: nn.Module
) -> None:
    """Write ``config.json`` and ``model.safetensors`` of ``module`` into the folder ``path``, atomically;
    SemidError if ``path`` is a file or a folder holding anything else (it would be lost)."""
    meta = {
        "format_version": MODULE_FORMAT,
        "kind": kind,
        "name": name,
        "config": config,
        "versions": versions(),
    }
    check_replaceable(path, {CONFIG_FILE, WEIGHTS_FILE}, kind)
    state = {k: v.detach().contiguous().cpu() for k, v in module.state_dict().items()}
    broken = _nan_tensors(state)
    if broken:  # `load_state` would refuse it: write nothing rather than an unloadable folder
        raise SemidError(f"not writing the {kind} to {path}: its tensor {broken[0]} holds NaN "
                         "values (its training diverged); train it again, e.g. with a lower lr")  # fmt: skip
    with atomic_dir(path) as tmp:
        save_file(_untie(state), str(tmp / WEIGHTS_FILE))
        # checked at load: bytes changed in place (a bad copy, bit rot) would load as a model
        meta["weights_sha256"] = file_sha256(tmp / WEIGHTS_FILE)
        (tmp / CONFIG_FILE).write_text(json.dumps(meta, indent=2) + "\n")


def _nan_tensors(state: dict[str, Tensor]) -> list[str]:
    """Names of the floating-point tensors of ``state`` that hold NaN (infinity is a legitimate
    value: an hrq ball of curvature 0 stores softplus^-1(0))."""
    return [k for k, v in state.items() if v.is_floating_point() and bool(v.isnan().any())]


def read_module(path: str | os.PathLike, kind: str, fix: str) -> tuple[str, dict[str, Any]]:
    """(name, config) of a module folder of ``kind``, after checking its files and format version;
    otherwise one SemidError line ending in ``fix``."""
    path = Path(path)
    recover(path)  # a writer killed mid-swap left the previous version aside: put it back
    config_file = path / CONFIG_FILE
    if not path.is_dir() or not config_file.is_file() or not (path / WEIGHTS_FILE).is_file():
        raise SemidError(
            f"{path} is not a saved {kind} (needs {CONFIG_FILE}, {WEIGHTS_FILE}); {fix}"
        )
    meta = read_json(config_file, fix)
    version = meta.get("format_version") if isinstance(meta, dict) else None
    if not isinstance(version, int) or not isinstance(meta.get("config"), dict):
        raise SemidError(f"{config_file} is not a semid {kind} config; {fix}")
    if version > MODULE_FORMAT:
        raise SemidError(f"{path} was written by a newer semid (format {version}); upgrade semid")
    if version < MODULE_FORMAT:
        raise SemidError(f"{path} was written by an older semid (format {version}); {fix}")
    if meta.get("kind") != kind:
        raise SemidError(f"{path} holds a {meta.get('kind')}, not a {kind}; {fix}")
    if not isinstance(meta.get("name"), str):
        raise SemidError(f"{config_file} has no {kind} name; {fix}")
    return meta["name"], meta["config"]


def damaged(path: str | os.PathLike, error: Exception) -> SemidError:
    """The one-line error for a tensor file (safetensors) that cannot be read: truncated, not
    safetensors, or unreadable."""
    return SemidError(f"{path} is damaged or unreadable ({error}); retrain or restore it")


def load_state(module: nn.Module, path: str | os.PathLike) -> None:
    """Load a ``model.safetensors`` file (or the one in a module folder) into ``module``, strictly."""
    path = Path(path)
    if path.is_dir():
        _check_recorded_sha256(path)
        path = path / WEIGHTS_FILE
    try:
        state = load_file(str(path))
    except (SafetensorError, OSError) as e:
        raise damaged(path, e) from None
    # shapes first: load_state_dict raises a bare RuntimeError on a size mismatch, even non-strict
    shapes = {k: v.shape for k, v in module.state_dict().items()}
    wrong = [k for k, v in state.items() if k in shapes and shapes[k] != v.shape]
    if wrong:
        raise SemidError(
            f"{path}: tensor {wrong[0]} has the wrong shape; it belongs to another model"
        )
    broken = _nan_tensors(state)
    if broken:  # a file that reads well but holds no model: every input would get one answer
        raise SemidError(f"{path}: tensor {broken[0]} holds NaN values; retrain or restore it")
    missing, unexpected = module.load_state_dict(state, strict=False)
    # tied weights are saved once; anything else missing or extra means another architecture
    missing = [k for k in missing if k not in tied_names(module)]
    if missing or unexpected:
        raise SemidError(
            f"{path} does not fit this {type(module).__name__} (missing {missing[:3]}, unexpected {unexpected[:3]}); "
            "it was trained with another config"
        )


def _check_recorded_sha256(folder: Path) -> None:
    """SemidError if the module folder's weights are not the bytes its config recorded (folders
    written before the record was kept have none, and are not checked)."""
    meta = read_json(folder / CONFIG_FILE, "retrain or restore it")
    recorded = meta.get("weights_sha256") if isinstance(meta, dict) else None
    check_file_sha256(
        folder / WEIGHTS_FILE, recorded, f"its {CONFIG_FILE}", "retrain or restore it"
    )


def _untie(state: dict[str, Tensor]) -> dict[str, Tensor]:
    """safetensors refuses shared storage: drop later names that alias an earlier tensor."""
    seen: set[tuple[int, int, tuple[int, ...]]] = set()
    out = {}
    for k, v in state.items():
        key = (v.untyped_storage().data_ptr(), v.storage_offset(), tuple(v.shape))
        if key in seen:
            continue
        seen.add(key)
        out[k] = v
    return out


def tied_names(module: nn.Module) -> set[str]:
    """Names of ``module``'s state entries that alias an earlier entry: saved once, tied again on load."""
    state = module.state_dict()
    return set(state) - set(_untie(state))


def write_rows(path: str | os.PathLike, rows: Tensor) -> None:
    """Write per-row vectors (N, D) kept beside an index (row i = index row i), atomically, with
    the SHA-256 of their values (checked by :func:`read_rows`)."""
    with atomic_file(Path(path), "wb") as f:
        f.write(checked_tensor_bytes({"embeddings": rows.float().contiguous()}))


def read_rows(path: str | os.PathLike) -> Tensor | None:
    """The vectors written by :func:`write_rows`, or None when the file is absent (older runs); a
    damaged file is one SemidError line naming it."""
    path = Path(path)
    if not path.is_file():
        return None
    tensors = load_checked_tensors(path)
    if "embeddings" not in tensors:
        raise damaged(path, KeyError("embeddings"))
    return tensors["embeddings"]


_CHECKED_ENTRY = "semid"  # a checked tensor file's one metadata entry: {"sha256": ...}


def tensors_sha256(tensors: dict[str, Any]) -> str:
    """The SHA-256 of tensors or arrays (torch or numpy): each one's name, dtype, shape and bytes,
    in name order, so that the same values give the same digest whichever library read them
    (dtypes by their common name, ``float32``; torch's own, ``bfloat16``, by torch's)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        value = tensors[name]
        if isinstance(value, Tensor):
            flat = value.detach().cpu().contiguous().reshape(-1)
            kind, data = str(value.dtype).removeprefix("torch."), flat.view(torch.uint8).numpy()
            shape = list(value.shape)
        else:
            array = np.asarray(value)
            kind, data = array.dtype.name, np.ascontiguousarray(array).reshape(-1).view(np.uint8)
            shape = list(array.shape)
        digest.update(json.dumps([name, kind, shape]).encode())
        digest.update(data)
    return digest.hexdigest()


def checked_tensor_bytes(tensors: dict[str, Tensor]) -> bytes:
    """safetensors bytes of ``tensors`` that record the SHA-256 of their values (one metadata
    entry: safetensors writes several in an order that varies, and the same tensors must give the
    same bytes); :func:`load_checked_tensors` checks it."""
    return save(tensors, metadata={_CHECKED_ENTRY: json.dumps({"sha256": tensors_sha256(tensors)})})


def load_checked_tensors(path: str | os.PathLike) -> dict[str, Tensor]:
    """The tensors of a file of :func:`checked_tensor_bytes`, after checking their SHA-256 (files
    written before it was recorded are read unchecked); a file cut short, of other bytes or
    unreadable is one SemidError line naming it."""
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            tensors = {name: f.get_tensor(name) for name in f.keys()}  # noqa: SIM118
        recorded = json.loads(meta[_CHECKED_ENTRY])["sha256"] if _CHECKED_ENTRY in meta else None
    except (SafetensorError, OSError, ValueError, KeyError, TypeError) as e:
        raise damaged(path, e) from None
    check_tensors_sha256(path, tensors, recorded)
    return tensors


def check_tensors_sha256(path: str | os.PathLike, tensors: dict[str, Any], recorded: Any) -> None:
    """SemidError naming ``path`` when the SHA-256 its writer ``recorded`` (None: none kept) is not
    that of the ``tensors`` read from it: values changed since (a bad copy, bit rot) would parse
    and give other scores."""
    if recorded is not None and tensors_sha256(tensors) != recorded:
        raise SemidError(f"{path} is damaged: its values are not those written (changed since); "
                         "retrain or restore it")  # fmt: skip
