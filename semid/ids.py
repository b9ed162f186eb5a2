"""SemanticIDs: the ID index. Item keys <-> unique code tuples, health stats, save and load."""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

import semid
from semid.atomic import (
    atomic_dir,
    check_file_sha256,
    check_replaceable,
    file_sha256,
    read_json,
    recover,
)
from semid.collisions import (
    CollisionReport,
    check_last_level_distances,
    collision_rate,
    group_ids,
    resolve_collisions,
)
from semid.errors import SemidError
from semid.json_values import is_integer
from semid.quantization import Quantizer
from semid.saving import read_module
from semid.trie import PrefixTrie, check_codes
from semid.wording import counted

FORMAT_VERSION = 1
QUANTIZER_DIR = "quantizer"
INDEX_FILES = ("config.json", "keys.json", "codes.safetensors", "stats.json")  # what save() writes
CHECKED_FILES = ("keys.json", "codes.safetensors")  # their SHA-256 is recorded in config.json


def level_perplexity(codes: Tensor, size: int) -> float:
    """exp(entropy) of the code distribution of one level (N,): size if uniform, 1 if collapsed."""
    p = torch.bincount(codes, minlength=size).double() / max(len(codes), 1)
    p = p[p > 0]
    return float(torch.exp(-(p * p.log()).sum()))


