"""The hierarchy sweep's greedy one-factor-at-a-time selection, its summaries and the curve plot."""

import json
import math

import pytest

from benchmarks.hierarchy import best_runs
from benchmarks.hierarchy_report import stderr, summarise
from benchmarks.hierarchy_sweep import factors, read_journal, row_key, runner, sweep_side
from semid.plots import plot_curves


def _fake_run(calls: list):
    """A run whose validation Recall@10 peaks at latent=10, lr=3e-3, 4x8, c=0.1."""

    def run(config: dict, seed: int, factor: str) -> dict:
        calls.append((factor, seed))
        r10 = (
            -abs(config["latent"] - 10) / 100
            + (config["lr"] == 3e-3) * 0.1
            + (config["codes"] == "4x8") * 0.1
            + (config["c"] == 0.1) * 0.1
            + (config["net"] == "hnn") * 0.1
        )
        return {"val_recall10": r10 + seed * 1e-3, "val_mrr10": 0.0, "config": config}

    return run


def test_greedy_sweep_finds_the_best_value_of_each_factor_and_reuses_runs():
    calls, logged = [], []
    base = {"latent": 32, "lr": 1e-3, "codes": "3x16", "c": 1.0, "learn_c": 0, "net": "mlp"}
    best = sweep_side(_fake_run(calls), "HRQ", [0, 1], logged.append, base)
    assert best == {"latent": 10, "lr": 3e-3, "codes": "4x8", "c": 0.1, "learn_c": 0, "net": "hnn"}
    # 4 latent values, then the new values of each later factor (the kept one is reused), 2 seeds.
    assert len(calls) == len(logged) == 2 * (4 + 2 + 2 + 2 + 1)
    assert [f for f, _ in calls].count("curvature") == 4


def test_the_euclidean_side_sweeps_the_same_factors_without_curvature():
    assert list(factors("RQ")) == list(factors("HRQ"))
    assert factors("RQ")["curvature"] == [{"c": 0.0, "learn_c": 0}]
    calls = []
    base = {"latent": 32, "lr": 1e-3, "codes": "3x16", "c": 0.0, "learn_c": 0, "net": "mlp"}
    assert sweep_side(_fake_run(calls), "RQ", [0], lambda r: None, base)["c"] == 0.0
    assert len(calls) == 4 + 2 + 2


def _row(side: str, seed: int, r10: float) -> dict:
    metrics = dict.fromkeys(
        [
            "recall@1",
            "mrr@10",
            "embed_map",
            "embed_mean_rank",
            "quant_map",
            "quant_mean_rank",
            "embed_heldout_map",
            "embed_heldout_mean_rank",
            "val_recall10",
            "prefix1_lift",
            "prefix2_lift",
            "collision_rate",
            "c_final",
            "q_epochs",
            "q_best_epoch",
            "g_epochs",
            "g_best_epoch",
            "fit_s",
            "generator_s",
        ],
        1.0,
    )
    return {
        **metrics,
        "dataset": "d",
        "task": "t",
        "side": side,
        "spec": "s",
        "config": {},
        "seed": seed,
        "recall@10": r10,
        "q_converged": True,
        "g_converged": seed != 2,
    }


def test_summary_has_medians_standard_errors_and_the_ratio_to_rq():
    rows = [_row("HRQ", s, v) for s, v in enumerate([0.2, 0.3, 0.4])]
    rows += [_row("RQ", s, v) for s, v in enumerate([0.1, 0.2, 0.6])]
    hrq, rq = summarise(rows)
    assert hrq["recall@10"] == pytest.approx(0.3) and rq["recall@10"] == pytest.approx(0.2)
    assert hrq["recall@10_se"] == pytest.approx(0.1 / math.sqrt(3))
    assert hrq["r10_vs_rq"] == pytest.approx(1.5) and hrq["converged"] == 2
    assert math.isnan(stderr([1.0]))


def test_plot_curves_writes_a_png(tmp_path):
    path = tmp_path / "curves.png"
    plot_curves({"a": {"HRQ": [3.0, 2.0, 1.5], "RQ": [3.0, 2.5]}, "b": {"HRQ": [1.0]}}, path)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_resume_reuses_journal_rows_and_reads_old_configs_as_mlp(tmp_path):
    path = tmp_path / "sweep.jsonl"
    old = {"task": "t", "side": "HRQ", "seed": 0, "config": {"latent": 2}, "val_recall10": 0.5}
    path.write_text(json.dumps(old) + "\n")
    done = read_journal(path)
    assert list(done) == [row_key("t", "HRQ", {"latent": 2, "net": "mlp"}, 0)]
    run = runner("mammals", None, None, {}, "t", "HRQ", done)
    row = run({"latent": 2, "net": "mlp"}, 0, "latent")
    assert row["resumed"] and row["val_recall10"] == 0.5 and row["factor"] == "latent"
    assert read_journal(tmp_path / "missing.jsonl") == {}


def test_best_runs_keeps_every_seed_of_the_selected_settings():
    a, b = {"latent": 2}, {"latent": 5}
    runs = [
        {"task": "t", "side": side, "config": config, "seed": seed}
        for side in ("HRQ", "RQ")
        for config in (a, b)
        for seed in (0, 1)
    ]
    sweep = {
        "best": [
            {"task": "t", "side": "HRQ", "config": b},
            {"task": "t", "side": "RQ", "config": a},
        ]
    }
    sweep["runs"] = runs
    kept = best_runs(sweep)
    assert [(r["side"], r["config"], r["seed"]) for r in kept] == [
        ("HRQ", b, 0),
        ("HRQ", b, 1),
        ("RQ", a, 0),
        ("RQ", a, 1),
    ]


def test_resume_reuses_only_rows_run_under_the_same_epoch_cap(tmp_path):
    path = tmp_path / "sweep.jsonl"
    quick = {"task": "t", "side": "RQ", "seed": 0, "config": {"latent": 2}, "max_epochs": 1}
    path.write_text(json.dumps(quick) + "\n")
    done = read_journal(path)
    config = {"latent": 2, "net": "mlp"}
    assert row_key("t", "RQ", config, 0, 1) in done and row_key("t", "RQ", config, 0) not in done
    row = runner("mammals", None, None, {}, "t", "RQ", done, max_epochs=1)(config, 0, "latent")
    assert row["resumed"] and row["max_epochs"] == 1
