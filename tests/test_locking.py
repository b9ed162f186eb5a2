"""One writer per folder: a second process gets a clear error naming the holder, or waits for it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import semid.indexing
import semid.locking
import semid.runs
from semid.errors import SemidError
from semid.locking import current_writer, lock_path, write_lock
from semid.runs import model_stamp, read_manifest, read_metrics, update_metrics
from semid.tasks import get_task

HOLDER = """
import sys
from semid.locking import write_lock
with write_lock(sys.argv[1], "run " + sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.read()  # hold until the test closes our stdin
"""


def start_holder(folder: Path) -> subprocess.Popen:
    """Another process that holds the write lock of `folder` until its stdin is closed."""
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(folder)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout.readline() == "locked\n"
    return holder


def test_second_writer_gets_one_line_naming_the_holder(tmp_path):
    run = tmp_path / "run"
    holder = start_holder(run)
    try:
        with pytest.raises(SemidError) as caught, write_lock(run, f"run {run}"):
            pytest.fail("took a lock another process holds")
        message = str(caught.value)
        assert message == (
            f"run {run} is being written by another semid process (pid {holder.pid}); "
            "wait for it or use another --out"
        )
        started = time.monotonic()
        with pytest.raises(SemidError, match=re.escape(f"(pid {holder.pid})")):
            with write_lock(run, "run", timeout=0.5):
                pass
        assert time.monotonic() - started >= 0.4  # it waited out the timeout
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_second_writer_waits_for_the_first(tmp_path, monkeypatch):
    told: list[str] = []
    monkeypatch.setattr(semid.locking, "note", told.append)
    run = tmp_path / "run"
    holder = start_holder(run)
    release = threading.Timer(0.5, holder.stdin.close)
    release.start()
    started = time.monotonic()
    try:
        with write_lock(run, "run", timeout=60):
            waited = time.monotonic() - started
            assert holder.wait(timeout=60) == 0  # the holder is done: we are alone
    finally:
        release.cancel()
    assert waited >= 0.4
    assert told == [f"waiting for semid process {holder.pid} to finish writing run (up to 60 s)"]


def test_lock_of_a_killed_holder_is_free_at_once(tmp_path):
    run = tmp_path / "run"
    holder = start_holder(run)
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=60)
    with write_lock(run, "run"):
        pass


def test_lock_is_a_sibling_and_reentrant_in_one_process(tmp_path):
    run = tmp_path / "run"
    assert lock_path(run) == tmp_path / ".run.lock"
    with write_lock(run, "run"), write_lock(run, "run"):  # e.g. train building its index
        assert not run.exists()  # locking creates nothing inside the folder
    holder = start_holder(run)  # released: another process can take it
    holder.stdin.close()
    assert holder.wait(timeout=60) == 0


def test_writers_of_different_folders_do_not_block(tmp_path):
    holder = start_holder(tmp_path / "a")
    try:
        with write_lock(tmp_path / "b", "run b"):
            pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_reading_a_run_that_is_still_being_written_says_so(tmp_path):
    """`semid predict` on a run whose training has not finished names the training process,
    and says nothing of it once that process is gone."""
    from semid.runs import read_manifest

    run = tmp_path / "run"
    run.mkdir()
    holder = start_holder(run)
    try:
        assert current_writer(run) == str(holder.pid)
        with pytest.raises(
            SemidError, match=f"still being trained \\(semid process {holder.pid}\\)"
        ):
            read_manifest(run)
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)
    assert current_writer(run) is None
    with pytest.raises(SemidError, match="is not a run directory"):
        read_manifest(run)
    (run / "train" / "checkpoints" / "step-00000038").mkdir(
        parents=True
    )  # a stopped first training
    with pytest.raises(SemidError, match="holds an unfinished training .* again to resume it"):
        read_manifest(run)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="start times come from /proc")
def test_process_start_is_the_start_time_field_and_tells_processes_apart():
    """``process_start`` reads field 22 (starttime) of /proc/PID/stat: a process started later
    has a later start (another field, such as the always-0 itrealvalue, named every process)."""
    from semid.locking import process_start

    time.sleep(0.05)  # clock ticks are 10 ms
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(30)"])
    try:
        mine, theirs = process_start(os.getpid()), process_start(child.pid)
        assert mine is not None and theirs is not None and int(mine) > 0
        assert int(theirs) > int(mine)
        stat = Path(f"/proc/{child.pid}/stat").read_text()
        assert theirs == stat.rsplit(")", 1)[1].split()[19]
    finally:
        child.kill()
        child.wait(timeout=60)


@pytest.mark.skipif(not Path("/proc/self/stat").is_file(), reason="start times come from /proc")
def test_an_owner_file_left_by_a_killed_writer_does_not_name_a_process_given_its_pid(
    tmp_path, monkeypatch
):
    """A writer killed with SIGKILL leaves its owner file; once its pid is given to another live
    process, that process is not taken for the writer (its start time differs)."""
    run = tmp_path / "run"
    run.mkdir()
    with write_lock(run, "run r"):  # the owner file records this process and when it started
        assert current_writer(run) == str(os.getpid())
        owner = lock_path(run).with_name(lock_path(run).name + ".owner")
        held = owner.read_text()
    assert held.splitlines()[-1].startswith("started ")
    # a killed writer's file whose pid now belongs to this (live) process, started at another time
    owner.write_text(f"{os.getpid()} run r\nstarted 1\n")
    assert current_writer(run) is None
    with pytest.raises(SemidError, match="is not a run directory"):  # not "still being trained"
        read_manifest(run)
    owner.write_text(held)  # the same process and start: still the writer
    assert current_writer(run) == str(os.getpid())
    owner.write_text(f"{os.getpid()} run r\n")  # an owner file without a start time: by pid alone
    assert current_writer(run) == str(os.getpid())
    # a live pid whose start time cannot be read (another user's, /proc mounted with hidepid)
    owner.write_text(f"{os.getpid()} run r\nstarted 1\n")
    monkeypatch.setattr(semid.locking, "process_start", lambda pid: None)
    assert current_writer(run) == str(os.getpid())


def test_an_add_that_waited_in_vain_is_told_to_run_again(tmp_path, monkeypatch):
    """`index add` has no --out: its busy message says to run it again, not to use another --out."""
    monkeypatch.setattr(semid.indexing, "ADD_WAIT_SECONDS", 0.2)
    run = tmp_path / "run"
    holder = start_holder(run)
    try:
        with pytest.raises(SemidError, match=r"\(pid \d+\); run the add again once it is done$"):
            get_task("recommend").add(run, tmp_path / "new.csv")
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_metrics_wait_for_another_writer_of_the_run(tmp_path, monkeypatch):
    """`semid eval` merges its figures into metrics.json under the run's lock: a write while another
    process holds the run waits for it (two evaluations finishing together keep both splits)."""
    run = tmp_path / "run"
    run.mkdir()
    update_metrics(run, "valid", {"ndcg@10": 0.1})
    holder = start_holder(run)
    release = threading.Timer(0.5, holder.stdin.close)
    release.start()
    started = time.monotonic()
    try:
        update_metrics(run, "test", {"ndcg@10": 0.2})
    finally:
        release.cancel()
        holder.wait(timeout=60)
    assert time.monotonic() - started >= 0.4
    assert read_metrics(run) == {"valid": {"ndcg@10": 0.1}, "test": {"ndcg@10": 0.2}}
    monkeypatch.setattr(semid.runs, "METRICS_WAIT_SECONDS", 0.2)
    holder = start_holder(run)
    try:
        with pytest.raises(SemidError, match=r"\(pid \d+\); evaluate again once it is done$"):
            update_metrics(run, "test", {"ndcg@10": 0.3})
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_figures_of_a_run_changed_during_its_evaluation_are_refused(tmp_path):
    """A retrain or an `index add` between loading a run and saving its figures replaces what was
    evaluated: the figures are refused rather than saved beside another model."""
    run = tmp_path / "run"
    for part in ("index", "model"):
        (run / part).mkdir(parents=True)
    evaluated = model_stamp(run)
    update_metrics(run, "test", {"ndcg@10": 0.2}, evaluated)  # nothing changed: saved
    (run / "index" / "added").write_text("x")  # what an index add does to the folder
    with pytest.raises(SemidError, match="changed while it was evaluated .*evaluate it again$"):
        update_metrics(run, "valid", {"ndcg@10": 0.1}, evaluated)
    assert read_metrics(run) == {"test": {"ndcg@10": 0.2}}


@pytest.mark.parametrize("folder", ["/proc/semid-lock-test", "/sys/semid-lock-test"])
def test_a_folder_where_no_lock_can_be_made_is_one_clear_error(folder):
    """/proc takes no new file and /sys refuses even root: a write there is refused by name, not
    reported as another writer's lock (/proc) or raised as a PermissionError (/sys)."""
    with pytest.raises(SemidError, match=f"cannot write run {folder}: .*choose a writable --out"):
        with write_lock(folder, f"run {folder}"):
            pass


def test_only_empty_folders_this_process_made_are_removed(tmp_path, monkeypatch):
    from filelock import FileLock

    from semid.atomic import check_writable, made_folders_count, remove_empty_made_folders

    monkeypatch.chdir(tmp_path)
    before = made_folders_count()
    (tmp_path / "old").mkdir()
    (tmp_path / "kept").mkdir()  # there before, empty: not this process's to remove
    check_writable("old/new/deeper/run")  # makes new/ and deeper/
    with write_lock(tmp_path / "old" / "new" / "deeper" / "run", "run"):
        pass  # refused before writing: its lock file goes, then the folders it made
    check_writable("gone/x/run")  # makes gone/ and gone/x/, left empty
    check_writable("a/../kept/run")  # makes a/ only: kept/ was there
    check_writable("wrote/run")  # makes wrote/, where the run was written: lock and all stay
    with write_lock(tmp_path / "wrote" / "run", "run"):
        (tmp_path / "wrote" / "run").mkdir()
    check_writable("busy/run")  # makes busy/, whose lock another writer holds now: it stays
    with write_lock(tmp_path / "busy" / "run", "run"):
        pass
    held = FileLock(tmp_path / "busy" / ".run.lock")
    held.acquire()
    try:
        remove_empty_made_folders(since=before)
    finally:
        held.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["busy", "kept", "old", "wrote"]
    assert list((tmp_path / "old").iterdir()) == []
    assert sorted(p.name for p in (tmp_path / "wrote").iterdir()) == [".run.lock", "run"]
    assert [p.name for p in (tmp_path / "busy").iterdir()] == [".run.lock"]


def test_a_lock_this_process_did_not_create_stays(tmp_path, monkeypatch):
    from semid.atomic import check_writable, made_folders_count, remove_empty_made_folders

    monkeypatch.chdir(tmp_path)
    before = made_folders_count()
    check_writable("new/run")
    (tmp_path / "new" / ".run.lock").write_text("")  # another process's, made meanwhile
    with write_lock(tmp_path / "new" / "run", "run"):
        pass
    remove_empty_made_folders(since=before)
    assert [p.name for p in (tmp_path / "new").iterdir()] == [".run.lock"]


def test_an_output_folder_named_like_a_file_is_one_clear_error(tmp_path):
    from semid.atomic import check_writable

    (tmp_path / "taken").write_text("")
    with pytest.raises(
        SemidError, match="cannot create output folder .*taken: a file has that name"
    ):
        check_writable(tmp_path / "taken" / "run")


def test_a_refused_command_leaves_no_empty_output_folders(tmp_path, capsys):
    from semid.cli.main import main

    out = tmp_path / "runs" / "new" / "index"
    assert main(["index", "build", "--dataset", str(tmp_path / "nope"), "--out", str(out)]) == 2
    assert "neither a registered dataset" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_a_lock_is_held_when_its_owner_file_cannot_be_written(tmp_path, monkeypatch):
    """A full disk (or a name that is not UTF-8) leaves the holder unnamed, not a traceback: the
    write that needs the room says what is wrong."""
    import errno

    real = Path.write_text

    def full(self, *args, **kwargs):
        if ".owner." in self.name:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full)
    with write_lock(tmp_path / "run", "run"):
        assert current_writer(tmp_path / "run") is None  # unnamed
    assert sorted(p.name for p in tmp_path.iterdir()) == [".run.lock"]  # no owner file left


