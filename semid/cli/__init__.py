"""The `semid` command line."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path


def console_script() -> str:
    """Path of the `semid` command installed with the running interpreter (the one pip put beside
    it), else the first `semid` on PATH: a PATH lookup alone may find another environment's,
    possibly broken, install when this interpreter's folder is not on PATH."""
    beside = Path(sys.executable).parent / "semid"
    return str(beside) if beside.is_file() else shutil.which("semid") or "semid"
