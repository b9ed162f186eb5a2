"""Checkpoint folders written by all processes at once, swapped into place in one atomic step.

Resume checks a checkpoint before loading it: every tensor file must parse (safetensors headers,
torch archives loaded with `weights_only=True`), so a damaged newest checkpoint is skipped for the
previous one, and a file that would run pickled code is refused.
"""

from __future__ import annotations

import ast
import dataclasses
import json
import logging
import os
import pickle
import re
import shutil
import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from accelerate import Accelerator
from accelerate.utils import load as accelerate_load
from safetensors import SafetensorError, safe_open
from torch import nn

from semid.atomic import (
    WriteFailedError,
    fault_point,
    finish_tree,
    recover,
    remove_stale,
    swap_into_place,
    write_failure,
    write_json,
)
from semid.errors import SemidError
from semid.saving import tied_names
from semid.training.checkpoint_names import PROGRESS_FILE, STEP_DIR
from semid.training.config import TrainProgress

_STEP_BACKUP = re.compile(r"^\.(step-\d+)\.old-\d+$")
_TORCH_SUFFIXES = {".bin", ".pkl", ".pt", ".pth"}
# accelerate (prefixed "[RANK n] "): names it dropped from a state dict because they alias another
_REMOVED_SHARED = re.compile(r"Removed shared tensor (\{[^}]*\})")
# what torch's weights-only unpickler says when a file asks for a global it will not import
_UNSAFE_PICKLE = re.compile(r"unsupported global|global \S+ whose module|unsupported class", re.I)
# what a truncated or scrambled torch file raises; anything else is a real bug and propagates
# what torch's weights-only unpickler raises on a truncated or corrupt byte stream
_DAMAGED = (RuntimeError, EOFError, pickle.UnpicklingError, ValueError, KeyError, OSError,
            IndexError, TypeError, AttributeError, AssertionError, struct.error, MemoryError,
            OverflowError)  # fmt: skip


class DamagedCheckpointError(SemidError):
    """A checkpoint file is truncated or corrupt (not unsafe: unsafe files raise plain SemidError)."""


class _DeclaredTiesFilter(logging.Filter):
    """Drops accelerate's "Removed shared tensor {...}" warning when the names it removed are
    exactly the model's own tied weights: those are saved once by design and tied again when the
    model is built (`semid.saving.load_state` accepts no other missing name), so the warning,
    printed at every save, tells the user nothing. Any other removal still warns."""

    def __init__(self, tied: set[str]) -> None:
        super().__init__()
        self.tied = tied

    def filter(self, record: logging.LogRecord) -> bool:
        found = _REMOVED_SHARED.search(record.getMessage())
        if not found or not self.tied:
            return True
        try:
            removed = ast.literal_eval(found.group(1))
        except (ValueError, SyntaxError):  # another wording: keep the warning
            return True
        return removed != self.tied


@contextmanager
def quiet_declared_ties(model: nn.Module) -> Iterator[None]:
    """Within the block, accelerate saves ``model``'s tied weights once without warning about it."""
    logger = logging.getLogger("accelerate.utils.other")  # where accelerate's saver logs
    quiet = _DeclaredTiesFilter(tied_names(model))
    logger.addFilter(quiet)
    try:
        yield
    finally:
        logger.removeFilter(quiet)


def checkpoint_dir(root: Path, step: int) -> Path:
    """The folder of the checkpoint taken after `step` optimizer steps."""
    return root / f"step-{step:08d}"


def load_torch_file(path: Path) -> Any:
    """`torch.load` with `weights_only=True` (plus numpy's RNG state types, as accelerate allows).

    Raises DamagedCheckpointError for a truncated or corrupt file and SemidError for one that
    holds pickled code.
    """
    try:
        return accelerate_load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _UNSAFE_PICKLE.search(str(e)):
            raise SemidError(
                f"{path} holds pickled objects that could run code, which semid never writes; "
                "refusing to load it (delete it if you did not put it there)"
            ) from None
        raise DamagedCheckpointError(f"{path.name}: not a readable torch file") from None
    except _DAMAGED as e:
        reason = str(e).split(". ")[0].strip() or type(e).__name__
        raise DamagedCheckpointError(f"{path.name}: {reason}") from None


