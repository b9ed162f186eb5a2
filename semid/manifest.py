"""A run folder's manifest (``manifest.json``: format, task, parts), read and checked without
loading anything heavy: the CLI checks a run named on its command line before importing torch.
The rest of a run (its config, index and model) is in :mod:`semid.runs`."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

import semid
from semid.atomic import (
    changes_in_progress,
    read_json,
    recover,
    remove_stale,
    roll_back,
    unfinished_changes,
)
from semid.errors import SemidError, not_found
from semid.locking import can_write, current_writer, write_lock
from semid.notes import note

# A run's format, raised when a run's files change in a way an older semid would misread (it then
# says "written by a newer semid; upgrade"); every earlier format is still read. 2: retrieval runs'
# BM25 index (lexical.safetensors) as written since 2026-12-05, which format-1 readers took for
# damaged.
RUN_FORMAT = 2
MANIFEST = "manifest.json"
RUN_CONFIG = "config.json"
METRICS = "metrics.json"
PARTS = {"index": "index", "model": "model"}
# how long reading a run waits for a live writer to end a multi-part change (a retrain's final
# write or an `index add` takes seconds; longer means it is stuck, and the reader says so)
CHANGE_WAIT_S = 120.0
READ_PARTS = (*PARTS.values(), RUN_CONFIG, MANIFEST)  # what a reader of a run reads
# what a run folder holds besides its manifest (an interrupted run may hold these without one)
RUN_ENTRIES = {
    *PARTS.values(),
    "train",
    RUN_CONFIG,
    METRICS,
    "eval_queries.json",  # retrieve
    "later.jsonl",  # retrieve
}


def check_out_of_run(out: str | os.PathLike, run: str | os.PathLike) -> None:
    """SemidError if an output file ``out`` would replace a part of the run (its manifest, config,
    metrics, index, model or checkpoints); any other place, in the run folder too, is fine."""
    inside = Path(out).resolve()
    folder = Path(run).resolve()
    if folder not in inside.parents:
        return
    part = inside.relative_to(folder).parts[0]
    if part in RUN_ENTRIES or part == MANIFEST:
        raise SemidError(f"--out {out} is part of the run {run} ({part}); write the answers to "
                         "another file")  # fmt: skip


def run_containing(path: str | os.PathLike) -> Path | None:
    """The run folder that ``path`` lies inside (through symlinks): the nearest folder above it
    whose manifest.json is a semid run's, a JSON object naming its task (another tool's
    manifest.json makes no run); None when there is none."""
    for folder in Path(path).resolve().parents:
        try:
            manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        except (OSError, ValueError):  # none, unreadable, or no JSON
            continue
        if names_a_task(manifest):
            return folder
    return None


def names_a_task(manifest: Any) -> bool:
    """Whether a manifest.json's content is a semid run's: a JSON object naming its task."""
    return isinstance(manifest, dict) and isinstance(manifest.get("task"), str)


def read_manifest(run: str | os.PathLike) -> dict[str, Any]:
    """The run's manifest, checked: present, readable, of a format and semid version this semid reads."""
    run = Path(run)
    recover(run)
    undo_killed_writes(run)
    fix = "train a run with `semid train ...`"
    if not (run / MANIFEST).is_file():
        writer = current_writer(run)
        if writer is not None:
            raise SemidError(
                f"{run} is still being trained (semid process {writer}); wait for it to finish"
            )
        if not os.path.lexists(run):
            raise not_found(run, f"check the path, or {fix}")
        if not run.is_dir():
            raise SemidError(f"{run} is not a folder; {fix}")
        if (run / "codes.safetensors").is_file():  # what `semid index build` writes
            raise SemidError(f"{run} is an index (from `semid index build`), not a run; pass the "
                             "folder `semid train` wrote (its --out)")  # fmt: skip
        if any((run / "train" / "checkpoints").glob("step-*")):  # read without loading accelerate
            raise SemidError(f"{run} holds an unfinished training (checkpoints, no {MANIFEST}); run "
                             "the same `semid train` command again to resume it, then this one")  # fmt: skip
        raise SemidError(f"{run} is not a run directory (no {MANIFEST}); {fix}")
    manifest = read_json(run / MANIFEST, fix)
    if not names_a_task(manifest):
        raise SemidError(f"{run / MANIFEST} is not a semid run manifest; {fix}")
    version = manifest.get("format_version", 0)
    if not isinstance(version, int) or version > RUN_FORMAT:
        raise SemidError(
            f"{run} was written by a newer semid (run format {version}); upgrade semid"
        )
    saved = str(manifest.get("semid_version", "0"))
    if _major_minor(saved) > _major_minor(semid.__version__):
        raise SemidError(
            f"{run} was written by semid {saved}, newer than this {semid.__version__}; upgrade semid"
        )
    parts = manifest.get("parts", {})
    if not isinstance(parts, dict) or not all(isinstance(f, str) for f in parts.values()):
        raise SemidError(f"{run / MANIFEST}: parts must be a JSON object of folder names; {fix}")
    for part, folder in parts.items():
        if not (run / folder).is_dir():
            raise SemidError(
                f"{run} has no {part} folder ({folder}/); the run is incomplete: retrain it"
            )
    return manifest


