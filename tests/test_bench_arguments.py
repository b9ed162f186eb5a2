"""Benchmark flags that cannot run are refused in one line (exit 2) before any work: `--steps 0`
ended in a traceback of the child process, `--repeats 0` in a table of error rows (exit 0)."""

import pytest

from benchmarks import catalogue_scale, item_softmax


@pytest.mark.parametrize(
    "main, argv, told",
    [
        (item_softmax.main, ["--steps", "0"], "--steps must be >= 1, got 0"),
        (item_softmax.main, ["--items", "500", "0"], "--items must be >= 1, got 0"),
        (catalogue_scale.main, ["--repeats", "0"], "--repeats and --sizes must be >= 1"),
        (catalogue_scale.main, ["--sizes", "1000", "0"], "--repeats and --sizes must be >= 1"),
    ],
)
def test_a_flag_that_cannot_run_is_one_line(main, argv, told, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and told in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
