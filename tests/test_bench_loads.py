"""Benchmark tables keep the load average beside each timing: each quantizer run's fit time, each
decoding phase; results written before loads were kept show "-"."""

from benchmarks.decoding_report import load_after
from benchmarks.quantizers import fit_runs


def test_each_fit_time_is_shown_with_its_load():
    runs = [{"fit_s": 1.234, "load_1min": 0.51}, {"fit_s": 2.0, "load_1min": 1.26}]
    assert fit_runs(runs) == "1.23 @ 0.5, 2.00 @ 1.3"


def test_quantizer_results_written_before_loads_were_kept_show_none():
    assert fit_runs([{"fit_s": 1.0, "load_1min": 0.5}, {"fit_s": 1.0}]) == "-"


def test_each_decoding_phase_is_shown_with_its_load():
    catalog = {"load_1min": {"build": 0.44, "mask_step": 1.26, "end_to_end": 2.0}}
    assert [load_after(catalog, p) for p in ("build", "mask_step", "end_to_end")] == [
        "0.4",
        "1.3",
        "2.0",
    ]
    assert load_after({}, "build") == "-"
