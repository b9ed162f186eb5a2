"""The recommendation benchmark's --resume: indexes reused, models continue from their checkpoints."""

import json

import pytest

from benchmarks import recommend
from semid.data import load_dataset, register_dataset
from semid.data.sequences import slice_users


@pytest.fixture
def small_movielens(monkeypatch):
    """ml-100k's first 60 users, registered as a dataset the benchmark can name."""
    from semid.data import registry

    monkeypatch.setattr(registry, "_REGISTRY", dict(registry._REGISTRY))
    register_dataset("ml-100k-60", lambda: slice_users(load_dataset("ml-100k"), 60), "60 users")
    return "ml-100k-60"


@pytest.mark.slow
def test_resume_reuses_the_index_and_continues_training(
    tmp_path, small_movielens, one_thread, capfd
):
    def run(epochs: int, out: str) -> dict:
        args = ["--datasets", small_movielens, "--models", "sasrec", "--cold-start", "--reps", "1",
                "--max-epochs", str(epochs), "--resume", "--work", str(tmp_path / "work"),
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
    # the first process's training time is counted in the resumed run's
    assert row["train_seconds"] > first["rows"][0]["train_seconds"]
