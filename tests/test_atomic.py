"""Atomic writes: exchange swaps, the rename fallback and its recovery, stale leftovers, full disks."""

from __future__ import annotations

import errno
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

import semid.atomic as atomic
from semid.atomic import (
    DiskFullError,
    atomic_dir,
    atomic_file,
    check_output_folder,
    exchange,
    recover,
    remove_stale,
    restore_on_error,
)
from semid.errors import SemidError


@pytest.fixture(params=["exchange", "fallback"])
def swap_mode(request, monkeypatch) -> str:
    """Run a test with renameat2(RENAME_EXCHANGE) and again with the two-rename fallback."""
    if request.param == "fallback":
        monkeypatch.setattr(atomic, "_renameat2", None)
    return request.param


def dead_pid() -> int:
    """The pid of a process that has already exited."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_folder(path: Path, version: int) -> None:
    with atomic_dir(path) as tmp:
        (tmp / "a.txt").write_text(f"a{version}")
        (tmp / "b.txt").write_text(f"b{version}")


def read_folder(path: Path) -> tuple[str, str]:
    return (path / "a.txt").read_text(), (path / "b.txt").read_text()


def hidden(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir() if p.name.startswith("."))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="renameat2 is Linux-only")
def test_exchange_swaps_two_folders(tmp_path):
    (tmp_path / "x").mkdir()
    (tmp_path / "x" / "f").write_text("x")
    (tmp_path / "y").mkdir()
    assert exchange(tmp_path / "x", tmp_path / "y")
    assert (tmp_path / "y" / "f").read_text() == "x"
    assert not (tmp_path / "x" / "f").exists()


def test_atomic_dir_replaces_whole_folder_and_leaves_nothing(tmp_path, swap_mode):
    target = tmp_path / "index"
    write_folder(target, 1)
    (target / "extra.txt").write_text("only in version 1")
    write_folder(target, 2)
    assert read_folder(target) == ("a2", "b2")
    assert not (target / "extra.txt").exists()
    assert hidden(tmp_path) == []


def test_failure_inside_keeps_previous_folder(tmp_path, swap_mode):
    target = tmp_path / "index"
    write_folder(target, 1)
    with pytest.raises(ValueError, match="boom"), atomic_dir(target) as tmp:
        (tmp / "a.txt").write_text("half")
        raise ValueError("boom")
    assert read_folder(target) == ("a1", "b1")
    assert hidden(tmp_path) == []


def test_recover_restores_backup_of_dead_writer(tmp_path):
    target = tmp_path / "index"
    write_folder(target, 1)
    target.rename(tmp_path / f".index.old-{dead_pid()}")  # killed between the two renames
    assert recover(target)
    assert read_folder(target) == ("a1", "b1")
    assert not recover(target)  # nothing left to do


def test_recover_leaves_backup_of_writer_mid_swap(tmp_path, monkeypatch):
    target = tmp_path / "index"
    write_folder(target, 1)
    backup = tmp_path / f".index.old-{os.getppid()}"  # a live process, just renamed
    target.rename(backup)
    assert not recover(target)
    assert backup.is_dir() and not target.exists()
    monkeypatch.setattr(atomic, "BACKUP_GRACE_S", -1.0)  # the same backup, minutes later
    assert recover(target)
    assert read_folder(target) == ("a1", "b1")


def test_next_write_recovers_then_cleans_dead_leftovers(tmp_path, swap_mode):
    target = tmp_path / "index"
    write_folder(target, 1)
    gone = dead_pid()
    target.rename(tmp_path / f".index.old-{gone}")
    (tmp_path / f".index.{gone}.abcd1234.tmp").mkdir()  # the dead writer's new version
    live = tmp_path / f".index.{os.getppid()}.live0000.tmp"  # a live writer's, kept
    live.mkdir()
    young_unknown = tmp_path / ".index.legacy00.tmp"  # no pid and recent: kept
    young_unknown.mkdir()
    other = tmp_path / f".index.json.{gone}.abcd1234.tmp"  # another artifact's temp: not ours
    other.write_text("")
    assert recover(target)
    write_folder(target, 2)
    assert read_folder(target) == ("a2", "b2")
    assert hidden(tmp_path) == sorted([live.name, young_unknown.name, other.name])


def test_remove_stale_removes_old_temps_without_pid(tmp_path, monkeypatch):
    (tmp_path / "data.npy").write_bytes(b"x")
    legacy = tmp_path / ".data.npy.legacy00.tmp"
    legacy.write_bytes(b"partial")
    assert remove_stale(tmp_path / "data.npy") == []
    monkeypatch.setattr(atomic, "UNKNOWN_WRITER_STALE_S", -1.0)
    assert remove_stale(tmp_path / "data.npy") == [legacy]


def test_atomic_file_replaces_and_cleans_up_on_error(tmp_path):
    target = tmp_path / "a.json"
    with atomic_file(target) as f:
        f.write("one")
    with pytest.raises(KeyError), atomic_file(target) as f:
        f.write("two, half")
        raise KeyError("x")
    assert target.read_text() == "one"
    assert hidden(tmp_path) == []


def test_fault_point_kills_on_nth_hit(tmp_path):
    code = (
        "from semid.atomic import fault_point\nfor i in range(5):\n    fault_point('p'); print(i)"
    )
    env = os.environ | {"SEMID_FAULT_POINT": "p", "SEMID_FAULT_AFTER": "3"}
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (done.returncode, done.stdout.split()) == (97, ["0", "1"])
    env["SEMID_FAULT_POINT"] = "other"
    done = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
    assert (done.returncode, len(done.stdout.split())) == (0, 5)


KILLED_INSIDE_A_CHANGE = """
import os, sys
from pathlib import Path
from semid.atomic import atomic_dir, atomic_file, restore_on_error
run = Path(sys.argv[1])
with restore_on_error([run / "index", run / "config.json", run / "new.json"]):
    with atomic_dir(run / "index") as tmp:
        (tmp / "codes").write_text("new codes")
    with atomic_file(run / "new.json") as f:
        f.write("{}")
    with atomic_file(run / "config.json") as f:
        f.write("half a conf")
        f.flush()
        os._exit(97)  # SIGKILL while config.json is written