def check_checkpoint(folder: Path) -> None:
    """Read every file of a checkpoint folder without touching any model; raise if one is bad.

    DamagedCheckpointError names the first damaged file; SemidError refuses pickled code.
    """
    try:
        progress = load_progress(folder)
    except (OSError, ValueError, TypeError) as e:
        raise DamagedCheckpointError(f"{PROGRESS_FILE}: {e}") from None
    # what accelerate's save_state writes: without the RNG states a resume is no longer exact
    needed = ["optimizer.bin", "scheduler.bin",
              *(f"random_states_{i}.pkl" for i in range(progress.num_processes))]  # fmt: skip
    missing = [name for name in needed if not (folder / name).is_file()]
    if not any(folder.glob("model*.safetensors")):
        missing.insert(0, "model.safetensors")
    if missing:
        raise DamagedCheckpointError(f"{missing[0]} is missing")
    for path in sorted(folder.rglob("*")):
        if path.suffix == ".safetensors":
            try:
                with safe_open(path, framework="pt") as f:
                    f.keys()  # the header covers the whole file, so a cut file fails here
            except (SafetensorError, OSError) as e:
                raise DamagedCheckpointError(f"{path.name}: {e}") from None
        elif path.suffix in _TORCH_SUFFIXES:
            load_torch_file(path)


@contextmanager
def collective_atomic_dir(accelerator: Accelerator, final: Path) -> Iterator[Path]:
    """Yield a temporary folder that every process writes into; it replaces `final` as a whole.

    The temporary name is derived from `final` (not random) because every process must agree on it
    without talking. All processes must enter; `final` is assumed to be on a filesystem they share.
    A crash inside leaves `final` untouched; a full disk raises DiskFullError after removing the
    temporary folder, so a rerun starts clean. Fault points: `checkpoint.written`,
    `checkpoint.old_moved`, `checkpoint.swapped`.
    """
    tmp = final.with_name(f".{final.name}.tmp")
    main = accelerator.is_main_process
    if main:
        recover(final)
        remove_stale(final)
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    try:
        yield tmp
        accelerator.wait_for_everyone()  # every process has finished writing its part
        if main:
            finish_tree(tmp)
            fault_point("checkpoint.written")
            swap_into_place(tmp, final, label="checkpoint")
    except BaseException as e:
        failure = write_failure(e, final) if main or isinstance(e, WriteFailedError) else None
        if main:
            shutil.rmtree(tmp, ignore_errors=True)
        if failure is not None:
            raise failure from None
        raise
    accelerator.wait_for_everyone()


def save_progress(folder: Path, progress: TrainProgress) -> None:
    """Write the trainer counters into a checkpoint folder; its presence marks the folder complete."""
    write_json(folder / PROGRESS_FILE, dataclasses.asdict(progress))


def load_progress(folder: Path) -> TrainProgress:
    """Read the trainer counters of a checkpoint folder."""
    return TrainProgress(**json.loads((folder / PROGRESS_FILE).read_text()))


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint folders under `root`, oldest first; half-written ones are ignored.

    A checkpoint whose swap into place was interrupted is put back first (semid.atomic.recover).
    """
    if not root.is_dir():
        return []
    for entry in list(root.iterdir()):
        if m := _STEP_BACKUP.match(entry.name):
            recover(root / m.group(1))
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := STEP_DIR.match(p.name)) and (p / PROGRESS_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and leftovers of interrupted writes.

    A checkpoint is renamed away before it is deleted, so a kill mid-delete leaves no half folder
    that looks complete.
    """
    for old in complete_checkpoints(root)[:-keep]:
        doomed = old.with_name(f".{old.name}.del-{os.getpid()}")
        os.rename(old, doomed)
        shutil.rmtree(doomed, ignore_errors=True)
    for leftover in root.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)