def undo_killed_writes(run: Path) -> None:
    """Put back the earlier version of a run whose writer was killed inside one of its multi-part
    changes (a retrain's final write, an `index add`): without this, the run would hold a new index
    beside an old model, and an add could not be retried (its items already indexed). Done under
    the run's write lock; when another process holds it, or the folder is read-only, it is left to
    the next writer."""
    wait_for_changes(run)
    if not unfinished_changes(run):
        return
    try:
        with write_lock(run, f"run {run}"):
            undone = roll_back(run)
    except SemidError:
        return
    if set(undone) & set(READ_PARTS):
        note(f"{run} was left half changed by a semid command stopped inside its final write (a "
             "retrain or an `index add`); it is as it was before that command again: run the "
             "command again to make its change")  # fmt: skip
    elif undone:  # only what a stopped add trained beside the run (a prompt session's folder)
        note(f"removed {', '.join(sorted(undone))} that a semid command stopped before its end "
             f"left in {run}; the run itself was not changed: run the command again")  # fmt: skip


def clear_killed_writes(run: Path) -> None:
    """Undo what writers killed inside a change of ``run`` left (`undo_killed_writes`), and delete
    the temporaries of its entries that dead writers left: a first training killed inside its final
    write leaves them in a folder that has no manifest yet, where they would read as someone
    else's files."""
    undo_killed_writes(run)
    for name in (*RUN_ENTRIES, MANIFEST):
        recover(run / name)
        remove_stale(run / name)


def wait_for_changes(run: Path) -> None:
    """Wait while a live writer is inside a change of the parts a command reads (the index, the
    model, the config, the manifest: a retrain's final write, an `index add`), so that the run is
    never read half changed; SemidError after ``CHANGE_WAIT_S``. A run this process may not write
    (a read-only share) is read without waiting: a snapshot left there, whose pid may since name
    another process, could never be cleared from here."""
    writers = changes_in_progress(run, READ_PARTS)
    if not writers or not can_write(run):
        return
    note(f"waiting for semid process {writers[0]} to finish changing {run}")
    deadline = time.monotonic() + CHANGE_WAIT_S
    while writers:
        if time.monotonic() > deadline:
            raise SemidError(f"run {run} has been changed by semid process {writers[0]} for over "
                             f"{CHANGE_WAIT_S:.0f} s; try again once it is done")  # fmt: skip
        time.sleep(0.05)
        writers = changes_in_progress(run, READ_PARTS)


def _major_minor(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in version.split(".")[:2] if p.isdigit())
