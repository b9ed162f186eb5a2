"""The names of training checkpoints, without torch: `semid`'s message after an interrupted
training names the step it resumes from."""

from __future__ import annotations

import os
import re
from pathlib import Path

PROGRESS_FILE = "trainer_state.json"  # in a checkpoint folder, written last: the folder is whole
STEP_DIR = re.compile(r"^step-(\d+)$")  # a checkpoint folder's name


def run_checkpoints(run: str | os.PathLike) -> Path:
    """The folder of a run's training checkpoints (its trainer's ``out_dir`` is ``RUN/train``)."""
    return Path(run) / "train" / "checkpoints"


def last_checkpoint_step(root: Path) -> int | None:
    """The step of the newest finished checkpoint under ``root``, or None. Read only (no recovery
    of a swap that was cut short, as `complete_checkpoints` does)."""
    try:
        entries = list(root.iterdir())
    except OSError:
        return None
    steps = [int(m.group(1)) for p in entries
             if (m := STEP_DIR.match(p.name)) and (p / PROGRESS_FILE).is_file()]  # fmt: skip
    return max(steps, default=None)