"""


def test_a_change_that_raises_is_put_back_at_once_and_a_finished_one_is_kept(tmp_path):
    run = tmp_path / "run"
    (run / "index").mkdir(parents=True)
    (run / "index" / "codes").write_text("old codes")
    (run / "config.json").write_text("old config")
    paths = [run / "index", run / "config.json", run / "new.json"]
    with pytest.raises(RuntimeError, match="mid-change"), restore_on_error(paths):
        with atomic_dir(run / "index") as tmp:
            (tmp / "codes").write_text("new codes")
        with atomic_file(run / "new.json") as f:
            f.write("{}")
        raise RuntimeError("mid-change")
    assert (run / "index" / "codes").read_text() == "old codes"
    assert (run / "config.json").read_text() == "old config"
    assert not (run / "new.json").exists() and not atomic.unfinished_changes(run)
    with restore_on_error(paths), atomic_file(run / "new.json") as f:
        f.write("{}")
    assert (run / "new.json").read_text() == "{}" and not atomic.unfinished_changes(run)


def test_a_change_killed_inside_is_rolled_back_once_its_writer_is_gone(tmp_path):
    """A writer killed inside `restore_on_error` (no exception, no cleanup) leaves its snapshot;
    `roll_back` puts every path back as it was, removes what was new and the dead writer's
    temporaries (a half-written model stayed in the run), and is idempotent."""
    run = tmp_path / "run"
    (run / "index").mkdir(parents=True)
    (run / "index" / "codes").write_text("old codes")
    (run / "config.json").write_text("old config")
    done = subprocess.run([sys.executable, "-c", KILLED_INSIDE_A_CHANGE, str(run)], check=False)
    assert done.returncode == 97
    assert (run / "index" / "codes").read_text() == "new codes"
    assert len(atomic.unfinished_changes(run)) == 1 and list(run.glob(".config.json.*.tmp"))
    assert sorted(atomic.roll_back(run)) == ["config.json", "index", "new.json"]  # put back
    assert (run / "index" / "codes").read_text() == "old codes"
    assert (run / "config.json").read_text() == "old config"
    assert not (run / "new.json").exists()
    assert not atomic.unfinished_changes(run) and atomic.roll_back(run) == []
    assert sorted(p.name for p in run.iterdir() if not p.name.startswith(".index.")) == [
        "config.json",
        "index",
    ]


KILLED_WHILE_DROPPING_ITS_SNAPSHOT = """
import os, sys
from pathlib import Path
from semid.atomic import atomic_dir, atomic_file, restore_on_error
run = Path(sys.argv[1])
with restore_on_error([run / "index", run / "config.json"]):
    with atomic_dir(run / "index") as tmp:
        (tmp / "codes").write_text("new codes")
    with atomic_file(run / "config.json") as f:
        f.write("new config")
