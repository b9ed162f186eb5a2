"""Progress bars stay quiet in logs: a bar written to a file redraws at most every 30 s."""

import io
import time

import pytest

from semid.cli.main import main
from semid.errors import SemidError
from semid.progress import LOG_INTERVAL_S, batch_starts, progress_bar


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_a_bar_in_a_log_redraws_rarely_and_on_a_terminal_as_usual():
    log = io.StringIO()
    for _ in progress_bar(range(40), file=log):
        time.sleep(0.01)  # 0.4 s: a terminal bar would redraw about 5 times
    assert log.getvalue().count("\r") <= 3  # the first state and the last
    assert progress_bar(range(1), file=log).mininterval == LOG_INTERVAL_S
    assert progress_bar(range(1), file=Terminal()).mininterval == 0.1
    assert progress_bar(range(1), file=log, mininterval=1.0).mininterval == 1.0


def test_batch_starts_show_a_bar_only_for_many_batches(capsys):
    """A long evaluation or search says how far it is; a short one stays quiet."""
    assert list(batch_starts(100, 10, "rank test users", quiet_up_to=8)) == list(range(0, 100, 10))
    assert "rank test users" in capsys.readouterr().err
    assert list(batch_starts(16, 8, "rank test users", quiet_up_to=8)) == [0, 8]
    assert capsys.readouterr().err == ""


@pytest.mark.parametrize(
    ("stop", "said"),
    [(KeyboardInterrupt, "semid: interrupted; "), (SemidError("bad input"), "semid: error: bad")],
)
def test_a_stopped_commands_last_message_is_not_on_a_bars_line(stop, said, capsys, monkeypatch):
    """A bar kept in a variable lives on with the traceback: it was closed (and redrawn) after the
    message, which landed on the bar's line (`fit image encoder: 0%|...|semid: interrupted`)."""
    import semid.cli.eval

    def stopped_midway(args):
        bar = progress_bar(total=100, desc="work")
        bar.update(5)
        raise stop

    monkeypatch.setattr(semid.cli.eval, "run", stopped_midway)
    assert main(["eval", "run"]) in (2, 130)
    err = capsys.readouterr().err
    before, message = err.split(said)
    assert "5/100" in before and before.endswith("\n")
    assert "\r" not in message and "work" not in message
