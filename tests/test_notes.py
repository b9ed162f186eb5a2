"""semid.notes: the library logs its notes and progress lines; commands show them on the console."""

import logging
import subprocess
import sys

from semid.notes import ConsoleHandler, logger, note, show_on_console, tell


def test_commands_show_notes_on_stderr_and_progress_lines_on_stdout(capsys):
    show_on_console()
    show_on_console()  # idempotent: one handler, each message shown once
    assert sum(isinstance(h, ConsoleHandler) for h in logger.handlers) == 1
    note("the items file has 2 repeated rows")
    note("runs/x changed on disk; loaded it again", "serve")  # as serve's own lines read
    tell("indexed 1,682 items")
    out, err = capsys.readouterr()
    assert err == (
        "semid: note: the items file has 2 repeated rows\n"
        "semid serve: runs/x changed on disk; loaded it again\n"
    )
    assert out == "indexed 1,682 items\n"


def test_a_python_caller_gets_notes_through_logging_and_prints_nothing_itself():
    """Without show_on_console, a note reaches stderr only through logging's last-resort handler
    (no prefix), a progress line not at all, and a caller's own logging configuration gets both."""
    code = (
        "import logging, sys\n"
        "from semid.notes import note, tell\n"
        "note('a note'); tell('a progress line')\n"
        "logging.basicConfig(stream=sys.stdout, level=logging.INFO, format='%(name)s %(message)s')\n"
        "note('routed'); tell('routed too')\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stderr == "a note\n"
    assert done.stdout == "semid.notes routed\nsemid.notes routed too\n"


def test_a_library_note_is_a_log_record():
    """A caller's own handler on the semid.notes logger gets each message once, with its level."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    logger.addHandler(handler)
    try:
        note("n")
        tell("t")
    finally:
        logger.removeHandler(handler)
    assert [(r.levelname, r.getMessage()) for r in records] == [("WARNING", "n"), ("INFO", "t")]