"""


def test_a_change_made_whole_stays_when_its_writer_dies_removing_the_snapshot(tmp_path):
    """The snapshot was removed in one rmtree, in the order the folder listed it: a writer killed
    after its index/ entry went but before its listing kept a snapshot that the next command rolled
    back half (the old config beside the new index). Its listing now goes first: what is left of
    it changes nothing."""
    run = tmp_path / "run"
    (run / "index").mkdir(parents=True)
    (run / "index" / "codes").write_text("old codes")
    (run / "config.json").write_text("old config")
    env = os.environ | {"SEMID_FAULT_POINT": "restore.listing_dropped"}
    done = subprocess.run([sys.executable, "-c", KILLED_WHILE_DROPPING_ITS_SNAPSHOT, str(run)],
                          env=env, check=False)  # fmt: skip
    assert done.returncode == 97
    (snapshot,) = atomic.unfinished_changes(run)  # left, with its saved entries
    assert (snapshot / "index" / "codes").read_text() == "old codes"
    shutil.rmtree(snapshot / "index")  # the kill came later still, inside the removal
    assert atomic.roll_back(run) == [] and not atomic.unfinished_changes(run)
    assert (run / "index" / "codes").read_text() == "new codes"
    assert (run / "config.json").read_text() == "new config"


def test_a_put_back_that_fails_leaves_its_snapshot_for_the_next_command(tmp_path, monkeypatch):
    """A put-back that raised half way (a full disk, say) dropped the snapshot anyway, so the half
    undone change stayed for good."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("old config")

    def fails(snapshot):
        raise OSError("no space left on device")

    monkeypatch.setattr(atomic, "_put_back", fails)
    with pytest.raises(OSError, match="no space"), atomic.restore_on_error([run / "config.json"]):
        with atomic.atomic_file(run / "config.json") as f:  # semid replaces files, never edits them
            f.write("new config")
        raise ValueError("the change failed")
    (snapshot,) = run.glob(".restore.*.tmp")
    assert (snapshot / "config.json").read_text() == "old config"


def test_leftovers_of_an_earlier_process_with_this_pid_are_undone(tmp_path, monkeypatch):
    """A container's re-run often gets the pid of the run before it (pid 1 as its entry point):
    the leftovers of a killed writer with this process's pid were taken for its own, so its
    change was never undone and its temporaries never removed."""
    run = tmp_path / "run"
    (run / "index").mkdir(parents=True)
    (run / "config.json").write_text("old config")
    done = subprocess.run([sys.executable, "-c", KILLED_INSIDE_A_CHANGE, str(run)], check=False)
    assert done.returncode == 97
    (snapshot,) = atomic.unfinished_changes(run)
    (temp,) = run.glob(".config.json.*.tmp")
    pid = os.getpid()
    mine = [snapshot.rename(snapshot.with_name(f".restore.{pid}.{'a' * 8}.tmp")),
            temp.rename(temp.with_name(f".config.json.{pid}.{'b' * 8}.tmp"))]  # fmt: skip
    time.sleep(0.01)
    monkeypatch.setattr(atomic, "_PROCESS_START", time.time())  # they predate "this process"
    assert atomic.unfinished_changes(run) == [mine[0]]
    assert "config.json" in atomic.roll_back(run)
    assert (run / "config.json").read_text() == "old config" and not mine[1].exists()
    fresh = run / f".config.json.{pid}.{'c' * 8}.tmp"  # this process's own, being written
    fresh.write_text("x")
    assert atomic.remove_stale(run / "config.json") == [] and fresh.exists()


