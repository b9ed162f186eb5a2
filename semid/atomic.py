"""Atomic writes: every artifact goes to a temporary name first and is swapped into place.

Names next to an artifact `NAME` (all hidden, all in the same folder):

    .NAME.<pid>.<random>.tmp   a write in progress (file or folder) by process <pid>
    .NAME.old-<pid>            the previous version, only between the two renames of the fallback swap
    .restore.<pid>.<random>.tmp  hard-linked snapshot of a multi-part change (`restore_on_error`);
                               one left by a dead process is put back by `roll_back`

On Linux a folder is swapped with `renameat2(RENAME_EXCHANGE)`: old and new trade names in one step,
so some complete version is at `NAME` at every moment. Where the exchange is unavailable the swap
renames the old folder aside and then the new one in; a writer killed between the two renames
leaves `NAME` missing, and `recover(NAME)` (run before every write, and callable by readers) puts
the previous version back. Leftovers of dead writers are removed on the next write of `NAME`.

`fault_point(name)` lets crash tests kill the process (exit code 97) between any two steps.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import hashlib
import json
import os
import re
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Collection, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from semid.errors import SemidError, cannot_read

FAULT_EXIT_CODE = 97
# a temp whose writer is still running is left alone unless untouched this long: pids are reused
# after a restart, but a live write may well take longer than a few minutes
STALE_AFTER_S = 24 * 3600.0
# no swap takes this long between its two renames, so an older backup belongs to a dead writer
BACKUP_GRACE_S = 60.0
# a temp named without its writer's pid (written before names carried one) is judged by age alone
UNKNOWN_WRITER_STALE_S = 600.0
DISK_FULL_ERRNOS = {errno.ENOSPC, errno.EDQUOT}
# libraries that write through C code (torch, safetensors, numpy) often lose the errno
_DISK_FULL_WORDS = ("no space left on device", "os error 28", "storagefull", "disk quota exceeded")
_LOW_SPACE_BYTES = 1 << 20
_AT_FDCWD = -100
_RENAME_EXCHANGE = 2
_fault_hits: dict[str, int] = {}
# folders this process made for its outputs, absolute, outermost first (`remove_empty_made_folders`)
_made_folders: list[Path] = []
# lock files this process created (semid.locking), with the folder each guards
_created_locks: list[tuple[Path, Path]] = []
_SNAPSHOT_LIST = ".snapshot.json"  # in a restore snapshot: the names it covers, and which existed
_SNAPSHOT = re.compile(r"^\.restore\.(\d+)\.[a-z0-9_]{8}\.tmp$")


class WriteFailedError(SemidError):
    """The device or the file system refused a write of an artifact (an input/output error, a
    read-only file system, a permission); nothing was replaced. ``errno`` is the refusal's code."""

    def __init__(self, message: str, code: int | None = None) -> None:
        self.errno = code
        super().__init__(f"{message} (nothing was replaced: an earlier version, if any, is intact)")


class DiskFullError(WriteFailedError):
    """The device ran out of space (or quota), or a file passed a size limit (``too_large``), while
    an artifact was written; nothing was replaced."""

    def __init__(self, path: str | os.PathLike, too_large: bool = False) -> None:
        self.too_large = too_large
        if too_large:
            problem = (f"a file passed the size limit of the file system or of this process "
                       f"(`ulimit -f`) while writing {path}; write to another file system or "
                       "raise the limit, and rerun")  # fmt: skip
            super().__init__(problem, errno.EFBIG)
        else:
            super().__init__(f"no space left on device while writing {path}; free space and rerun",
                             errno.ENOSPC)  # fmt: skip


# what a write refused for another reason than space is said as, and its fix
_REFUSED_WRITES = {
    errno.EIO: ("an input/output error (the device failed)",
                "check the device (`dmesg`) or write to another one, and rerun"),
    errno.EROFS: ("a read-only file system", "write to a writable file system, and rerun"),
    errno.EACCES: ("permission denied", "make it writable for this user or write elsewhere, and rerun"),
    errno.EPERM: ("operation not permitted (an immutable or append-only file, or another user's)",
                  "make it writable for this user or write elsewhere, and rerun"),
}  # fmt: skip


