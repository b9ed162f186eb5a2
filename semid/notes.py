"""What the library tells the person running it, through :mod:`logging` (library code never prints).

``note(text)`` is something they may want to act on (a WARNING of the ``semid.notes`` logger;
``note(text, "serve")`` is shown as ``semid serve: TEXT``, as that command's own lines are);
``tell(text)`` is a summary or progress line (INFO). `semid` commands call :func:`show_on_console`
first: notes then go to stderr as ``semid: note: TEXT`` and progress lines to stdout. A Python caller
who configures nothing sees notes on stderr through logging's last-resort handler and no progress
lines; ``show_on_console()`` shows both as the commands do, and logging's own configuration routes
them anywhere else (``logging.getLogger("semid.notes")``)."""

from __future__ import annotations

import logging
import sys

logger = logging.getLogger("semid.notes")


def note(text: str, command: str | None = None) -> None:
    """Tell the user something they may want to act on: on stderr as ``semid: note: TEXT`` in a
    command, or ``semid COMMAND: TEXT`` for what a long-running command (serve) reports as it goes."""
    logger.warning(text, extra={"command": command})


def tell(text: str) -> None:
    """Tell the user what a step did or is doing (stdout, in a command)."""
    logger.info(text)


class ConsoleHandler(logging.Handler):
    """Notes to stderr as ``semid: note: TEXT``, progress lines to stdout, each flushed at once.
    The streams are looked up at every message, so a redirected ``sys.stdout`` (pytest's capture,
    an `accelerate` rank silenced to /dev/null) is honoured."""

    def emit(self, record: logging.LogRecord) -> None:
        """Print the record's message to the stream its level goes to."""
        text = record.getMessage()
        if record.levelno >= logging.WARNING:
            command = getattr(record, "command", None)
            prefix = f"semid {command}:" if command else "semid: note:"
            print(f"{prefix} {text}", file=sys.stderr, flush=True)
        else:
            print(text, flush=True)


def show_on_console() -> None:
    """Show notes and progress lines as `semid` commands do (idempotent); they no longer go on to
    the root logger's handlers, which would show them twice."""
    if not any(isinstance(h, ConsoleHandler) for h in logger.handlers):
        logger.addHandler(ConsoleHandler())
    logger.setLevel(logging.INFO)
    logger.propagate = False