def test_this_processs_own_backup_of_an_old_file_is_left_to_its_swap(tmp_path):
    """A swap renames the file it replaces aside: the backup keeps the file's old mtime, but it is
    this process's, mid-swap, and must not be put back as a dead writer's."""
    path = tmp_path / "config.json"
    path.write_text("old")
    os.utime(path, (1_000_000, 1_000_000))  # written long before this process
    backup = path.rename(tmp_path / f".config.json.old-{os.getpid()}")
    assert not atomic.recover(path) and backup.exists() and not path.exists()


def test_a_reader_that_undoes_a_killed_change_says_so(tmp_path, capsys):
    """The next command put the run back silently: its figures were the earlier model's, and
    nothing said that the stopped command's change was lost."""
    from semid.manifest import undo_killed_writes

    run = tmp_path / "run"
    (run / "index").mkdir(parents=True)
    (run / "config.json").write_text("old config")
    subprocess.run([sys.executable, "-c", KILLED_INSIDE_A_CHANGE, str(run)], check=False)
    undo_killed_writes(run)
    assert (run / "config.json").read_text() == "old config"
    assert (
        "it is as it was before that command again: run the command again"
        in capsys.readouterr().err
    )
    undo_killed_writes(run)  # nothing left to undo: no note
    assert "half changed" not in capsys.readouterr().err


KILLED_IN_A_SESSION = """
import os, sys
from pathlib import Path
from semid.atomic import restore_on_error
run = Path(sys.argv[1])
with restore_on_error([run / "train-session-1"]):
    (run / "train-session-1").mkdir()
    os._exit(97)  # SIGKILL while a prompt session trains beside the run
"""


def test_a_stopped_session_is_told_as_removed_not_as_a_half_changed_run(tmp_path, capsys):
    """An `index add` killed while its prompt session trained changed nothing a reader reads: the
    note says its folder was removed and the run not changed, not that the run was half changed."""
    from semid.manifest import undo_killed_writes

    run = tmp_path / "run"
    run.mkdir()
    (run / "config.json").write_text("config")
    subprocess.run([sys.executable, "-c", KILLED_IN_A_SESSION, str(run)], check=False)
    undo_killed_writes(run)
    err = capsys.readouterr().err
    assert "removed train-session-1 that a semid command stopped before its end left in" in err
    assert "the run itself was not changed" in err and "half changed" not in err
    assert not (run / "train-session-1").exists()


SLOW_CHANGE = """
import sys, time
from pathlib import Path
from semid.atomic import atomic_file, restore_on_error
from semid.locking import write_lock
run, names = Path(sys.argv[1]), sys.argv[2:]
with write_lock(run, "run"), restore_on_error([run / name for name in names]):
    with atomic_file(run / names[0]) as f:
        f.write("new")
    time.sleep(2)  # a slow disk between the two parts
    with atomic_file(run / names[1]) as f:
        f.write("new")
"""


@pytest.mark.parametrize(
    ("names", "waits"),
    [(["config.json", "manifest.json"], True),  # parts a reader reads: waited for
     (["train-session-1", "notes.txt"], False)],  # a retriever add's training: read meanwhile
)  # fmt: skip
def test_a_reader_waits_for_a_live_change_of_what_it_reads(tmp_path, monkeypatch, names, waits):
    """A run read between the parts of a live writer's change (new index, old model) would be
    answered half changed: the reader waits for the change to end, unless it changes nothing the
    reader reads, or the run is read-only here (a stale snapshot there could never be cleared)."""
    import semid.manifest
    from semid.manifest import undo_killed_writes

    monkeypatch.setattr(semid.manifest, "note", lambda text: None)
    run = tmp_path / "run"
    run.mkdir()
    for name in names:
        (run / name).write_text("old")
    child = subprocess.Popen([sys.executable, "-c", SLOW_CHANGE, str(run), *names])
    try:
        while (run / names[0]).read_text() != "new":  # inside the change
            assert child.poll() is None
        assert atomic.changes_in_progress(run, names) == [child.pid]
        monkeypatch.setattr(semid.manifest, "can_write", lambda folder: False)
        undo_killed_writes(run)  # read-only here: no wait
        assert (run / names[1]).read_text() == "old"
        monkeypatch.undo()
        monkeypatch.setattr(semid.manifest, "note", lambda text: None)
        undo_killed_writes(run)
        assert (run / names[1]).read_text() == ("new" if waits else "old")
    finally:
        assert child.wait(timeout=60) == 0


