"""The text-to-image benchmark's smoke run (`--quick`) on scikit-learn's digits, end to end, and
the load average it keeps beside each timing."""

import re

import pytest

from benchmarks import text2image


@pytest.mark.slow
def test_the_quick_run_ranks_every_method_and_writes_nothing(capsys, tmp_path, monkeypatch):
    results = tmp_path / "results"
    monkeypatch.setattr(text2image, "RESULTS", results)
    assert text2image.main(["--quick", "--dataset", "digits"]) == 0
    table = capsys.readouterr().out
    precision = {}  # method's first words -> its precision@10
    for row in re.findall(r"^\| \((\w)\) ([^|]*?) \| ([0-9.]+) \[", table, flags=re.M):
        precision[f"({row[0]}) {row[1].split(',')[0]}"] = float(row[2])
    assert set(precision) == {
        "(a) dual encoder (MiniLM + CNN",
        "(b) AVG",
        "(c) AVG",
        "(c) ranked by its beams alone (item_mix 0)",
    }, table
    # ten classes: a random ranking's precision@10 is about 0.1; the dual encoder and the full AVG
    # (its discriminative loss and image head) rank by content
    assert precision["(a) dual encoder (MiniLM + CNN"] > 0.2
    assert precision["(c) AVG"] > 0.2
    assert not results.exists()  # --quick writes no result files
    wall = next(line for line in table.splitlines() if line.startswith("Wall time per step"))
    assert re.search(r"train dual encoder [0-9.]+ \(load [0-9.]+\)", wall), wall


def test_each_timing_keeps_its_load_average(monkeypatch):
    loads = iter([1.5, 0.5])
    monkeypatch.setattr(text2image.os, "getloadavg", lambda: (next(loads), 0.0, 0.0))
    timings = text2image.Timings()
    assert text2image.timed(timings, "step", lambda x: x + 1, 1) == 2
    text2image.timed(timings, "step", lambda: None)
    assert timings.load == {"step": 1.5}  # the higher of its two calls
    assert set(timings.seconds) == {"step"} and timings.seconds["step"] >= 0