@dataclass
class SemanticIDs:
    """Unique semantic IDs for a catalogue: keys (N) and codes (N, L) with per-level sizes."""

    keys: list[str]
    codes: Tensor  # (N, L) int64, unique rows
    codebook_sizes: list[int]
    raw_codes: Tensor | None = None  # (N, L_raw) quantizer output before collision resolution
    collision: CollisionReport | None = None
    quantizer_spec: str | None = None
    metadata: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # the index's own copies: an add must not grow the caller's list, nor an edit of the
        # caller's tensor change the IDs behind the index's lookups
        self.keys = _string_keys(self.keys)
        self.codebook_sizes = _codebook_sizes(self.codebook_sizes)
        # a given tensor, or an array's memory, is the caller's
        self.codes = check_codes(self.codes, self.codebook_sizes).clone()
        if len(self.codes) != len(self.keys):
            raise SemidError(
                f"codes must be (N, L) with N = {len(self.keys)} keys, got {tuple(self.codes.shape)}"
            )
        if len(set(self.keys)) != len(self.keys):
            first: dict[str, int] = {}
            row, key = next((i, k) for i, k in enumerate(self.keys) if first.setdefault(k, i) != i)
            raise SemidError(f"item keys are not unique (first: {key!r} at rows {first[key]} and "
                             f"{row}); deduplicate them first")  # fmt: skip
        if collision_rate(self.codes) > 0:
            raise SemidError(
                "semantic IDs are not unique; build them with SemanticIDs.from_codes(..., strategy=...)"
            )
        self._row_of_key = {k: i for i, k in enumerate(self.keys)}
        self._row_of_code = {tuple(c): i for i, c in enumerate(self.codes.tolist())}

    def __repr__(self) -> str:
        strategy = self.collision.strategy if self.collision is not None else None
        return (f"SemanticIDs(items={len(self.keys):,}, levels={len(self.codebook_sizes)}, "
                f"codebook_sizes={self.codebook_sizes}, quantizer={self.quantizer_spec!r}, "
                f"collisions={strategy!r})")  # fmt: skip

    @classmethod
    def from_codes(
        cls,
        keys: Sequence[str],
        raw_codes: Tensor,
        codebook_sizes: Sequence[int],
        strategy: str = "extra-level",
        *,
        distances: Tensor | None = None,
        popularity: Tensor | None = None,
        quantizer_spec: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> SemanticIDs:
        """Resolve collisions in raw quantizer codes (N, L) with the named strategy and index them;
        codes, ``distances`` and ``popularity`` on any device (a GPU quantizer's), kept on the CPU."""
        keys = _string_keys(keys)
        if isinstance(codebook_sizes, str) or not all(
            is_integer(n) and n >= 1 for n in codebook_sizes
        ):
            raise SemidError(f"codebook_sizes must list each level's number of codes, e.g. "
                             f"[256, 256, 256], got {codebook_sizes!r}")  # fmt: skip
        raw_codes = check_codes(_on_cpu(raw_codes), list(codebook_sizes))
        distances, popularity = _on_cpu(distances), _on_cpu(popularity)
        if len(raw_codes) == 0:
            raise SemidError("no codes given (N = 0); index at least one item")
        if len(keys) != len(raw_codes):  # said of the codes as given, before an extra level
            raise SemidError(f"{len(keys)} keys for {len(raw_codes)} codes (shape "
                             f"{tuple(raw_codes.shape)}); give one key per row of codes")  # fmt: skip
        codes, sizes, report = resolve_collisions(
            raw_codes, list(codebook_sizes), strategy, distances=distances, popularity=popularity
        )
        return cls(keys, codes, sizes, raw_codes, report, quantizer_spec, dict(metadata or {}))

    def __len__(self) -> int:
        return len(self.keys)

    def __contains__(self, key: object) -> bool:
        """Whether ``key`` is an indexed item key."""
        return key in self._row_of_key

    @property
    def levels(self) -> int:
        """Number of code levels L (including an extra disambiguation level, if any)."""
        return self.codes.shape[1]

    def code_of(self, key: str) -> tuple[int, ...]:
        """The code tuple of an item key."""
        if key not in self._row_of_key:
            raise SemidError(f"unknown item key {key!r}")
        return tuple(self.codes[self._row_of_key[key]].tolist())

    def key_of(self, code: Sequence[int] | Tensor) -> str | None:
        """The item key of one code tuple (L,), or None if no item has it."""
        if isinstance(code, Tensor) and code.ndim != 1:
            raise SemidError(f"key_of takes one ID (L,), got shape {tuple(code.shape)}; use "
                             "rows_of_codes for several")  # fmt: skip
        code = tuple(int(c) for c in code)
        if len(code) != self.levels:
            raise SemidError(f"key_of takes an ID of {self.levels} codes (one per level), got "
                             f"{len(code)}: {list(code)}")  # fmt: skip
        row = self._row_of_code.get(code)
        return None if row is None else self.keys[row]

    def rows_of_codes(self, codes: Tensor) -> Tensor:
        """Item row (…,) of each code tuple in codes (…, L); -1 where no item has that ID."""
        codes = torch.as_tensor(codes)
        if codes.ndim == 0 or codes.shape[-1] != self.levels:
            raise SemidError(
                f"codes must have shape (..., {self.levels}), got {tuple(codes.shape)}"
            )
        flat = codes.reshape(-1, codes.shape[-1]).tolist()
        rows = [self._row_of_code.get(tuple(c), -1) for c in flat]
        return torch.tensor(rows, dtype=torch.long).reshape(codes.shape[:-1])

    def rows_of_keys(self, keys: Sequence[str]) -> Tensor:
        """Item rows (M,) of keys; unknown keys raise SemidError."""
        keys = _string_keys(keys)
        missing = [k for k in keys if k not in self._row_of_key]
        if missing:
            raise SemidError(f"{len(missing)} unknown item keys, e.g. {missing[0]!r}")
        return torch.tensor([self._row_of_key[k] for k in keys], dtype=torch.long)

    def sha256(self) -> str:
        """A content hash of the keys, their IDs and the codebook sizes, in row order: two indexes
        that map every key to the same ID in the same order hash alike (a model trained on one fits
        the other; rows are a model's item ids, so another order is another index to it)."""
        h = hashlib.sha256(json.dumps([self.keys, list(self.codebook_sizes)]).encode("utf-8"))
        h.update(self.codes.to(torch.int64).contiguous().numpy().tobytes())
        return h.hexdigest()

    def trie(self, codebook_sizes: Sequence[int] | None = None) -> PrefixTrie:
        """A PrefixTrie over all IDs (for constrained decoding), with the index's codebook sizes or
        a model's (which may hold spare tokens for items added later)."""
        return PrefixTrie.from_codes(self.codes, list(codebook_sizes or self.codebook_sizes))

    def check_new_keys(self, keys: Sequence[str]) -> None:
        """SemidError unless ``keys`` are distinct and none is indexed yet (checked again by `add`;
        callers check first to fail before embedding the new items)."""
        repeated = sorted(k for k, n in Counter(keys).items() if n > 1)
        if repeated:
            raise SemidError(
                f"key {repeated[0]!r} is given more than once among the new items; list each item once"
            )
        clash = [k for k in keys if k in self._row_of_key]
        if clash:
            raise SemidError(
                f"{counted(len(clash), 'key is', 'keys are')} already indexed, e.g. {clash[0]!r}; give new keys"
            )

    def add(
        self, keys: Sequence[str], raw_codes: Tensor, distances: Tensor | None = None
    ) -> Tensor:
        """Index new items in place: their raw codes (M, L_raw) get the first free disambiguation
        token. Without an extra level, a new item whose ID is taken moves to the nearest free
        last-level code of its prefix, as ``reassign`` does, when ``distances`` (M, K_last: its
        distances to each last-level code) are given (new items take codes in their order, the
        first keeping a code they share); otherwise its ID must be free. An index with an extra
        level (``reassign`` adds one when the codes run out) needs no ``distances`` and leaves
        them unused. Codes and distances may be on any device. Returns the new items' codes (M, L)."""
        keys = _string_keys(keys)
        has_extra = self.collision is not None and self.collision.extra_level
        raw_levels = self.levels - has_extra
        raw_codes = check_codes(
            _on_cpu(raw_codes),
            self.codebook_sizes[:raw_levels],
            "new items' codes",
        )
        distances = _on_cpu(distances)
        if len(keys) != len(raw_codes):
            raise SemidError(f"{len(keys)} keys for {len(raw_codes)} codes")
        if distances is not None and not has_extra:
            distances = check_last_level_distances(distances, len(keys), self.codebook_sizes[-1])
        self.check_new_keys(keys)
        new_codes: list[list[int]] = []
        taken: dict[tuple[int, ...], int] = {}  # codes given in this call, not yet in the index
        moved = 0  # as the build's report counts: a changed code or a non-zero extra token
        for i, raw in enumerate(raw_codes.tolist()):
            code = list(raw)
            if has_extra:
                token = 0
                while tuple([*code, token]) in self._row_of_code or tuple([*code, token]) in taken:
                    token += 1
                code.append(token)
                moved += token > 0
            elif distances is not None and (
                tuple(code) in self._row_of_code or tuple(code) in taken
            ):
                code[-1] = self._nearest_free_last_code(code[:-1], distances[i], taken)
                moved += 1
            if tuple(code) in self._row_of_code or tuple(code) in taken:
                raise SemidError(
                    f"new item's ID {tuple(code)} is taken and this index has no extra level to disambiguate"
                )
            taken[tuple(code)] = len(self.keys) + len(new_codes)
            new_codes.append(code)
        self._row_of_code.update(taken)  # only once every new item has an ID
        if self.collision is not None:
            self.collision = replace(self.collision, items_moved=self.collision.items_moved + moved)
        added = torch.tensor(new_codes, dtype=torch.long).reshape(len(keys), self.levels)
        if has_extra and len(added):
            self.codebook_sizes[-1] = max(self.codebook_sizes[-1], int(added[:, -1].max()) + 1)
        for k in keys:
            self._row_of_key[k] = len(self.keys)
            self.keys.append(k)
        self.codes = torch.cat([self.codes, added])
        if self.raw_codes is not None:
            self.raw_codes = torch.cat([self.raw_codes, raw_codes])
        return added

    def _nearest_free_last_code(
        self, prefix: list[int], distances: Tensor, taken: dict[tuple[int, ...], int]
    ) -> int:
        """The free last-level code under ``prefix`` nearest by ``distances`` (K_last,)."""
        for code in torch.argsort(distances, stable=True).tolist():
            if (*prefix, code) not in self._row_of_code and (*prefix, code) not in taken:
                return code
        raise SemidError(
            f"every last-level code under the prefix {tuple(prefix)} is taken, so a new item there "
            "has no ID; rebuild the index with --collisions extra-level (or popularity), which "
            "gives growing catalogues room"
        )

    def stats(self) -> dict[str, Any]:
        """Health stats: per-level usage and perplexity, collision rates, items per ID, and the
        share of the indexed vectors' spread their quantized IDs lose (``reconstruction_error``,
        measured when the index was built; None for an index built before it was, or by a
        quantizer that cannot decode)."""
        levels = []
        for level, size in enumerate(self.codebook_sizes):
            col = self.codes[:, level]
            used = int(torch.unique(col).numel())
            levels.append(
                {
                    "level": level,
                    "codebook_size": size,
                    "used": used,
                    "usage": used / size,
                    "perplexity": level_perplexity(col, size),
                }
            )
        raw = self.raw_codes if self.raw_codes is not None else self.codes
        _, counts = group_ids(raw)
        return {
            "items": len(self),
            "levels": self.levels,
            "codebook_sizes": list(self.codebook_sizes),
            "quantizer": self.quantizer_spec,
            "collision_strategy": self.collision.strategy if self.collision else None,
            "collision_rate_before": collision_rate(raw),
            "collision_rate_after": collision_rate(self.codes),
            "max_items_per_id_before": int(counts.max()) if len(counts) else 0,
            "items_moved": self.collision.items_moved if self.collision else 0,
            "id_space_bits": sum(math.log2(s) for s in self.codebook_sizes),
            "reconstruction_error": self.metadata.get("reconstruction_error"),
            "per_level": levels,
        }

    def save(
        self,
        path: str | os.PathLike,
        quantizer: Quantizer | None = None,
        keep_other_files: bool = False,
        extra_files: dict[str, str] | None = None,
    ) -> None:
        """Write the index folder atomically: config.json, codes.safetensors, keys.json, stats.json, and the
        quantizer that made the codes (in quantizer/) so new items can be encoded later.

        ``keep_other_files``: the new version keeps what else the folder held (a task's image
        encoder, features or training targets, and the quantizer when none is given): an index
        grown by new items. Otherwise the folder holds only what this call writes.
        ``extra_files``: text files (name -> content) written in the same step, replacing any kept."""
        config = {
            "format_version": FORMAT_VERSION,
            "semid_version": semid.__version__,
            "num_items": len(self),
            "codebook_sizes": self.codebook_sizes,
            "quantizer_spec": self.quantizer_spec,
            "collision": self.collision.to_dict() if self.collision else None,
            "metadata": self.metadata,
        }
        # a folder that is not an index (a run, the user's files) would be lost: refused
        check_replaceable(path, {*INDEX_FILES, QUANTIZER_DIR}, "index", marker="codes.safetensors")
        tensors = {"codes": self.codes.contiguous()}
        if self.raw_codes is not None:
            tensors["raw_codes"] = self.raw_codes.contiguous()
        with atomic_dir(path) as tmp:
            if keep_other_files:
                own = {*INDEX_FILES, *([QUANTIZER_DIR] if quantizer is not None else [])}
                _carry_over(Path(path), tmp, own)
            self._write(tmp, config, tensors)
            for name, text in (extra_files or {}).items():
                (tmp / name).write_text(text)
            if quantizer is not None:
                quantizer.save_pretrained(tmp / QUANTIZER_DIR)

    def _write(self, folder: Path, config: dict, tensors: dict[str, Tensor]) -> None:
        (folder / "keys.json").write_text(json.dumps(self.keys, ensure_ascii=False) + "\n")
        save_file(tensors, str(folder / "codes.safetensors"))
        # the bytes of the IDs' files, checked on load: a changed byte could rename a key or move
        # a code and still parse (weights keep the same record: semid.saving)
        config = {**config, "files_sha256": {n: file_sha256(folder / n) for n in CHECKED_FILES}}
        (folder / "config.json").write_text(json.dumps(config, indent=2) + "\n")
        (folder / "stats.json").write_text(json.dumps(self.stats(), indent=2) + "\n")

    @classmethod
    def load(cls, path: str | os.PathLike) -> SemanticIDs:
        """Read an index folder written by save(); one SemidError line if it is not one or is damaged."""
        path = Path(path)
        recover(path)  # a writer killed mid-swap left the previous version aside: put it back
        fix = index_fix(path)
        needed = ["config.json", "keys.json", "codes.safetensors"]
        if (path / "manifest.json").is_file() and (path / "index").is_dir():
            raise SemidError(f"{path} is a run, not an index; its index is {path / 'index'}")
        if path.exists() and not path.is_dir():
            raise SemidError(f"{path} is a file, not an index folder; pass the folder `semid "
                             "index build` wrote (a run's own is RUN/index)")  # fmt: skip
        if not path.is_dir() or any(not (path / name).is_file() for name in needed):
            raise SemidError(
                f"{path} is not a semantic-ID index (needs {', '.join(needed)}); {fix}"
            )
        config = read_json(path / "config.json", fix)
        version = config.get("format_version") if isinstance(config, dict) else None
        if not isinstance(version, int):
            raise SemidError(f"{path}/config.json is not a semid index config; {fix}")
        if version > FORMAT_VERSION:
            raise SemidError(
                f"{path} was written by a newer semid (format {version}); upgrade semid"
            )
        sizes, metadata = config.get("codebook_sizes"), config.get("metadata", {})
        if not isinstance(sizes, list) or not all(type(s) is int and s >= 1 for s in sizes):
            raise SemidError(
                f"{path}/config.json: codebook_sizes must be a list of positive integers; {fix}"
            )
        if not isinstance(metadata, dict):
            raise SemidError(f"{path}/config.json: metadata must be a JSON object; {fix}")
        _check_recorded_files(path, config.get("files_sha256"), fix)
        keys = read_json(path / "keys.json", fix)
        if not isinstance(keys, list) or not all(isinstance(k, str) for k in keys):
            raise SemidError(f"{path}/keys.json must be a JSON list of item keys (strings); {fix}")
        try:
            tensors = load_file(str(path / "codes.safetensors"))
        except SafetensorError as e:
            raise SemidError(f"{path}/codes.safetensors is damaged ({e}); {fix}") from None
        # a float or bool tensor would be cast to int64 silently: IDs that were never built
        bad = [n for n in ("codes", "raw_codes") if n in tensors and (tensors[n].is_floating_point()
               or tensors[n].is_complex() or tensors[n].dtype == torch.bool)]  # fmt: skip
        if "codes" not in tensors or bad:
            found = f"a {tensors[bad[0]].dtype} {bad[0]!r} tensor" if bad else "no 'codes' tensor"
            raise SemidError(f"{path}/codes.safetensors holds {found}, not integer codes; {fix}")
        try:
            collision = CollisionReport(**config["collision"]) if config.get("collision") else None
        except TypeError as e:
            raise SemidError(f"{path}/config.json: collision is damaged ({e}); {fix}") from None
        try:
            ids = cls(
                keys=keys,
                codes=tensors["codes"],
                codebook_sizes=list(sizes),
                raw_codes=tensors.get("raw_codes"),
                collision=collision,
                quantizer_spec=config.get("quantizer_spec"),
                metadata=metadata,
            )
        except SemidError as e:  # the files disagree (key count, code range, unique IDs)
            raise SemidError(
                f"{path}: keys.json, codes.safetensors and config.json do not agree ({e}); {fix}"
            ) from None
        return ids


def _check_recorded_files(path: Path, recorded: Any, fix: str) -> None:
    """SemidError naming the first of the index's ``CHECKED_FILES`` whose bytes are not those its
    config.json recorded (indexes written before the record was kept have none, and are not
    checked)."""
    if not isinstance(recorded, dict):
        return
    for name in CHECKED_FILES:
        check_file_sha256(path / name, recorded.get(name), "the index's config.json", fix)


def quantizer_dim(index_path: str | os.PathLike) -> int | None:
    """The width of the vectors the quantizer saved with an index reads (from its config, without
    loading its weights); None when it cannot tell, which loading the quantizer then explains."""
    try:
        _, config = read_module(Path(index_path) / QUANTIZER_DIR, "quantizer", "")
    except SemidError:
        return None
    dim = config.get("dim")
    return dim if isinstance(dim, int) and not isinstance(dim, bool) else None


def index_fix(index_path: str | os.PathLike) -> str:
    """How to mend a damaged index folder: build it again, or, for a run's own copy (which a
    rebuilt index would not fit), copy back the index the run was trained with."""
    run = Path(index_path).parent
    if (run / "manifest.json").is_file():
        return (f"copy back the index run {run} was trained with, or retrain the run "
                f"(`semid train ... --out {run}`)")  # fmt: skip
    return "build it again with `semid index build`"


def load_quantizer(index_path: str | os.PathLike) -> Quantizer:
    """The quantizer saved with an index folder."""
    path = Path(index_path) / QUANTIZER_DIR
    if not path.is_dir():
        raise SemidError(f"{index_path} has no saved quantizer; {index_fix(index_path)}")
    return Quantizer.from_pretrained(path)


def _carry_over(old: Path, new: Path, own: set[str]) -> None:
    """Copy what a task keeps beside the IDs in an index folder (an image encoder, document
    features, training targets) into its new version, so saving the grown index keeps them."""
    if old.is_dir():  # `own` names top-level entries only (quantizer/ has a config.json too)
        top = str(old)
        shutil.copytree(old, new, dirs_exist_ok=True,
                        ignore=lambda folder, names: own if folder == top else ())  # fmt: skip


def _on_cpu(values: Any) -> Any:
    """A tensor on any device moved to the CPU (a GPU quantizer's codes); anything else as given."""
    return values.cpu() if isinstance(values, Tensor) else values


def _string_keys(keys: Sequence[str]) -> list[str]:
    """``keys`` as a list; SemidError naming the first that is not a string (an index saved with
    integer keys could not be loaded back)."""
    if isinstance(keys, str):  # list("k1") would be the keys "k" and "1"
        raise SemidError(
            f"item keys must be a list of strings, got the string {keys!r}; pass [{keys!r}]"
        )
    keys = list(keys)
    bad = next((k for k in keys if not isinstance(k, str)), None)
    if bad is not None:
        raise SemidError(f"item keys must be strings, got {type(bad).__name__} {bad!r}; pass "
                         "[str(k) for k in keys]")  # fmt: skip
    return keys


def _codebook_sizes(sizes: Sequence[int]) -> list[int]:
    """``sizes`` as a list of ints >= 1; SemidError for another kind of size (a float, a string)."""
    if isinstance(sizes, Tensor | np.ndarray):
        sizes = sizes.tolist()
    if isinstance(sizes, str | bytes) or not isinstance(sizes, Sequence):
        raise SemidError(f"codebook sizes must be a list of integers, got {type(sizes).__name__}")
    out = []
    for size in sizes:
        if isinstance(size, bool) or not isinstance(size, int | np.integer) or size < 1:
            raise SemidError(f"codebook sizes must be integers >= 1, got {size!r}")
        out.append(int(size))
    return out


def codes_of_rows(codes: Tensor, rows: Tensor) -> Tensor:
    """Codes (..., L) of index rows (...) of ``codes`` (N, L); -1 codes where the row is -1 (PAD)."""
    return codes[rows.clamp(min=0)].masked_fill((rows < 0)[..., None], -1)