# --- full disk ---------------------------------------------------------------------------------


def raise_errno(code: int):
    def fail(*args, **kwargs):
        raise OSError(code, os.strerror(code))

    return fail


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT])
@pytest.mark.parametrize("where", ["write", "fsync"])
def test_full_disk_in_atomic_file_is_one_line_and_keeps_old(tmp_path, monkeypatch, code, where):
    target = tmp_path / "codes.bin"
    with atomic_file(target, "wb") as f:
        f.write(b"old version")
    with pytest.raises(DiskFullError) as caught, atomic_file(target, "wb") as f:
        if where == "write":
            monkeypatch.setattr(f, "write", raise_errno(code))
        else:
            monkeypatch.setattr(os, "fsync", raise_errno(code))
        f.write(b"new version")
    message = str(caught.value)
    assert "\n" not in message and str(target) in message and "no space left" in message
    assert isinstance(caught.value, SemidError)
    assert target.read_bytes() == b"old version"
    assert hidden(tmp_path) == []


def written_file_and_folder(tmp_path: Path) -> list[tuple[Path, Any]]:
    """A file written with `atomic_file` ("old") and a folder with `atomic_dir`, each with its
    writer, for tests that then fail a second write of each."""
    targets = [(tmp_path / "codes.bin", atomic_file), (tmp_path / "index", atomic_dir)]
    with atomic_file(targets[0][0]) as f:
        f.write("old")
    with atomic_dir(targets[1][0]) as made:
        (made / "a.bin").write_bytes(b"old version")
    return targets


@pytest.mark.parametrize(
    "failure",
    [OSError(errno.EFBIG, os.strerror(errno.EFBIG)),
     RuntimeError("Error while serializing: I/O error: File too large (os error 27)")],  # safetensors
)  # fmt: skip
def test_a_file_past_a_size_limit_is_one_line_and_keeps_old(tmp_path, failure):
    """A file past `ulimit -f` or the file system's limit (EFBIG) was a traceback, exit 1."""
    for target, writer in written_file_and_folder(tmp_path):
        with pytest.raises(DiskFullError) as caught, writer(target):
            raise failure
        message = str(caught.value)
        assert "\n" not in message and "size limit of the file system or of this process" in message
        assert f"while writing {target}; write to another file system or raise the limit" in message
        assert "nothing was replaced" in message
    assert (tmp_path / "codes.bin").read_text() == "old" and hidden(tmp_path) == []


@pytest.mark.parametrize(
    ("code", "said", "fix"),
    [(errno.EIO, "an input/output error (the device failed)", "check the device (`dmesg`)"),
     (errno.EROFS, "a read-only file system", "write to a writable file system"),
     (errno.EPERM, "operation not permitted", "make it writable for this user or write elsewhere")],
)  # fmt: skip
def test_a_write_the_device_refuses_is_one_line_and_keeps_old(tmp_path, code, said, fix):
    """A disk error (EIO) or a file system remounted read-only under a long run was a traceback
    from deep inside the writer; it now names the file refused, the artifact and the fix."""
    from semid.atomic import WriteFailedError

    for target, writer in written_file_and_folder(tmp_path):
        refused = tmp_path / ".part.tmp"
        with pytest.raises(WriteFailedError) as caught, writer(target):
            raise OSError(code, os.strerror(code), str(refused))
        message = str(caught.value)
        assert "\n" not in message and isinstance(caught.value, SemidError)
        assert f"{said}" in message and f"on {refused} while writing {target}; {fix}" in message
        assert "nothing was replaced" in message and caught.value.errno == code
    assert (tmp_path / "codes.bin").read_text() == "old" and hidden(tmp_path) == []


