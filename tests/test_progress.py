"""Progress bars stay quiet in logs: a bar written to a file redraws at most every 30 s."""

import io
import time

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