def write_failure(exc: BaseException, path: str | os.PathLike) -> WriteFailedError | None:
    """The one-line error for a write of ``path`` that ``exc`` ended: for lack of space, past a
    file size limit (EFBIG), or refused by the device or the file system (EIO, EROFS, EACCES,
    EPERM), naming ``path`` and the file refused; None for any other failure (a bug, or the
    user's own SemidError)."""
    if isinstance(exc, DiskFullError):
        return DiskFullError(path, exc.too_large)
    if isinstance(exc, SemidError):
        return None
    if _is_file_too_large(exc):
        return DiskFullError(path, too_large=True)
    refused = next((seen for seen in _causes(exc) if isinstance(seen, OSError)
                    and seen.errno in _REFUSED_WRITES), None)  # fmt: skip
    # a refusal's own errno first: a read-only mount shows no free blocks, which the free-space
    # guess of `is_disk_full` would take for a full disk
    if refused is not None and not _names_a_full_disk(exc):
        problem, fix = _REFUSED_WRITES[refused.errno]
        where = f" on {refused.filename}" if refused.filename else ""
        return WriteFailedError(f"{problem}{where} while writing {path}; {fix}", refused.errno)
    return DiskFullError(path) if is_disk_full(exc, Path(path).parent) else None


def _causes(exc: BaseException) -> Iterator[BaseException]:
    """``exc`` and the exceptions that caused it, outermost first (as a traceback shows them)."""
    seen: BaseException | None = exc
    while seen is not None:
        yield seen
        seen = seen.__cause__ or (None if seen.__suppress_context__ else seen.__context__)


def _is_file_too_large(exc: BaseException) -> bool:
    """Whether ``exc`` (or what caused it) is EFBIG: a file past the file system's or the process's
    size limit (libraries that write through C code name it in words only)."""
    return any(
        (isinstance(seen, OSError) and seen.errno == errno.EFBIG)
        or any(word in str(seen).lower() for word in ("file too large", "os error 27"))
        for seen in _causes(exc)
    )


def fault_point(name: str) -> None:
    """Exit at once with code 97 on the n-th call with `name`, as SEMID_FAULT_POINT/SEMID_FAULT_AFTER say.

    Used by crash tests only; without SEMID_FAULT_POINT set it does nothing.
    """
    if os.environ.get("SEMID_FAULT_POINT") != name:
        return
    _fault_hits[name] = _fault_hits.get(name, 0) + 1
    if _fault_hits[name] == int(os.environ.get("SEMID_FAULT_AFTER", "1")):
        os._exit(FAULT_EXIT_CODE)


def _load_renameat2() -> Any:
    if not sys.platform.startswith("linux"):
        return None
    try:
        function = ctypes.CDLL(None, use_errno=True).renameat2  # glibc >= 2.28
    except (OSError, AttributeError):
        return None
    function.argtypes = [
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_int,
        ctypes.c_char_p,
        ctypes.c_uint,
    ]
    function.restype = ctypes.c_int
    return function


_renameat2 = _load_renameat2()


def exchange(a: str | os.PathLike, b: str | os.PathLike) -> bool:
    """Swap the names of two existing paths in one atomic step; False where the system cannot."""
    if _renameat2 is None:
        return False
    if _renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EXDEV, errno.EPERM):
        return False  # old kernel or a filesystem without exchange (some network/FUSE ones)
    raise OSError(code, os.strerror(code), os.fspath(b))


def _names_a_full_disk(exc: BaseException) -> bool:
    """Whether `exc` or what caused it says the device is out of space or quota, by its errno or
    its words (libraries that write through C code often lose the errno)."""
    return any(
        (isinstance(seen, OSError) and seen.errno in DISK_FULL_ERRNOS)
        or any(word in str(seen).lower() for word in _DISK_FULL_WORDS)
        for seen in _causes(exc)
    )