def test_a_refused_write_on_a_mount_without_free_blocks_is_not_called_a_full_disk(
    tmp_path, monkeypatch
):
    """Read-only mounts (squashfs, ISO 9660) show no free blocks: the free-space guess, meant for
    errors without an errno, called their EROFS "no space left on device; free space"."""
    from semid.atomic import WriteFailedError

    class NoFreeBlocks:
        f_bfree = f_bavail = 0
        f_frsize = 4096

    monkeypatch.setattr(os, "statvfs", lambda path: NoFreeBlocks())
    for code in (errno.EROFS, errno.EACCES, errno.ENOENT):
        with pytest.raises((OSError, SemidError)) as caught, atomic_file(tmp_path / "x") as f:
            f.write("x")
            raise OSError(code, os.strerror(code), str(tmp_path / ".x.tmp"))
        assert not isinstance(caught.value, DiskFullError)
        assert isinstance(caught.value, WriteFailedError) == (code != errno.ENOENT)


def test_an_os_error_of_no_write_kind_is_not_dressed_up(tmp_path):
    """A missing file inside the block is a bug of its own (or the caller's input), not a write
    failure: it is raised as it came."""
    with pytest.raises(FileNotFoundError), atomic_file(tmp_path / "x") as f:
        f.write("x")
        raise FileNotFoundError(errno.ENOENT, "No such file or directory", "missing.txt")


def test_full_disk_without_errno_is_recognised_by_free_space(tmp_path, monkeypatch):
    # torch.save reports a short write as RuntimeError("... unexpected pos ...") with no errno
    target = tmp_path / "model.pt"
    target.write_bytes(b"old")

    class Empty:
        f_bfree = f_bavail = 0
        f_frsize = 4096

    monkeypatch.setattr(os, "statvfs", lambda path: Empty())
    with pytest.raises(DiskFullError), atomic_file(target, "wb") as f:
        f.write(b"partial")
        raise RuntimeError("[enforce fail at inline_container.cc:672] . unexpected pos 576 vs 534")
    assert target.read_bytes() == b"old" and hidden(tmp_path) == []


def test_other_errors_are_not_called_disk_full(tmp_path):
    with pytest.raises(RuntimeError, match="shape mismatch"), atomic_file(tmp_path / "x") as f:
        f.write("x")
        raise RuntimeError("shape mismatch")


@pytest.mark.parametrize("nested", [False, True])
def test_full_disk_in_atomic_dir_keeps_old_folder(tmp_path, monkeypatch, swap_mode, nested):
    target = tmp_path / "index"
    write_folder(target, 1)
    with pytest.raises(DiskFullError, match=f"while writing {target};") as caught:
        with atomic_dir(target) as tmp:
            (tmp / "a.txt").write_text("a2")
            if nested:  # a file inside, itself written atomically, hits the full disk
                with atomic_file(tmp / "b.txt") as f:
                    monkeypatch.setattr(f, "write", raise_errno(errno.ENOSPC))
                    f.write("b2")
            else:
                raise OSError(errno.ENOSPC, "No space left on device")
    assert "\n" not in str(caught.value)
    assert read_folder(target) == ("a1", "b1")
    assert hidden(tmp_path) == []


def test_atomic_dir_gives_private_files_the_usual_mode(tmp_path):
    """safetensors writes 0600 files; a saved artifact is readable like any file the user writes."""
    import torch
    from safetensors.torch import save_file

    old = os.umask(0o022)
    try:
        with atomic_dir(tmp_path / "model") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))
            (tmp / "run.sh").write_text("true")
            os.chmod(tmp / "run.sh", 0o700)
    finally:
        os.umask(old)
    assert (tmp_path / "model" / "model.safetensors").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "model" / "run.sh").stat().st_mode & 0o777 == 0o744  # keeps its own bits


def test_check_output_folder_creates_parents_but_not_the_folder(tmp_path):
    """A command that fails after checking its --out leaves no empty output folder behind."""
    out = tmp_path / "runs" / "new"
    check_output_folder(out)
    assert (tmp_path / "runs").is_dir() and not out.exists()
    out.mkdir()
    check_output_folder(out)  # an existing folder is fine
    (tmp_path / "file").write_text("x")
    with pytest.raises(SemidError, match="is a file, not a folder"):
        check_output_folder(tmp_path / "file")


