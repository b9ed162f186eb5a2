"""Progress bars for long work: tqdm, quiet in logs.

On a terminal a bar redraws up to 10 times a second. Written to a log file or a pipe, every redraw
is another line (a digits training run wrote 70 kB of them), so there a bar updates at most every
:data:`LOG_INTERVAL_S` seconds, plus its first and last state.
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Sequence
from typing import Any, TypeVar

from tqdm.auto import tqdm

from semid.distributed import is_main_process

LOG_INTERVAL_S = 30.0
T = TypeVar("T")


def progress_bar(*args: Any, **kwargs: Any) -> tqdm:
    """``tqdm.auto.tqdm(*args, **kwargs)`` with ``mininterval`` set to :data:`LOG_INTERVAL_S` when
    its stream is neither a terminal nor a notebook (unless given)."""
    stream = kwargs.get("file") or sys.stderr
    logging_to_file = (
        not getattr(stream, "isatty", lambda: False)() and "ipykernel" not in sys.modules
    )
    if logging_to_file:
        kwargs.setdefault("mininterval", LOG_INTERVAL_S)
    return tqdm(*args, **kwargs)


def close_open_bars() -> None:
    """Close every progress bar still open (one an error left behind in a variable lives on with
    the traceback, and would redraw after the error's message), so what is printed next starts on
    a line of its own."""
    for bar in list(getattr(tqdm, "_instances", ())):
        bar.close()


def with_progress(items: Sequence[T], desc: str, unit: str, quiet_up_to: int) -> Iterable[T]:
    """``items``, with a progress bar (cleared when done) when there are more than ``quiet_up_to``
    of them, on the main process only (one bar per job, not per rank)."""
    quiet = len(items) <= quiet_up_to or not is_main_process()
    return progress_bar(items, desc=desc, unit=unit, leave=False, disable=quiet)


def batch_starts(total: int, batch_size: int, desc: str, quiet_up_to: int = 8) -> Iterable[int]:
    """``range(0, total, batch_size)``, with a progress bar of batches when there are more than
    ``quiet_up_to`` of them: a long evaluation or search says how far it is."""
    return with_progress(range(0, total, batch_size), desc, "batch", quiet_up_to)