def is_disk_full(exc: BaseException, folder: str | os.PathLike) -> bool:
    """Whether `exc` (or what caused it) means the device under `folder` is out of space or quota:
    by its errno or words, else (an error without an errno, as torch's short writes) by the free
    space left."""
    if _names_a_full_disk(exc):
        return True
    if not isinstance(exc, (OSError, RuntimeError)) or not hasattr(os, "statvfs"):
        return False
    if any(isinstance(seen, OSError) and seen.errno is not None for seen in _causes(exc)):
        return False  # a cause of its own (EROFS, ENOENT, ...), whatever the space left
    try:  # torch.save and np.save report a short write without any errno: ask the filesystem
        stats = os.statvfs(folder)
    except OSError:
        return False
    free_blocks = stats.f_bfree if os.geteuid() == 0 else stats.f_bavail  # root may use reserved
    return free_blocks * stats.f_frsize < _LOW_SPACE_BYTES


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def file_sha256(path: str | os.PathLike) -> str:
    """The SHA-256 (hex) of a file's bytes, read a block at a time."""
    with open(path, "rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def check_file_sha256(path: str | os.PathLike, recorded: Any, record: str, fix: str) -> None:
    """SemidError naming ``path`` when its bytes are not those whose SHA-256 ``record`` (a file's
    name for the message, e.g. "its config.json") holds as ``recorded``; None recorded (artifacts
    written before the record was kept) is not checked."""
    if recorded is None:
        return
    try:
        actual = file_sha256(path)
    except PermissionError:
        raise cannot_read(path) from None
    if actual != recorded:
        raise SemidError(f"{path} is damaged: its bytes are not those written with {record} "
                         f"(changed since); {fix}")  # fmt: skip


def check_writable(path: str | os.PathLike, fix: str = "choose a writable --out") -> None:
    """Raise SemidError unless `path` can be created or replaced (creating its parent folders);
    ``fix`` says what to do instead."""
    parent = Path(path).parent
    try:
        for folder in reversed((parent, *parent.parents)):  # outermost first
            try:
                folder.mkdir()
            except FileExistsError:  # there before (or made meanwhile by another process)
                continue
            _made_folders.append(folder.absolute())
    except OSError as e:
        raise SemidError(f"cannot create output folder {parent}: {e.strerror}; {fix}") from None
    if not parent.is_dir():
        raise SemidError(f"cannot create output folder {parent}: a file has that name; {fix}")
    if not os.access(parent, os.W_OK):
        raise SemidError(f"output folder {parent} is not writable; {fix}")


def made_folders_count() -> int:
    """How many folders this process has made for its outputs so far (see
    `remove_empty_made_folders`)."""
    return len(_made_folders)


def record_created_lock(lock: Path, folder: Path) -> None:
    """Note a lock file this process created beside ``folder`` (see `remove_empty_made_folders`)."""
    _created_locks.append((lock, folder))


def remove_empty_made_folders(since: int = 0) -> None:
    """Remove the folders this process made for its outputs (from the ``since``-th on) that are
    still empty, innermost first: a command refused before writing leaves no empty folders behind
    (``runs/new/`` of ``--out runs/new/index``). A lock file this process created in one of them
    goes first when the folder it guards was never made and no process holds it
    (``runs/new/.index.lock``). Only ``rmdir``: a folder holding anything else, such as another
    process's lock or output, stays."""
    # real paths, as lock files are named
    made = {Path(os.path.realpath(folder)) for folder in _made_folders[since:]}
    for lock, folder in reversed(_created_locks):
        if lock.parent in made and not folder.exists():
            _remove_unheld_lock(lock)
    _created_locks[:] = [
        (lock, folder) for lock, folder in _created_locks if lock.parent not in made
    ]
    for folder in reversed(_made_folders[since:]):
        with contextlib.suppress(OSError):
            folder.rmdir()
    del _made_folders[since:]


def _remove_unheld_lock(lock: Path) -> None:
    """Delete the lock file ``lock`` unless a process holds it (then it stays)."""
    from filelock import FileLock, Timeout

    file_lock = FileLock(lock)
    try:
        file_lock.acquire(timeout=0)
    except Timeout:
        return
    try:
        lock.unlink(missing_ok=True)
    finally:
        file_lock.release()


_DESCRIPTOR_PATH = re.compile(r"^/(?:dev/fd|proc/self/fd)/(\d+)$")


def open_descriptor(path: str | os.PathLike) -> int | None:
    """The open file descriptor that ``path`` means, as a shell's redirection does: 1 or 2 when
    ``path`` (through its links: ``/dev/stdout``, ``/proc/thread-self/fd/2``, a link to either)
    is the very file standard output or error is open on, N for ``/dev/fd/N`` and
    ``/proc/self/fd/N``; else None."""
    m = _DESCRIPTOR_PATH.match("/" + os.path.abspath(path).lstrip("/"))
    if m is not None:
        return int(m[1])
    try:
        target = os.stat(path)
    except OSError:
        return None
    for fd in (1, 2):
        with contextlib.suppress(OSError):  # closed
            if os.path.samestat(target, os.fstat(fd)):
                return fd
    return None


def is_stream(path: str | os.PathLike) -> bool:
    """True when ``path`` is written to rather than replaced: an open descriptor
    (`open_descriptor`: ``/dev/stdout``, whatever it leads to, a file ``>>`` appends to too), or
    an existing file that is no regular file (through its symlinks): a terminal, ``/dev/null``, a
    named pipe, a socket."""
    if open_descriptor(path) is not None:
        return True
    try:
        mode = os.stat(path).st_mode
    except OSError:  # missing (or unreadable: the write will say so)
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


def check_output_file(path: str | os.PathLike, option: str = "--out") -> None:
    """Raise SemidError unless a file can be written at ``path``: an open descriptor or another
    stream (`is_stream`) open for writing, or a file that can be created or replaced."""
    path = Path(path)
    if path.is_dir():
        raise SemidError(f"output {path} is a folder; name a file for {option}")
    if (fd := open_descriptor(path)) is not None:
        _check_descriptor(path, fd, option)
    elif is_stream(path):
        if not os.access(path, os.W_OK):
            raise SemidError(f"cannot write {path}: permission denied; choose a writable {option}")
    else:
        _check_new_file(path, option)


def _check_descriptor(path: Path, fd: int, option: str) -> None:
    """SemidError unless descriptor ``fd`` (which ``path`` means) is open for writing."""
    try:
        writable = fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE != os.O_RDONLY
    except OSError:  # not open
        writable = False
    if not writable:
        raise SemidError(
            f"{_shown_output(path)}: descriptor {fd} is not open for writing; choose another "
            f"{option}"
        )


def _shown_output(path: str | os.PathLike) -> str:
    """How messages name an output: "standard output" or "standard error" for the descriptor
    (``--out -``, ``/dev/stdout``), else the path."""
    names = {1: "standard output", 2: "standard error"}
    return names.get(open_descriptor(path) or 0, str(path))


def _check_new_file(path: Path, option: str) -> None:
    """SemidError unless a file can be renamed into place at ``path`` (itself, not what a symlink
    there points to). A trial file is made and removed, since ``os.access`` says yes to root and
    to pseudo file systems such as /proc where no file can be created."""
    if os.path.lexists(path) and not _replaceable(path):
        raise SemidError(f"cannot replace {path}: it is another user's, in a folder where only its "
                         f"owner may replace it (sticky, as /tmp); choose another {option}")  # fmt: skip
    check_writable(path, f"choose a writable {option}")
    try:
        fd, trial = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as e:
        raise SemidError(f"cannot write {path}: {e.strerror}; choose a writable {option}") from None
    os.close(fd)
    os.unlink(trial)


@contextmanager
def output_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a file the user named (``--out``, ``--plot``) for writing: an open descriptor
    (`open_descriptor`: ``/dev/stdout``) is written where it stands, as a shell writes it;
    another stream (a terminal, a named pipe) as it is; anything else by `atomic_file`, which
    replaces ``path`` itself (a symlink there too, never the file it points to: in a shared
    folder such as /tmp, another user's link could point at any of this user's files)."""
    path = Path(path)
    if (fd := open_descriptor(path)) is not None:
        for stream in (sys.stdout, sys.stderr):  # what Python holds for them goes out first
            if not getattr(stream, "closed", True):
                stream.flush()
        with os.fdopen(os.dup(fd), mode) as f:
            yield f
        return
    if is_stream(path):
        try:
            with open(path, mode) as f:
                yield f
        except OSError as e:  # a failed write (/dev/full) names no file: name the one written
            if e.filename is None and e.errno is not None:
                raise OSError(e.errno, e.strerror, str(path)) from None
            raise
        return
    with atomic_file(path, mode) as f:
        yield f


def _replaceable(path: Path) -> bool:
    """Whether this user may rename a file over ``path`` (a file or a symlink): not in a sticky
    folder (as /tmp) where neither ``path`` nor the folder is theirs (root may)."""
    folder = path.parent.stat()
    if not folder.st_mode & stat.S_ISVTX or os.geteuid() == 0:
        return True
    return os.geteuid() in (folder.st_uid, path.lstat().st_uid)


def check_output_folder(folder: str | os.PathLike) -> None:
    """Raise SemidError unless files can be written into ``folder``: an existing writable folder,
    or one that can be created later (its parents are created now, the folder itself is not, so a
    command that fails before writing leaves no empty output folder behind)."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise SemidError(f"output {folder} is a file, not a folder; choose another --out")
    check_writable(folder / "x" if folder.is_dir() else folder)


def check_replaceable(path: str | os.PathLike, own: Collection[str], what: str,
                      marker: str | None = None) -> None:  # fmt: skip
    """Refuse a save to ``path`` that would lose something: a save replaces the whole folder
    (`atomic_dir`), so ``path`` must be new, empty, or hold only the ``own`` files of a saved
    ``what`` (any folder holding ``marker`` counts as one); SemidError for a file or another folder."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise SemidError(f"{path} is a file; save the {what} to a folder path")
    if not path.is_dir() or (marker is not None and (path / marker).is_file()):
        return
    strangers = sorted(p.name for p in path.iterdir() if p.name not in own)
    if strangers:
        raise SemidError(f"{path} is not empty and not a saved {what} (it holds {strangers[0]}); "
                         "saving replaces the whole folder: choose a new or empty folder")  # fmt: skip


def pid_alive(pid: int) -> bool:
    """Whether process ``pid`` exists (also when it belongs to another user)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # someone else's process
    return True


# when this process began to use semid: what it writes is newer (the module loads before any write)
_PROCESS_START = time.time()


def _is_mine(pid: int, entry: Path) -> bool:
    """Whether ``entry``, left by writer ``pid``, is this process's own: its pid, and made since it
    started (a container's re-run often gets the pid of the one before it, pid 1 say)."""
    return pid == os.getpid() and not _made_before_this_process(entry)


def _writer_gone(pid: int, entry: Path) -> bool:
    """Whether the writer ``pid`` that left ``entry`` has stopped: another process that no longer
    runs, or an earlier process that had this process's pid."""
    if pid == os.getpid():
        return _made_before_this_process(entry)
    return not pid_alive(pid)


def _made_before_this_process(entry: Path) -> bool:
    """Whether ``entry`` was made, or last renamed, before this process started (gone: False);
    ctime, as a rename refreshes it: this process's own backup of a file it swaps is new."""
    try:
        return entry.lstat().st_ctime < _PROCESS_START
    except FileNotFoundError:
        return False


def _age_s(path: Path) -> float:
    try:
        return (
            time.time() - path.lstat().st_ctime
        )  # ctime: renames refresh it, so it dates the swap
    except FileNotFoundError:
        return 0.0


def _remove(path: Path) -> None:
    """Delete a file or a folder; already gone is fine."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    # a rename is durable only once its folder is flushed
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass  # some filesystems refuse fsync on folders; the rename is still atomic
    finally:
        os.close(fd)


def _backups(path: Path) -> list[tuple[int, Path]]:
    pattern = re.compile(rf"^\.{re.escape(path.name)}\.old-(\d+)$")
    if not path.parent.is_dir():
        return []
    return [(int(m.group(1)), p) for p in path.parent.iterdir() if (m := pattern.match(p.name))]


def recover(path: str | os.PathLike) -> bool:
    """Put back the previous version of `path` when a writer died between the two renames of a swap.

    Returns True when something was restored. Safe to call at any time, by readers too: a backup
    whose writer is still mid-swap (alive and recent) is left alone.
    """
    path = Path(path)
    if os.path.lexists(path):
        return False
    dead = [
        p
        for pid, p in _backups(path)
        if not _is_mine(pid, p) and (_writer_gone(pid, p) or _age_s(p) > BACKUP_GRACE_S)
    ]
    if not dead:
        return False
    newest = max(dead, key=lambda p: p.lstat().st_mtime)
    try:
        os.rename(newest, path)
    except FileExistsError:
        return False  # another process recovered it first
    except OSError as e:
        if e.errno != errno.ENOTEMPTY:
            raise
        return False
    _fsync_dir(path.parent)
    return True


def remove_stale(path: str | os.PathLike) -> list[Path]:
    """Delete temps and backups of `path` left by writers that died (or stalled for a day); returns them."""
    path = Path(path)
    if not path.parent.is_dir():
        return []
    name = re.escape(path.name)
    temp = re.compile(rf"^\.{name}\.(?:(\d+)\.)?[a-z0-9_]{{8}}\.tmp$")
    removed = []
    for entry in path.parent.iterdir():
        if not (m := temp.match(entry.name)):
            continue
        pid = int(m.group(1)) if m.group(1) else None
        if pid is None:
            stale = _age_s(entry) > UNKNOWN_WRITER_STALE_S
        else:
            stale = _writer_gone(pid, entry) or _age_s(entry) > STALE_AFTER_S
        if stale:
            with contextlib.suppress(PermissionError):  # another user's, in a shared folder
                _remove(entry)
                removed.append(entry)
    if os.path.lexists(path):  # otherwise a backup may still be needed by recover()
        for pid, entry in _backups(path):
            if _writer_gone(pid, entry) or _age_s(entry) > BACKUP_GRACE_S:
                _remove(entry)
                removed.append(entry)
    return removed


def prepare_write(path: str | os.PathLike) -> None:
    """Before writing `path`: check it is writable, recover an interrupted swap, drop dead leftovers."""
    check_writable(path)
    recover(path)
    remove_stale(path)


@contextmanager
def atomic_file(path: str | os.PathLike, mode: str = "w") -> Iterator[Any]:
    """Open a temporary file beside `path`; on success fsync it and rename it over `path`.

    A full disk raises DiskFullError (one line) after removing the temporary file.
    """
    path = Path(path)
    prepare_write(path)
    fd, tmp = tempfile.mkstemp(
        prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent
    )
    os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600 files; artifacts get the usual mode
    try:
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        fault_point("atomic_file.written")
        os.replace(tmp, path)
        fault_point("atomic_file.replaced")
        _fsync_dir(path.parent)
    except BaseException as e:
        failure = write_failure(e, path)
        Path(tmp).unlink(missing_ok=True)
        if failure is not None:
            raise failure from None
        raise


@contextmanager
def restore_on_error(paths: Sequence[str | os.PathLike]) -> Iterator[None]:
    """Make the writes inside one change: on an exception, each of ``paths`` (files or folders in
    one folder) is put back as it was on entry, and removed if it did not exist.

    The snapshot is hard links, so it costs no copy: semid's writers replace files (`atomic_file`,
    `atomic_dir`), never rewrite them in place. It is kept as `.restore.<pid>.<random>.tmp` beside
    the paths until the block ends, so that a writer killed inside (SIGKILL, power cut) is undone
    too, by `roll_back` (run before the folder is next read or written)."""
    paths = [Path(p) for p in paths]
    folder = paths[0].parent
    if any(p.parent != folder for p in paths):
        raise ValueError("restore_on_error needs paths in one folder")
    snapshot = Path(tempfile.mkdtemp(prefix=f".restore.{os.getpid()}.", suffix=".tmp", dir=folder))
    put_back = True  # nothing to put back unless the block raises
    try:
        present = []
        for path in paths:
            if path.is_dir():
                shutil.copytree(path, snapshot / path.name, copy_function=os.link)
            elif path.is_file():
                os.link(path, snapshot / path.name)
            else:
                continue
            present.append(path.name)
        listing = {"names": [p.name for p in paths], "present": present}
        with open(snapshot / _SNAPSHOT_LIST, "w") as f:  # flushed: a power cut must not cut it
            f.write(json.dumps(listing) + "\n")
            f.flush()
            os.fsync(f.fileno())
        _fsync_dir(snapshot)
        try:
            yield
        except BaseException:
            put_back = False
            _put_back(snapshot)
            put_back = True
            raise
    finally:
        if put_back:  # a put-back that failed half way stays for `roll_back` to finish
            _drop_snapshot(snapshot)


def _drop_snapshot(snapshot: Path) -> None:
    """Remove a snapshot once its change is made or undone: its listing first, flushed to disk,
    so that a writer killed while the rest is removed leaves a snapshot `roll_back` only deletes.
    Removed in one go, a listing that outlived its ``model/`` (the order the folder lists them)
    made the roll-back keep the new model beside the old index."""
    (snapshot / _SNAPSHOT_LIST).unlink(missing_ok=True)
    _fsync_dir(snapshot)
    fault_point("restore.listing_dropped")
    _remove(snapshot)


def _put_back(snapshot: Path) -> None:
    """Put a snapshot's entries back in its folder (what did not exist is removed). Safe to repeat
    after an interruption: an entry already moved back is left alone."""
    listing = json.loads((snapshot / _SNAPSHOT_LIST).read_text())
    for name in listing["names"]:
        saved, path = snapshot / name, snapshot.parent / name
        if name in listing["present"] and not os.path.lexists(saved):
            continue  # put back by an earlier, interrupted roll-back
        _remove(path)
        if os.path.lexists(saved):
            os.rename(saved, path)
        remove_stale(path)  # the dead writer's half-written temporaries of it
    _fsync_dir(snapshot.parent)


def unfinished_changes(folder: str | os.PathLike) -> list[Path]:
    """Snapshots in ``folder`` of `restore_on_error` blocks whose process died inside them."""
    return [entry for pid, entry in _snapshots(folder) if _writer_gone(pid, entry)]


def changes_in_progress(folder: str | os.PathLike, names: Collection[str]) -> list[int]:
    """The pids of the live processes (this one aside) inside a `restore_on_error` block in
    ``folder`` that changes any of ``names``: between the parts of one change, which a reader of
    them would see half made (a snapshot still being made counts: what it covers is not known)."""
    return [pid for pid, snapshot in _snapshots(folder)
            if not _writer_gone(pid, snapshot) and _covers(snapshot, names)]  # fmt: skip


def _covers(snapshot: Path, names: Collection[str]) -> bool:
    """Whether a `restore_on_error` snapshot lists any of ``names`` (True while its list is unwritten)."""
    try:
        listed = json.loads((snapshot / _SNAPSHOT_LIST).read_text())["names"]
    except (OSError, ValueError, KeyError, TypeError):
        return True
    return not set(listed).isdisjoint(names)


def _snapshots(folder: str | os.PathLike) -> list[tuple[int, Path]]:
    """(pid, snapshot) of every `restore_on_error` snapshot in ``folder`` but this process's own."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    try:
        entries = sorted(folder.iterdir())
    except PermissionError:
        raise cannot_read(folder, "the folder") from None
    found = [(m, entry) for entry in entries if (m := _SNAPSHOT.match(entry.name))]
    return [(int(m.group(1)), entry) for m, entry in found
            if not _is_mine(int(m.group(1)), entry)]  # fmt: skip