def test_an_output_that_is_a_stream_is_written_not_replaced(tmp_path):
    """`--out /dev/stdout` (a symlink to a terminal or pipe) was replaced by a regular file, as
    root, by the rename of an atomic write; a named pipe is written through, a symlink to a file
    keeps its place and its file is replaced."""
    from semid.atomic import check_output_file, is_stream, output_file

    fifo = tmp_path / "answers.fifo"
    os.mkfifo(fifo)
    link = tmp_path / "stdout"
    link.symlink_to(fifo)  # as /dev/stdout -> /proc/self/fd/1 -> a pipe
    reader = subprocess.Popen(["cat", str(fifo)], stdout=subprocess.PIPE, text=True)
    try:
        assert is_stream(link) and not is_stream(tmp_path) and not is_stream(tmp_path / "new")
        check_output_file(link)
        with output_file(link) as f:
            f.write('{"k": 1}\n')
        assert reader.communicate(timeout=10)[0] == '{"k": 1}\n'
    finally:
        reader.kill()
    assert link.is_symlink() and fifo.is_fifo()
    check_output_file("/dev/null")
    with output_file("/dev/null", "wb") as f:
        f.write(b"png")
    assert Path("/dev/null").is_char_device()
    # a symlink to a regular file is replaced itself, never followed: in a shared folder such as
    # /tmp another user's link could point at any of this user's files (~/.bashrc)
    target = tmp_path / "victim.txt"
    target.write_text("kept\n")
    alias = tmp_path / "answers.jsonl"
    alias.symlink_to(target)
    check_output_file(alias)
    with output_file(alias) as f:
        f.write("new\n")
    assert not alias.is_symlink() and alias.read_text() == "new\n"
    assert target.read_text() == "kept\n"


def test_dev_stdout_redirected_to_a_file_is_written_where_the_shell_writes(tmp_path):
    """`(echo first; semid ... --out /dev/stdout; echo last) > log` and `>> log` lost the log's
    other lines: /dev/stdout led to a regular file, which the atomic write replaced."""
    script = (
        "import sys\nfrom semid.atomic import check_output_file, is_stream, output_file\n"
        "check_output_file('/dev/stdout')\nassert is_stream('/dev/stdout')\n"
        "with output_file('/dev/stdout') as f:\n    f.write('answers\\n')\n"
    )
    log = tmp_path / "log.txt"
    for spelling in ("//dev/stdout", "/proc/thread-self/fd/1", str(tmp_path / "link")):
        (tmp_path / "link").unlink(missing_ok=True)
        (tmp_path / "link").symlink_to("/dev/stdout")
        with open(log, "w") as out:  # every way of naming standard output reaches it
            out.write("first\n")
            out.flush()
            code = script.replace("'/dev/stdout'", repr(spelling))
            subprocess.run([sys.executable, "-c", code], stdout=out, check=True)
            out.write("last\n")
        assert log.read_text() == "first\nanswers\nlast\n", spelling
    closed = "import os, sys\nos.close(1)\nsys.stdout = None\n" + script.replace("stdout", "stderr")
    done = subprocess.run([sys.executable, "-c", closed], capture_output=True, text=True)
    assert done.returncode == 0 and done.stderr == "answers\n", done.stderr  # stdout closed
    with open(log, "w") as out:
        out.write("first\n")
        out.flush()
        subprocess.run([sys.executable, "-c", script], stdout=out, check=True)
        out.write("last\n")
    assert log.read_text() == "first\nanswers\nlast\n"
    with open(log, "a") as out:  # `>> log`
        subprocess.run([sys.executable, "-c", script], stdout=out, check=True)
    assert log.read_text() == "first\nanswers\nlast\nanswers\n"
    subprocess.run([sys.executable, "-c", script], stdout=subprocess.DEVNULL, check=True)


