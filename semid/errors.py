"""User-facing errors: one line that names the problem and the fix."""

from __future__ import annotations

import os


class SemidError(Exception):
    """A problem with the user's input or environment; the CLI prints it as one line and exits 2."""


class RunDataError(SemidError):
    """The run's own data files (a recommender's interactions log) cannot be read: a fault of
    the files beside the run, not of the request that needed them (serve answers 503)."""


def cannot_read(path: str | os.PathLike, what: str = "") -> SemidError:
    """The one-line error for a file or folder this user may not read (``what``: the option or
    kind it was given as)."""
    named = f"{what} {path}" if what else str(path)
    return SemidError(f"cannot read {named}: permission denied; ask its owner for read access, "
                      "or use a copy you can read")  # fmt: skip


def not_found(path: str | os.PathLike, fix: str) -> SemidError:
    """The one-line error for a path that does not exist, saying which folder a relative path was
    read from (a command run from another folder than the one it was written for)."""
    where = "" if os.path.isabs(path) else f" (relative to {os.getcwd()})"
    return SemidError(f"{path} not found{where}; {fix}")


class StoppedMidBatch(KeyboardInterrupt):
    """`semid serve` stopped without waiting (a second signal) while a batch still runs in a
    thread of its own process (``--in-process``). An interpreter that exits under a thread inside
    a torch op aborts (SIGABRT): the command ends the process with ``os._exit`` instead."""
