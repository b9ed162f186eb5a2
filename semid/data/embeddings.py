"""Item embeddings with their keys, in .npy (+ keys file), .parquet or .safetensors.

Keys come from, in order of precedence: `keys_path` (a text file, one key per line), the file
itself (Parquet 'key' column, safetensors metadata 'keys' as a JSON list), else "0".."N-1".
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import torch
from safetensors import safe_open
from safetensors.numpy import save as save_safetensors_bytes
from torch import Tensor

from semid.atomic import atomic_file
from semid.data.tables import check_key_characters
from semid.data.text_files import read_lines
from semid.errors import SemidError
from semid.notes import note
from semid.wording import counted

FORMATS = (".npy", ".parquet", ".safetensors")
TENSOR_NAME = "embeddings"  # the tensor read from and written to .safetensors files


def load_embeddings(
    path: str | Path, keys_path: str | Path | None = None
) -> tuple[list[str], Tensor]:
    """Read (keys, (N, D) float32 embeddings) from .npy, .parquet or .safetensors; validated."""
    path = Path(path)
    suffix = _suffix(path)
    if not path.is_file():
        raise SemidError(f"embeddings file {path} not found; check the path")
    if path.stat().st_size == 0:
        raise SemidError(f"embeddings file {path} is empty; regenerate it")
    try:
        x, file_keys = _READERS[suffix](path)
    except SemidError:
        raise
    except Exception as e:  # a corrupt file: numpy, pyarrow and safetensors raise assorted types
        raise SemidError(
            f"cannot read {path} as {suffix}: {e}; check or regenerate the file"
        ) from None
    x = _as_matrix(x, str(path))
    if keys_path is not None:
        keys, keys_source = read_keys(keys_path), str(keys_path)
    elif file_keys is not None:
        keys, keys_source = file_keys, f"the keys stored in {path}"
    else:
        keys, keys_source = [str(i) for i in range(len(x))], "default keys"
        sidecar = path.with_suffix(".txt")
        hint = f"; give its keys file (--keys {sidecar})" if sidecar.is_file() else ""
        note(f"{path} holds no item keys and none were given: items are keyed by their row "
             f"numbers, 0 to {len(x) - 1}{hint}")  # fmt: skip
    _check_keys(keys, len(x), str(path), keys_source, keys_file=keys_path is not None)
    return keys, torch.from_numpy(x)


def save_embeddings(
    path: str | Path,
    keys: Sequence[str],
    x: Tensor | np.ndarray,
    keys_path: str | Path | None = None,
) -> None:
    """Write keys and (N, D) embeddings atomically, validated as on load.

    A .npy holds no keys: they go to `keys_path` (default: the same name with .txt), which is used
    for .npy only.
    """
    path = Path(path)
    suffix = _suffix(path)
    x = _as_matrix(
        x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x),
        "the embeddings to save",
    )
    keys = [str(k) for k in keys]
    _check_keys(keys, len(x), "the embeddings to save", "the keys to save")
    if suffix == ".npy":
        bad = [k for k in keys if "\n" in k or "\r" in k or not k]
        if bad:
            raise SemidError(
                f"key {bad[0]!r} is empty or holds a line break; a keys file needs one key "
                "per line: save as .parquet or .safetensors instead"
            )
        with atomic_file(Path(keys_path) if keys_path else path.with_suffix(".txt")) as f:
            f.write("".join(f"{k}\n" for k in keys))
        with atomic_file(path, "wb") as f:
            np.save(f, x)
    elif suffix == ".parquet":
        flat = pa.array(x.reshape(-1), type=pa.float32())
        table = pa.table(
            {"key": keys, "embedding": pa.FixedSizeListArray.from_arrays(flat, x.shape[1])}
        )
        with atomic_file(path, "wb") as f:
            pq.write_table(table, f)
    else:
        data = save_safetensors_bytes({TENSOR_NAME: x}, metadata={"keys": json.dumps(keys)})
        with atomic_file(path, "wb") as f:
            f.write(data)


def read_keys(path: str | Path) -> list[str]:
    """One key per line (a final newline is optional), without the spaces around it, as the
    interaction and item tables read ids; blank lines are an error, except at the end."""
    path = Path(path)
    keys = read_lines(path, "keys file")
    while keys and not keys[-1].strip():
        keys.pop()
    if not keys:
        raise SemidError(f"keys file {path} is empty; write one key per line")
    blank = [i for i, k in enumerate(keys) if not k.strip()]
    if blank:
        raise SemidError(
            f"keys file {path} has {len(blank)} blank line(s) (first: line {blank[0] + 1}); remove them"
        )
    keys = [k.strip() for k in keys]
    for number, key in enumerate(keys, start=1):
        check_key_characters(key, f"keys file {path} line {number}", "key")
    return keys


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in FORMATS:
        raise SemidError(
            f"unknown embeddings format '{path.suffix}' for {path}; use {', '.join(FORMATS)}"
        )
    return suffix


NPY_MAGIC = b"\x93NUMPY"  # the first bytes of every .npy file


def _read_npy(path: Path) -> tuple[np.ndarray, None]:
    with open(path, "rb") as f:
        if f.read(len(NPY_MAGIC)) != NPY_MAGIC:
            raise SemidError(f"{path} is not a .npy file (it lacks numpy's header); write the "
                             "vectors with np.save(path, x.astype(np.float32))")  # fmt: skip
    try:
        return np.load(path, allow_pickle=False), None
    except ValueError as e:
        if "allow_pickle" not in str(e):
            raise
        raise SemidError(f"{path} holds Python objects (an object array), which semid does not "
                         "unpickle; write numbers: np.save(path, x.astype(np.float32))") from None  # fmt: skip


def _read_parquet(path: Path) -> tuple[np.ndarray, list[str] | None]:
    table = pq.read_table(path)
    keys = None
    if "key" in table.column_names:
        keys = [str(k) for k in table.column("key").to_pylist()]
    if "embedding" in table.column_names:
        return _list_column(table.column("embedding").combine_chunks(), path), keys
    numeric = [n for n in table.column_names if n != "key"]
    kinds = {n: table.schema.field(n).type for n in numeric}
    non_numeric = [
        n for n, t in kinds.items() if not (pa.types.is_integer(t) or pa.types.is_floating(t))
    ]
    if not numeric or non_numeric:
        raise SemidError(
            f"{path}: expected a 'key' column plus an 'embedding' list column or numeric columns "
            f"(non-numeric: {', '.join(non_numeric) or 'none'}); rewrite it with save_embeddings"
        )
    # Nulls become NaN, which the validation reports by row.
    columns = [table.column(n).to_numpy(zero_copy_only=False).astype(np.float32) for n in numeric]
    return np.stack(columns, axis=1), keys


def _list_column(column: pa.Array, path: Path) -> np.ndarray:
    """(N, D) from a list, large_list or fixed_size_list column of equal-length rows."""
    t = column.type
    if not (pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t)):
        raise SemidError(
            f"{path}: column 'embedding' is {t}, not a list of numbers; store one list per row"
        )
    if column.null_count:
        raise SemidError(f"{path}: {column.null_count} row(s) have no embedding; drop or fill them")
    lengths = np.asarray(column.value_lengths())
    if len(lengths) == 0:
        return np.zeros((0, 0), np.float32)
    uneven = np.flatnonzero(lengths != lengths[0])
    if uneven.size:
        i = int(uneven[0])
        raise SemidError(
            f"{path}: row {i} has {lengths[i]} values but row 0 has {lengths[0]}; "
            "all embeddings need one length"
        )
    return column.flatten().to_numpy(zero_copy_only=False).reshape(len(column), int(lengths[0]))


def _read_safetensors(path: Path) -> tuple[np.ndarray, list[str] | None]:
    # framework "pt" reads bfloat16 too, which numpy cannot represent.
    with safe_open(path, framework="pt") as f:
        names, metadata = list(f.keys()), f.metadata() or {}
        if TENSOR_NAME not in names and len(names) != 1:
            found = ", ".join(names) or "none"
            raise SemidError(
                f"{path} has no tensor named '{TENSOR_NAME}' (found: {found}); rename it"
            )
        x = f.get_tensor(TENSOR_NAME if TENSOR_NAME in names else names[0])
    x = x.float().numpy() if x.is_floating_point() else x.numpy()
    if "keys" not in metadata:
        return x, None
    try:
        keys = json.loads(metadata["keys"])
    except json.JSONDecodeError:
        keys = None
    if not isinstance(keys, list):
        raise SemidError(
            f"{path}: metadata 'keys' is not a JSON list; rewrite it with save_embeddings"
        )
    return x, [str(k) for k in keys]


_READERS = {".npy": _read_npy, ".parquet": _read_parquet, ".safetensors": _read_safetensors}


def _as_matrix(x: np.ndarray, source: str) -> np.ndarray:
    """A C-contiguous, writable (N, D) float32 copy or view, checked for shape and finite values."""
    if x.ndim != 2:
        raise SemidError(
            f"{source} holds a {x.ndim}-D array of shape {tuple(x.shape)}; "
            "embeddings must be 2-D (N, D)"
        )
    if not (np.issubdtype(x.dtype, np.floating) or np.issubdtype(x.dtype, np.integer)):
        raise SemidError(f"{source} holds {x.dtype} values; embeddings must be real numbers")
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise SemidError(f"{source} is empty (shape {tuple(x.shape)}); it needs rows and columns")
    # Writable: pyarrow hands out read-only buffers, which torch warns about. Checked after the
    # cast, since a float64 beyond float32's range becomes inf.
    with np.errstate(over="ignore"):  # overflow is reported below, row by row
        x = np.require(x, np.float32, ["C_CONTIGUOUS", "WRITEABLE"])
    bad = np.flatnonzero(~np.isfinite(x).all(axis=1))
    if bad.size:
        raise SemidError(
            f"{source} has {bad.size} row(s) with NaN or inf (first: row {bad[0]}); "
            "drop or recompute them"
        )
    return x


def _check_keys(keys: Sequence[str], n: int, source: str, keys_source: str,
                keys_file: bool = False) -> None:  # fmt: skip
    """One unique key per row; a count that does not match names a ``keys_file``'s likely slip
    (a header line, a JSON list)."""
    if len(keys) != n:
        hint = ""
        if keys_file and keys and keys[0].lstrip().startswith("["):
            hint = " (it looks like JSON: write one key per line, no brackets or quotes)"
        elif keys_file and len(keys) == n + 1:
            hint = f" (is line 1, {keys[0]!r}, a header? a keys file has none)"
        raise SemidError(
            f"{source} has {counted(n, 'embedding')} but {keys_source} has "
            f"{counted(len(keys), 'key')}{hint}; they must match one to one"
        )
    if len(set(keys)) != len(keys):
        first: dict[str, int] = {}
        for i, k in enumerate(keys):
            if k in first:
                dups = len(keys) - len(set(keys))
                raise SemidError(
                    f"{keys_source} has {dups} duplicate key(s) (first: {k!r}, keys "
                    f"{first[k] + 1} and {i + 1}); keys must be unique"
                )
            first[k] = i