def roll_back(folder: str | os.PathLike) -> list[str]:
    """Undo the change of every writer that died inside a `restore_on_error` block in ``folder``:
    its paths are put back as they were before it. Call it holding the folder's write lock (two
    roll-backs at once would race). A snapshot killed before it was complete changed nothing yet
    and is just removed. Returns the names put back (empty when nothing was)."""
    restored: list[str] = []
    for snapshot in unfinished_changes(folder):
        if (snapshot / _SNAPSHOT_LIST).is_file():
            restored += json.loads((snapshot / _SNAPSHOT_LIST).read_text())["names"]
            _put_back(snapshot)
        _remove(snapshot)
    return restored


def read_json(path: str | os.PathLike, fix: str) -> Any:
    """A JSON file's content, or one SemidError line if it is missing, unreadable (permissions),
    not UTF-8 or not valid JSON."""
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise SemidError(f"{path} is missing; {fix}") from None
    except PermissionError:
        raise cannot_read(path) from None
    except UnicodeDecodeError:
        raise SemidError(f"{path} is not UTF-8 text; {fix}") from None
    except json.JSONDecodeError as e:
        raise SemidError(f"{path} is damaged (invalid JSON at line {e.lineno}); {fix}") from None


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Write `obj` as indented JSON, atomically."""
    with atomic_file(path) as f:
        json.dump(obj, f, indent=2, sort_keys=False)
        f.write("\n")


def finish_tree(folder: str | os.PathLike) -> None:
    """Ready a finished temporary folder for its swap, in one walk: every file gets the usual mode,
    then every file and folder is flushed to disk (a rename alone survives no power cut).

    Some writers (safetensors' ``save_file``) create files readable by their owner only; every file
    gets at least the read and write bits a plain ``open()`` would give it under the umask, so a run
    can be served, copied or shared like any other file the user writes."""
    folder = Path(folder)
    usual = 0o666 & ~_umask()
    for entry in folder.rglob("*"):
        if entry.is_file() and not entry.is_symlink():
            mode = stat.S_IMODE(entry.stat().st_mode)
            if mode | usual != mode:
                os.chmod(entry, mode | usual)
            with open(entry, "rb") as f:
                os.fsync(f.fileno())
        elif entry.is_dir():
            _fsync_dir(entry)
    _fsync_dir(folder)


def swap_into_place(
    tmp: str | os.PathLike, path: str | os.PathLike, label: str = "atomic_dir"
) -> None:
    """Make the finished `tmp` appear at `path` in one step and delete what was there before.

    `label` names the fault points: `<label>.old_moved` (fallback only), `<label>.swapped`.
    """
    tmp, path = Path(tmp), Path(path)
    if not os.path.lexists(path):
        os.rename(tmp, path)
        fault_point(f"{label}.swapped")
        _fsync_dir(path.parent)
        return
    if exchange(tmp, path):
        fault_point(f"{label}.swapped")
        _fsync_dir(path.parent)
        _remove(tmp)  # now the previous version
        return
    backup = path.with_name(f".{path.name}.old-{os.getpid()}")
    _remove(backup)
    os.rename(path, backup)
    fault_point(f"{label}.old_moved")
    try:
        os.rename(tmp, path)
    except BaseException:
        os.rename(backup, path)
        raise
    fault_point(f"{label}.swapped")
    _fsync_dir(path.parent)
    _remove(backup)


@contextmanager
def atomic_dir(path: str | os.PathLike, label: str = "atomic_dir") -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` as a whole.

    At every moment `path` holds either its previous or its new complete version. A failure inside
    removes the temporary folder; a full disk raises DiskFullError (one line). `label` names the
    fault points (`<label>.written`, `<label>.swapped`): caches take their own, so that crash tests
    count the writes of artifacts only.
    """
    path = Path(path)
    prepare_write(path)
    tmp = Path(
        tempfile.mkdtemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp", dir=path.parent)
    )
    # mkdtemp makes 0700 folders; the usual mode, and a team folder's setgid bit, which its new
    # files' group comes from (chmod clears it)
    os.chmod(tmp, 0o777 & ~_umask() | path.parent.stat().st_mode & stat.S_ISGID)
    try:
        yield tmp
        finish_tree(tmp)
        fault_point(f"{label}.written")
        swap_into_place(tmp, path, label)
    except BaseException as e:
        failure = write_failure(e, path)
        if os.path.lexists(tmp):
            _remove(tmp)
        if failure is not None:
            raise failure from None
        raise
