"""The recommendation benchmarks: `benchmarks.recommend --resume`, and `benchmarks.new_collection`'s steps and table."""

import json

import pytest

from benchmarks import recommend
from semid.data import load_dataset, register_dataset
from semid.data.sequences import slice_users
from semid.training.checkpoints import complete_checkpoints, load_progress


@pytest.fixture
def small_movielens(monkeypatch):
    """ml-100k's first 60 users, registered as a dataset the benchmark can name."""
    from semid.data import registry

    registry.available_datasets()  # the built-in ones registered first, so the copy holds them
    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_dataset("ml-100k-60", lambda: slice_users(load_dataset("ml-100k"), 60), "60 users")
    return "ml-100k-60"


@pytest.mark.slow
def test_resume_reuses_the_index_and_continues_training(
    tmp_path, small_movielens, one_thread, capfd
):
    def run(epochs: int, out: str) -> dict:
        args = ["--datasets", small_movielens, "--models", "sasrec", "--cold-start", "--reps", "1",
                "--max-epochs", str(epochs), "--max-history", "20", "--resume", "--work", str(tmp_path / "work"),
                "--out", str(tmp_path / out)]  # fmt: skip
        recommend.main(args)
        return json.loads((tmp_path / f"{out}.json").read_text())

    first = run(1, "first")
    assert isinstance(first["index_seconds"][f"{small_movielens}/text"], float)
    assert [r["epochs"] for r in first["rows"]] == [1]

    capfd.readouterr()
    second = run(2, "second")
    assert f"resuming from step {first['rows'][0]['steps']} " in capfd.readouterr().err
    assert second["index_seconds"] == {f"{small_movielens}/text": "reused"}
    (row,) = second["rows"]
    assert (row["epochs"], row["steps"]) == (2, 2 * first["rows"][0]["steps"])
    # the first process's training time is counted in the resumed run's: its last checkpoint's
    # clock starts at the first checkpoint's (the first process's warm-up is not in either)
    checkpoints = complete_checkpoints(
        tmp_path / "work" / small_movielens / "sasrec" / "train" / "checkpoints"
    )
    first_s, last_s = (load_progress(c).elapsed_s for c in checkpoints[-2:])
    assert 0 < first_s < last_s <= row["train_seconds"]
    run_config = json.loads(
        (tmp_path / "work" / small_movielens / "sasrec" / "config.json").read_text()
    )
    assert second["max_history"] == run_config["spec"]["max_history"] == 20
    assert row["load_1min"] >= 0  # the load average beside the row's timings, in its table too
    table = (tmp_path / "second.md").read_text()
    assert "| queries/s | load |" in table and "; load: the 1-minute load average" in table


@pytest.mark.slow
def test_a_cold_start_job_can_be_resumed(tmp_path, small_movielens, one_thread, capfd):
    """The cold-start job adds the new items to a copy of its trained run, so a second --resume
    reuses the run (it would be refused as a run holding added items) and gives the same figures."""

    def run(out: str) -> dict:
        recommend.main(["--datasets", small_movielens, "--models", "--cold-start", "mmgrec", "--cold-frac", "0.5", "--reps", "1",
                        "--max-epochs", "1", "--max-history", "20", "--model-config", 'mmgrec={"dim": 16, "layers": 1}',
                        "--resume", "--work", str(tmp_path / "work"), "--out", str(tmp_path / out)])  # fmt: skip
        return json.loads((tmp_path / f"{out}.json").read_text())

    first = run("first")
    assert not first["errors"] and len(first["cold_start"]) == 1
    capfd.readouterr()
    second = run("second")
    assert not second["errors"] and "resuming from step" in capfd.readouterr().err
    assert second["cold_start"][0]["by_cold_share"] == first["cold_start"][0]["by_cold_share"]


