"""A process of a launched job stops when its launcher dies, though torchrun starts it in a
session of its own (where a SIGKILL of the launcher, or of its process group, does not reach it)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

CHILD = """
import signal, sys, time
from semid.distributed import stop_with_launcher
def stopped(signum, frame):
    print("terminated", flush=True)
    sys.exit(143)
signal.signal(signal.SIGTERM, stopped)
stop_with_launcher()
print("ready", flush=True)
time.sleep(60)
print("outlived its launcher", flush=True)
"""

LAUNCHER = """
import subprocess, sys, time
child = subprocess.Popen([sys.executable, "-c", sys.argv[1]], stdout=open(sys.argv[2], "w"),
                         start_new_session=True)  # as torchrun starts its workers
print(child.pid, flush=True)
time.sleep(60)
"""


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return (
        Path(f"/proc/{pid}").is_dir()
        and "Z" not in Path(f"/proc/{pid}/stat").read_text().split()[2]
    )


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="PR_SET_PDEATHSIG is Linux's")
def test_a_launched_process_stops_when_its_launcher_is_killed(tmp_path):
    out = tmp_path / "child.out"
    launcher = subprocess.Popen([sys.executable, "-c", LAUNCHER, CHILD, str(out)],
                                stdout=subprocess.PIPE, text=True)  # fmt: skip
    child = int(launcher.stdout.readline())
    try:
        deadline = time.monotonic() + 60
        while "ready" not in out.read_text() and time.monotonic() < deadline:
            time.sleep(0.05)
        launcher.send_signal(signal.SIGKILL)
        launcher.wait(10)
        deadline = time.monotonic() + 10
        while _alive(child) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(child), "the launched process outlived its launcher"
        assert out.read_text().split() == ["ready", "terminated"]
    finally:
        if _alive(child):
            os.kill(child, signal.SIGKILL)
