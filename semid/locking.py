"""One writer per artifact folder: an OS file lock beside the folder, taken for the whole write.

The lock file of `runs/x` is `runs/.x.lock`, a sibling rather than `runs/x/.lock`: the folder itself
may be swapped into place as a whole (semid.atomic), which would carry a lock file inside it away,
and a sibling also exists before the folder does, so every writer locks the same file. The lock is
`flock` (through `filelock`), released by the kernel when its holder dies, so it never goes stale.
`.x.lock.owner` names the holder's pid for the error message, with its start time where the system
tells it (Linux), so that the owner file of a killed writer does not name as writer a later process
given the same pid. Readers take no lock: atomic swaps already keep them from seeing half-written
folders.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from filelock import FileLock, Timeout

from semid.atomic import check_writable, pid_alive, record_created_lock
from semid.errors import SemidError
from semid.notes import note

# locks this process holds, by lock file, with their nesting depth: nested writes of one folder
# (train writing the index it builds) must not wait for themselves
_held: dict[Path, int] = {}


def lock_path(folder: str | os.PathLike) -> Path:
    """The lock file guarding writes to `folder`: `.NAME.lock` beside it (beside the folder a
    symbolic link leads to, so that writers through two names of one folder exclude each other)."""
    folder = Path(os.path.realpath(folder))
    return folder.with_name(f".{folder.name}.lock")


def _owner_file(lock: Path) -> Path:
    return lock.with_name(lock.name + ".owner")


def _read_owner(lock: Path) -> str:
    try:
        return _owner_file(lock).read_text(errors="replace").split()[0]
    except (OSError, IndexError):
        return "unknown"


def _recorded_start(lock: Path) -> str | None:
    """The holder's start time its owner file records (its last line, "started TICKS"), or None."""
    try:
        lines = _owner_file(lock).read_text(errors="replace").splitlines()
    except OSError:
        return None
    words = lines[-1].split() if len(lines) > 1 else []
    return words[1] if len(words) == 2 and words[0] == "started" else None


def process_start(pid: int) -> str | None:
    """When process ``pid`` started, in clock ticks since boot (field 22 of /proc/PID/stat), or None
    where the system does not tell (no /proc, the process gone): with the pid, it names one process."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the fields after "pid (command) " (the command may hold spaces), from field 3 on
    fields = stat[stat.rfind(")") + 2 :].split()
    return fields[19] if len(fields) > 19 else None


def _write_owner(lock: Path, what: str) -> None:
    """Name this process as the lock's holder, for other processes' messages (beside the lock
    file, which filelock may truncate on open). Best effort: on a full disk the holder goes
    unnamed (pid "unknown"), and the write that needs the room says what is wrong."""
    tmp = lock.with_name(f"{lock.name}.owner.{os.getpid()}")
    started = process_start(os.getpid())
    text = f"{os.getpid()} {what}\n" + (f"started {started}\n" if started else "")
    try:  # surrogateescape: a folder name that is not UTF-8 is written as its bytes
        tmp.write_text(text, errors="surrogateescape")
        os.replace(tmp, _owner_file(lock))
    except OSError:
        tmp.unlink(missing_ok=True)


@contextmanager
def write_lock(
    folder: str | os.PathLike,
    what: str,
    timeout: float = 0,
    fix: str = "wait for it or use another --out",
    unwritable_fix: str = "choose a writable --out",
) -> Iterator[Path]:
    """Hold the write lock of `folder` for the duration of the block; yields the lock file.

    A second writer waits up to `timeout` seconds, then raises SemidError naming `what` (for
    example "run runs/ml1m"), the holder's pid and `fix`; a folder no one can write to is told
    with ``unwritable_fix``. Re-entrant within one process.
    """
    if timeout < 0:
        raise ValueError(f"timeout must be >= 0 seconds, got {timeout}")
    lock = lock_path(folder)
    if lock in _held:
        _held[lock] += 1
        try:
            yield lock
        finally:
            _held[lock] -= 1
        return
    check_writable(lock, unwritable_fix)
    existed = lock.exists()
    try:  # made here, not by filelock, which reads a file it cannot create as a lock held
        os.close(os.open(lock, os.O_RDWR | os.O_CREAT, 0o666))  # less the umask
    except OSError as e:  # a read-only folder, or a pseudo file system such as /proc
        raise SemidError(f"cannot write {what}: {e.strerror} ({lock}); {unwritable_fix}") from None
    if not existed:  # removed with the folders made for a refused command's outputs
        record_created_lock(lock, Path(os.path.realpath(folder)))
    file_lock = FileLock(lock)
    try:
        try:
            file_lock.acquire(timeout=0)
        except Timeout:
            if not timeout:
                raise
            note(f"waiting for semid process {_read_owner(lock)} to finish writing {what} "
                 f"(up to {timeout:.0f} s)")  # fmt: skip
            file_lock.acquire(timeout=timeout)
    except Timeout:
        raise SemidError(
            f"{what} is being written by another semid process (pid {_read_owner(lock)}); {fix}"
        ) from None
    _held[lock] = 1
    try:
        _write_owner(lock, what)
        yield lock
    finally:
        del _held[lock]
        _owner_file(lock).unlink(missing_ok=True)
        file_lock.release()


def can_write(folder: str | os.PathLike) -> bool:
    """Whether this process can take the write lock of the existing ``folder`` and write in it (a
    read-only mount or share: no)."""
    return os.access(folder, os.W_OK) and os.access(lock_path(folder).parent, os.W_OK)


def current_writer(folder: str | os.PathLike) -> str | None:
    """The pid of the live semid process holding the write lock of ``folder``, or None (an owner
    file left by a killed process names a pid that is gone, or since given to another process,
    whose start time differs from the one recorded)."""
    lock = lock_path(folder)
    pid = _read_owner(lock)
    if not (pid.isdigit() and pid_alive(int(pid))):
        return None
    recorded, started = _recorded_start(lock), process_start(int(pid))
    # a start time this process cannot read (another user's process under /proc's hidepid): the
    # live pid is taken for the writer, as without one
    return pid if recorded is None or started is None or recorded == started else None
