"""Where a benchmark's measurements go: ``STEM.json`` (every number) and ``STEM.md`` (the table)."""

from __future__ import annotations

import os
import platform
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from semid.atomic import atomic_file, write_json


def command_line(module: str, argv: Sequence[str] | None = None) -> str:
    """The command that ran benchmark ``module`` with ``argv`` (default: this process's arguments),
    quoted for a shell, so that it can be pasted to run again (``'mmgrec={"layers": 3}'``)."""
    return shlex.join(
        ["python", "-m", f"benchmarks.{module}", *(sys.argv[1:] if argv is None else argv)]
    )


def cpu_description() -> str:
    """The machine's CPU for a result's record: architecture, model (from /proc/cpuinfo where
    there is one) and count, e.g. "x86_64, Intel(R) Xeon(R) Processor, 2 CPUs"."""
    model = platform.processor()
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")),
                         model)  # fmt: skip
    except OSError:  # not Linux: platform.processor() (often empty)
        pass
    return f"{platform.machine()}, {model or 'unknown CPU model'}, {os.cpu_count()} CPUs"


def run_header(module: str, argv: Sequence[str] | None, load_start: float) -> dict[str, Any]:
    """The fields every result opens with: the command (:func:`command_line`), the date, and the
    1-minute load average at the start (``load_start``, read before measuring) and now."""
    return {
        "command": command_line(module, argv),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "load_start": load_start,
        "load_end": os.getloadavg()[0],
    }


def write_result(stem: str | Path, result: Any, markdown: str, show: bool = True) -> None:
    """Write ``result`` to ``STEM.json`` and ``markdown`` to ``STEM.md``, each atomically (the
    folder is made if needed), then print the table unless ``show`` is false."""
    stem = Path(stem)
    stem.parent.mkdir(parents=True, exist_ok=True)
    write_json(f"{stem}.json", result)
    with atomic_file(f"{stem}.md") as f:
        f.write(markdown)
    if show:
        print(markdown)