def test_seed_medians_compare_each_seed_with_its_own_sasrec_and_name_each_file_and_command():
    from benchmarks.recommend_report import aggregate

    def result(seed: int, sasrec: float, mmgrec: float) -> dict:
        rows = [{"dataset": "ml-1m", "model": m, "recall@5": r / 2, "recall@10": r, "ndcg@5": r / 4,
                 "ndcg@10": r / 3} for m, r in (("sasrec", sasrec), ("mmgrec", mmgrec))]  # fmt: skip
        command = f"python -m benchmarks.recommend --seed {seed}"
        return {"seed": seed, "environment": {"date_utc": "d", "command": command}, "rows": rows}

    results = [result(0, 0.30, 0.33), result(1, 0.40, 0.36), result(2, 0.20, 0.30)]
    text = aggregate(results, [f"r-seed{s}.json" for s in (0, 1, 2)])
    for s in (0, 1, 2):  # each run's file and command
        assert (
            f"- seed {s} `r-seed{s}.json` (d UTC): `python -m benchmarks.recommend --seed {s}`"
            in text
        )
    (mmgrec,) = [
        line.split(" | ") for line in text.splitlines() if line.startswith("| ml-1m | mmgrec")
    ]
    assert mmgrec[3] == "0.3300 [0.3300, 0.3600, 0.3000]"  # median R@10, then each seed's
    # ratios against the same seed's SASRec-CE, their median first
    assert mmgrec[6] == "1.100 [1.100, 0.900, 1.500] |"


def test_new_collection_table_compares_each_seed_with_its_own_sasrec(tmp_path):
    from benchmarks.new_collection import RUNS, collect, markdown

    recall = {"sasrec": [0.20, 0.25], "mmgrec": [0.22, 0.25], "mmgrec-graph": [0.30, 0.20]}
    for name in RUNS:
        for seed in (0, 1):
            run = tmp_path / "runs" / f"s{seed}" / name
            run.mkdir(parents=True)
            test = {"recall@10": recall[name][seed], "ndcg@10": recall[name][seed] / 2}
            (run / "metrics.json").write_text(json.dumps({"test": test}))
            result = {"epochs": 10 + seed, "best_step": 100}
            (run / "config.json").write_text(json.dumps({"spec": {}, "state": {"result": result}}))
    runs = collect(tmp_path, [0, 1])
    result = {"runs": runs, "seeds": [0, 1], "command": "c", "date_utc": "d", "machine": "m",
              "versions": {"torch": "t"}, "source": "ml-1m",
              "collection": {"users": 2, "interactions": 3, "items": 4, "catalogue": 5}}  # fmt: skip
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in markdown(result).splitlines()
            if line.startswith("| mmgrec")}  # fmt: skip
    # ratios per seed against the same seed's SASRec-CE, then their median
    assert rows["mmgrec"][5:7] == ["1.100, 1.000", "1.050"]
    assert rows["mmgrec-graph"][5:7] == ["1.500, 0.800", "1.150"]
    assert rows["mmgrec-graph"][3] == "0.2500"  # median R@10
    runs["sasrec"][1]["recall@10"] = 0.0  # a tiny --epochs check whose SASRec-CE found nothing
    rows = {line.split(" | ")[0][2:]: line.split(" | ") for line in markdown(result).splitlines()
            if line.startswith("| mmgrec")}  # fmt: skip
    assert rows["mmgrec"][5:7] == ["1.100, -", "1.100"]  # was a ZeroDivisionError


def test_new_collection_evaluates_runs_whose_metrics_hold_only_the_valid_split(tmp_path):
    from benchmarks.new_collection import TESTED, is_done

    (tmp_path / "metrics.json").write_text(
        json.dumps({"valid": {"recall@10": 0.3}})
    )  # as train writes
    assert not is_done(tmp_path / TESTED)
    (tmp_path / "metrics.json").write_text(json.dumps({"valid": {}, "test": {"recall@10": 0.3}}))
    assert is_done(tmp_path / TESTED)
    assert is_done(tmp_path / "metrics.json") and not is_done(tmp_path / "config.json")


def test_new_collection_stops_with_one_line_naming_the_failed_step_and_its_log(tmp_path):
    from benchmarks.new_collection import run_seed

    (tmp_path / "interactions.csv").write_text(
        "user,item,timestamp\n"
    )  # no rows: the CLI refuses it
    (tmp_path / "items.csv").write_text("item,title,genres\n")
    with pytest.raises(
        SystemExit, match="semid index failed for seed 3 .exit 2.; see .*s3-build-index.log"
    ):
        run_seed(tmp_path, 3)
    assert "has no rows" in (tmp_path / "logs" / "s3-build-index.log").read_text()


