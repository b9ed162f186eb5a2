"""Checkpoint folders written by all processes at once, made visible by one atomic rename."""

from __future__ import annotations

import dataclasses
import json
import os
import re
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from accelerate import Accelerator

from semid.atomic import write_json
from semid.training.config import TrainProgress

PROGRESS_FILE = "trainer_state.json"
_STEP_DIR = re.compile(r"^step-(\d+)$")


def checkpoint_dir(root: Path, step: int) -> Path:
    """The folder of the checkpoint taken after `step` optimizer steps."""
    return root / f"step-{step:08d}"


@contextmanager
def collective_atomic_dir(accelerator: Accelerator, final: Path) -> Iterator[Path]:
    """Yield a temporary folder that every process writes into; it replaces `final` as a whole.

    The temporary name is derived from `final` (not random) because every process must agree on it
    without talking. All processes must enter; `final` is assumed to be on a filesystem they share.
    A crash inside leaves `final` untouched.
    """
    tmp = final.with_name(f".{final.name}.tmp")
    if accelerator.is_main_process:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    accelerator.wait_for_everyone()
    yield tmp
    accelerator.wait_for_everyone()  # every process has finished writing its part
    if accelerator.is_main_process:
        _fsync_tree(tmp)
        old = final.with_name(f".{final.name}.old")
        if final.exists():
            shutil.rmtree(old, ignore_errors=True)
            os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    accelerator.wait_for_everyone()


def save_progress(folder: Path, progress: TrainProgress) -> None:
    """Write the trainer counters into a checkpoint folder; its presence marks the folder complete."""
    write_json(folder / PROGRESS_FILE, dataclasses.asdict(progress))


def load_progress(folder: Path) -> TrainProgress:
    """Read the trainer counters of a checkpoint folder."""
    return TrainProgress(**json.loads((folder / PROGRESS_FILE).read_text()))


def complete_checkpoints(root: Path) -> list[Path]:
    """Finished checkpoint folders under `root`, oldest first; half-written ones are ignored."""
    if not root.is_dir():
        return []
    found = [
        (int(m.group(1)), p)
        for p in root.iterdir()
        if (m := _STEP_DIR.match(p.name)) and (p / PROGRESS_FILE).is_file()
    ]
    return [p for _, p in sorted(found)]


def prune_checkpoints(root: Path, keep: int) -> None:
    """Delete all but the newest `keep` complete checkpoints, and leftovers of interrupted writes."""
    for old in complete_checkpoints(root)[:-keep]:
        shutil.rmtree(old, ignore_errors=True)
    for leftover in root.glob(".step-*"):
        shutil.rmtree(leftover, ignore_errors=True)


def _fsync_tree(folder: Path) -> None:
    # rename is atomic, but without fsync a power cut can still leave the renamed files empty
    for path in folder.rglob("*"):
        if path.is_file():
            with open(path, "rb") as f:
                os.fsync(f.fileno())