def test_writers_through_a_symbolic_link_and_the_folder_exclude_each_other(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    (tmp_path / "latest").symlink_to(run)
    holder = start_holder(tmp_path / "latest")
    try:
        with pytest.raises(
            SemidError, match=f"being written by another semid process \\(pid {holder.pid}\\)"
        ):
            with write_lock(run, "run"):
                pass
    finally:
        holder.stdin.close()
        holder.wait(timeout=60)


def test_a_lock_file_takes_the_umask_so_a_team_folder_stays_shared(tmp_path):
    """Lock files were made 0644 whatever the umask: in a group-writable team folder a teammate
    could not evaluate, add to or train from a run or index someone else had written."""
    old = os.umask(0o002)
    try:
        with write_lock(tmp_path, "run x") as lock:
            mode = os.stat(lock).st_mode & 0o777
    finally:
        os.umask(old)
    assert mode == 0o664


def test_an_evaluation_at_other_cutoffs_keeps_the_earlier_figures_of_the_same_catalogue(tmp_path):
    """`eval --k 10 100` then `eval --k 10 1000`: the @100 figures stay (same catalogue); after an
    `index add` (another catalogue) the split's earlier figures are of another index and go."""
    run = tmp_path / "run"
    run.mkdir()
    update_metrics(run, "test", {"num_items": 100.0, "recall@10": 0.1, "recall@100": 0.5})
    update_metrics(run, "test", {"num_items": 100.0, "recall@10": 0.2, "recall@50": 0.3})
    assert read_metrics(run)["test"] == {
        "num_items": 100.0, "recall@10": 0.2, "recall@100": 0.5, "recall@50": 0.3
    }  # fmt: skip
    update_metrics(run, "test", {"num_items": 120.0, "recall@10": 0.09})
    assert read_metrics(run)["test"] == {"num_items": 120.0, "recall@10": 0.09}
    update_metrics(run, "valid", {"ndcg@10": 0.1})  # training's figures (no catalogue): replaced
    update_metrics(run, "valid", {"recall@10": 0.3})
    assert read_metrics(run)["valid"] == {"recall@10": 0.3}


@pytest.mark.parametrize(
    "extra, told",
    [
        (["--min-interactions", "0"], "min_interactions (CLI --min-interactions) must be >= 1"),
        ([], "line 3: timestamp 'x' is not integer seconds"),
    ],
)
def test_refused_data_leaves_no_folder_holding_only_a_lock(tmp_path, capsys, extra, told):
    """`index build` takes its --out's lock before it reads the data; a refusal of the data left
    the folders it made, each holding only the lock file."""
    from semid.cli.main import main

    (tmp_path / "log.csv").write_text("user,item,timestamp\nu1,a,1\nu1,b,x\n")
    if extra:
        (tmp_path / "log.csv").write_text("user,item,timestamp\nu1,a,1\nu1,b,2\n")
    out = tmp_path / "new" / "a" / "index"
    assert (
        main(["index", "build", "--dataset", str(tmp_path / "log.csv"), "--out", str(out), *extra])
        == 2
    )
    assert told in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["log.csv"]