def test_checkpoint_every_reaches_each_models_training_config(tmp_path, monkeypatch):
    seen = []

    def capture(jobs, workers):
        seen.extend(jobs)
        return [{"dataset": j["dataset"], "model": j["model"], "error": "not run"} for j in jobs]

    monkeypatch.setattr(recommend, "_run_jobs", capture)
    monkeypatch.setattr(recommend, "build_index", lambda *a, **k: 0.0)
    recommend.main(["--models", "tiger", "--checkpoint-every", "100", "--work", str(tmp_path),
                    "--out", str(tmp_path / "out")])  # fmt: skip
    kinds = {j["kind"]: j for j in seen}
    assert set(kinds) == {"train_and_test", "cold"}
    for job in kinds.values():
        assert job["checkpoint_every"] == 100
    spec = recommend.spec_for(
        "tiger", "ml-100k", 0, 50, kinds["train_and_test"]["checkpoint_every"]
    )
    assert spec.train.checkpoint_every == 100
    assert recommend.spec_for("tiger", "ml-100k", 0).train.checkpoint_every == 10**6


def test_a_short_history_collection_keeps_each_users_last_events_by_time():
    from benchmarks.new_collection import last_events_of_each_user

    events = [(0, 1, 5.0), (1, 2, 1.0), (0, 3, 1.0), (0, 4, 9.0), (1, 5, 2.0), (0, 6, 5.0)]
    assert last_events_of_each_user(events, 2) == [
        (1, 2, 1.0),
        (0, 4, 9.0),
        (1, 5, 2.0),
        (0, 6, 5.0),
    ]


def test_a_thinned_collection_keeps_a_seeded_share_and_leaves_a_5_core():
    from benchmarks.new_collection import k_core, thinned

    events = [
        (u, i, float(t)) for t, (u, i) in enumerate((u, i) for u in range(40) for i in range(30))
    ]
    kept = thinned(events, 0.3, seed=0)
    assert kept == thinned(events, 0.3, seed=0)  # the same collection for every run seed
    assert kept != thinned(events, 0.3, seed=1)
    assert 0.2 * len(events) < len(kept) < 0.4 * len(events)
    assert kept == [e for e in events if e in set(kept)]  # log order kept
    block = [(u, i, 3.0) for u in (1, 2, 3) for i in (3, 4, 5)]  # a 3-core already
    # user 0 has 2 events, item 2 only user 1's event: both go
    assert k_core([(0, 0, 0.0), (0, 1, 1.0), (1, 2, 2.0), *block], 3) == block
    # a second pass: users 6 and 7 (1 event each) and item 9 (1 event) go first, which leaves
    # user 4 with 2 events; one pass would keep user 4's events on items 3 and 8
    chain = [*block, (4, 3, 2.0), (4, 8, 2.0), (4, 9, 2.0), (6, 8, 2.0), (7, 8, 2.0)]
    assert k_core(chain, 3) == block
    assert k_core(block, 4) == []


def test_a_dataset_given_by_path_gets_its_own_work_folder_and_no_recbole_ratio():
    from benchmarks.recommend import main, work_folder, work_folders
    from benchmarks.recommend_report import comparisons, markdown
    from semid.errors import SemidError

    assert work_folder("ml-1m") == "ml-1m"
    assert work_folder("/data/ml-1m-thin") == "ml-1m-thin"  # not the data folder itself
    assert work_folder("/data/logs/ratings.csv.gz") == "ratings"
    assert work_folder("/data/logs/Ratings.CSV.Gz") == "Ratings"
    assert work_folders(["ml-1m", "/d/ml-1m-thin"]) == {
        "ml-1m": "ml-1m",
        "/d/ml-1m-thin": "ml-1m-thin",
    }
    with pytest.raises(SemidError, match="share the work folder 'ratings'"):
        work_folders(["/a/ratings.csv", "/b/ratings.tsv"])
    with pytest.raises(SystemExit):  # the benchmark refuses before it loads or builds anything
        main(["--datasets", "/a/ratings.csv", "/b/ratings.csv", "--work", "/nonexistent/work"])
    rows = [
        {"dataset": "/data/mine", "model": m, "recall@10": r}
        for m, r in (("sasrec", 0.05), ("mmgrec", 0.06))
    ]
    (c,) = comparisons(rows)
    assert c["vs_recbole"] is None and c["target_met"]  # judged on the same-run ratio alone
    assert comparisons([{**r, "dataset": "ml-1m"} for r in rows])[0]["target_met"] is False
    env = {
        k: "x"
        for k in ("command", "date_utc", "machine", "semid", "torch", "transformers", "python")
    }
    result = {"environment": {**env, "torch_threads_per_job": 1}, "jobs": 1, "seed": 0, "rows": [],
              "comparisons": [c]}  # fmt: skip
    assert "| /data/mine | mmgrec | 1.200 | no RecBole figure | met |" in markdown(result)