def test_a_stale_temp_file_of_another_user_is_left_alone(tmp_path, monkeypatch):
    """Another user's leftover beside an --out in /tmp could not be removed: a PermissionError
    traceback, and nothing written."""
    leftover = tmp_path / ".p.jsonl.999999.abcdefgh.tmp"
    leftover.write_text("theirs")
    real_unlink = Path.unlink

    def not_ours(self, missing_ok=False):
        if self == leftover:
            raise PermissionError(1, "Operation not permitted")
        return real_unlink(self, missing_ok=missing_ok)

    monkeypatch.setattr(Path, "unlink", not_ours)
    monkeypatch.setattr(atomic, "pid_alive", lambda pid: False)
    with atomic_file(tmp_path / "p.jsonl") as f:
        f.write("answers\n")
    assert (tmp_path / "p.jsonl").read_text() == "answers\n" and leftover.exists()


def test_another_users_file_in_a_sticky_folder_is_refused_before_the_work(tmp_path, monkeypatch):
    """`--out /tmp/theirs.jsonl` (another user's file, writable by all) ended in a PermissionError
    traceback from the rename, after the work."""
    from semid.atomic import check_output_file

    theirs = tmp_path / "theirs.jsonl"
    theirs.write_text("")
    tmp_path.chmod(0o1777)
    monkeypatch.setattr(os, "geteuid", lambda: os.stat(theirs).st_uid + 4242)
    with pytest.raises(SemidError, match="cannot replace .*theirs.jsonl: it is another user's"):
        check_output_file(theirs)
    check_output_file(tmp_path / "mine.jsonl")  # a new file is fine


def test_files_and_folders_this_user_cannot_read_are_one_line(tmp_path, monkeypatch):
    """A run, an index or an input file of another user, unreadable here, was a PermissionError
    traceback (root, who reads everything, never saw it)."""
    from semid.atomic import read_json, unfinished_changes
    from semid.data.text_files import read_lines

    (tmp_path / "config.json").write_text("{}")
    (tmp_path / "users.txt").write_text("196\n")

    def denied(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(Path, "read_text", denied)
    monkeypatch.setattr(Path, "read_bytes", denied)
    monkeypatch.setattr(Path, "iterdir", denied)
    with pytest.raises(SemidError, match="cannot read .*config.json: permission denied"):
        read_json(tmp_path / "config.json", "fix")
    with pytest.raises(SemidError, match="cannot read --users .*users.txt: permission denied"):
        read_lines(tmp_path / "users.txt", "--users")
    with pytest.raises(SemidError, match="cannot read the folder .*: permission denied"):
        unfinished_changes(tmp_path)


def test_a_folder_written_in_a_setgid_team_folder_keeps_the_bit(tmp_path):
    """atomic_dir's chmod cleared the setgid bit mkdir had inherited, so the files of a run or an
    index in a team folder took the writer's own group, and teammates could not read them."""
    team = tmp_path / "team"
    team.mkdir()
    team.chmod(0o2775)
    with atomic_dir(team / "run") as tmp:
        (tmp / "a.txt").write_text("x")
    assert (team / "run").stat().st_mode & 0o2000
    plain = tmp_path / "plain"
    with atomic_dir(plain) as tmp:
        (tmp / "a.txt").write_text("x")
    assert not plain.stat().st_mode & 0o2000


def test_the_run_a_path_lies_in_is_found_through_links_and_only_by_a_runs_manifest(tmp_path):
    """`index add proj/idx` was refused when proj/ held another tool's manifest.json, and a
    symlink to RUN/index got past the check (two copies of the rule disagreed)."""
    from semid.manifest import run_containing

    (tmp_path / "proj" / "idx").mkdir(parents=True)
    (tmp_path / "proj" / "manifest.json").write_text('{"name": "a web app"}')
    assert run_containing(tmp_path / "proj" / "idx") is None
    (tmp_path / "run" / "index").mkdir(parents=True)
    (tmp_path / "run" / "manifest.json").write_text('{"task": "recommend"}')
    (tmp_path / "alias").symlink_to(tmp_path / "run" / "index")
    assert run_containing(tmp_path / "alias") == (tmp_path / "run").resolve()
    assert run_containing(tmp_path / "run") is None  # a run is not inside itself
