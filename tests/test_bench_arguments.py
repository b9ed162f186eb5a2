"""Benchmark flags that cannot run are refused in one line (exit 2) before any work: `--steps 0`
ended in a traceback of the child process, `--repeats 0` in a table of error rows (exit 0), a bad
serve `--inputs` file in a traceback; hierarchy_sweep gained the --max-epochs cap of hierarchy."""

import pytest

from benchmarks import catalogue_scale, hierarchy, hierarchy_sweep, item_softmax, serve


@pytest.mark.parametrize(
    "main, argv, told",
    [
        (item_softmax.main, ["--steps", "0"], "--steps must be >= 1, got 0"),
        (item_softmax.main, ["--items", "500", "0"], "--items must be >= 1, got 0"),
        (catalogue_scale.main, ["--repeats", "0"], "--repeats and --sizes must be >= 1"),
        (catalogue_scale.main, ["--sizes", "1000", "0"], "--repeats and --sizes must be >= 1"),
        (hierarchy.main, ["--max-epochs", "0"], "--max-epochs must be >= 1, got 0"),
        (hierarchy_sweep.main, ["--max-epochs", "0"], "--max-epochs must be >= 1, got 0"),
    ],
)
def test_a_flag_that_cannot_run_is_one_line(main, argv, told, tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        main([*argv, "--out", str(tmp_path / "out")])
    assert stop.value.code == 2 and told in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    "lines, told",
    [
        (None, "is not a file; write one JSON input per line"),
        (["", "  "], "has no lines; write one JSON input per line"),
        (['{"user": "1"}', "", "{user: 2}"], "line 3 is not JSON"),
    ],
)
def test_serve_inputs_that_cannot_be_read_are_one_line(lines, told, tmp_path, capsys):
    inputs = tmp_path / "inputs.jsonl"
    if lines is not None:
        inputs.write_text("\n".join(lines))
    argv = ["--fake", "--inputs", str(inputs), "--out", str(tmp_path / "out")]
    with pytest.raises(SystemExit) as stop:
        serve.main(argv)
    assert stop.value.code == 2 and told in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("repeats", [1, 5])
def test_catalogue_scale_table_says_its_repeats(repeats):
    header = {"command": "c", "date": "d", "load_start": 0.5, "load_end": 0.6}
    table = catalogue_scale.markdown({**header, "repeats": repeats, "rows": [], "crossover": []})
    assert f"Queries/s are medians of {repeats} repeats" in table