def test_the_best_generator_of_a_run_is_chosen_on_valid_not_test():
    from benchmarks.recommend_report import comparisons

    rows = [
        {"dataset": "ml-100k", "model": m, "recall@10": r, "valid_ndcg@10": v}
        for m, r, v in (("sasrec", 0.20, 0.11), ("mmgrec", 0.21, 0.12), ("tiger", 0.23, 0.10))
    ]
    (c,) = comparisons(rows)  # tiger has the best test R@10, mmgrec the best valid NDCG@10
    assert c["best_generator"] == "mmgrec"
    assert c["vs_sasrec"] == pytest.approx(0.21 / 0.20)


def test_a_recorded_command_pastes_back_into_a_shell():
    import shlex

    from benchmarks.results_files import command_line

    argv = ["--model-config", 'mmgrec={"layers": 3}', "--seed", "0"]
    line = command_line("recommend", argv)
    assert line.startswith("python -m benchmarks.recommend ")
    assert shlex.split(line)[3:] == argv


def test_aggregate_needs_an_out_so_no_committed_table_is_replaced(capsys):
    from benchmarks.recommend import main as bench_main

    with pytest.raises(SystemExit) as exit_info:
        bench_main(["--aggregate", "benchmarks/results/recommend-hybrid-seed0.json"])
    assert exit_info.value.code == 2
    assert "--aggregate writes its medians to --out; give it" in capsys.readouterr().err


def test_new_collection_epochs_cap_reaches_every_training_command(tmp_path, monkeypatch):
    import subprocess

    from benchmarks import new_collection

    commands = []

    def record(args, **kwargs):
        commands.append(args[1:])
        return subprocess.CompletedProcess(args, 0)

    monkeypatch.setattr(new_collection.subprocess, "run", record)
    new_collection.run_seed(tmp_path, 0, epochs=2)
    trains = [c for c in commands if c[0] == "train"]
    assert trains and all(c[c.index("--epochs") + 1] == "2" for c in trains)
    commands.clear()
    new_collection.run_seed(tmp_path, 0)  # the defaults: no cap
    assert not any("--epochs" in c for c in commands)


def test_new_collection_epochs_needs_its_own_work_and_out(capsys):
    from benchmarks import new_collection

    with pytest.raises(SystemExit):
        new_collection.main(["--epochs", "1", "--seeds", "0"])
    assert "give it its own --work and --out" in capsys.readouterr().err


def test_results_record_the_cpu_model(monkeypatch, tmp_path):
    """Results named the architecture and CPU count only (platform.processor() is empty on
    Linux), so timings from two machines could not be told apart."""
    import builtins

    from benchmarks import results_files

    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nmodel name\t: Example CPU @ 2.00GHz\nflags\t: sse\n")
    real_open = builtins.open
    monkeypatch.setattr(builtins, "open", lambda p, *a, **k: real_open(
        cpuinfo if p == "/proc/cpuinfo" else p, *a, **k))  # fmt: skip
    monkeypatch.setattr(results_files.os, "cpu_count", lambda: 3)
    assert results_files.cpu_description().endswith(", Example CPU @ 2.00GHz, 3 CPUs")


def test_steps_that_end_inside_the_first_epoch_are_shown_as_under_one_epoch():
    """`--tiger-steps 20` stops TIGER inside its first epoch: its row read "0 (20)" epochs."""
    from benchmarks.recommend_report import markdown

    row = {"dataset": "ml-100k", "model": "tiger", "recall@5": 0.0, "recall@10": 0.0,
           "ndcg@5": 0.0, "ndcg@10": 0.0, "invalid_id_rate": 0.0, "train_seconds": 3.0,
           "steps": 20, "queries_per_s": 9.0}  # fmt: skip
    env = {k: "x" for k in ("command", "date_utc", "machine", "semid", "torch", "transformers",
                            "python")}  # fmt: skip
    result = {"environment": {**env, "torch_threads_per_job": 1}, "jobs": 1, "seed": 0,
              "comparisons": []}  # fmt: skip
    assert "| <1 (20) |" in markdown({**result, "rows": [{**row, "epochs": 0}]})
    assert "| 2 (20) |" in markdown({**result, "rows": [{**row, "epochs": 2}]})
