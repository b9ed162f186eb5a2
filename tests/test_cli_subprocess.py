"""Every subcommand of every task the way users run it: each step a fresh `semid` process, started
from another folder than the one holding the data and the runs (relative and absolute paths mixed).
One run per task is trained once per module and shared by the tests."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
from _semid_cli import (
    assert_usage_error,
    printed_metrics,
    read_jsonl,
    saved_metrics,
    semid,
    semid_all,
)
from PIL import Image

from semid.data.registry import load_dataset

pytestmark = pytest.mark.slow

TINY_MMGREC = '{"dim": 16, "layers": 1, "decoder_layers": 1}'
TINY_SASREC = '{"dim": 16, "layers": 1, "heads": 1}'
TINY_PROMPTDSI = {
    "encoder_config": {"vocab_size": 30522, "hidden_size": 32, "num_hidden_layers": 1,
                       "num_attention_heads": 2, "intermediate_size": 64, "max_position_embeddings": 64},
    "max_length": 24, "prompt_layer": 0, "prompt_length": 2, "pool_sizes": [4],
    "d_model": 32, "num_heads": 2, "num_layers": 1, "d_ff": 64,
}  # fmt: skip
COLOURS = {"red_fox": (200, 40, 30), "blue_car": (30, 40, 200), "green_tree": (40, 180, 40)}


@pytest.fixture(scope="module")
def space(tmp_path_factory) -> dict[str, Path]:
    """data/ and runs/ beside elsewhere/, the working directory of every command."""
    root = tmp_path_factory.mktemp("cli")
    paths = {name: root / name for name in ("data", "runs", "elsewhere")}
    for p in paths.values():
        p.mkdir()
    return paths


def rel(path: Path, space: dict[str, Path]) -> str:
    """``path`` relative to the commands' working directory."""
    return os.path.relpath(path, space["elsewhere"])


def write_class_folders(root: Path, per_class: int, offset: int = 0, seed: int = 0) -> None:
    """One subfolder of small noisy single-colour PNGs per class."""
    rng = np.random.default_rng(seed)
    for name, colour in COLOURS.items():
        (root / name).mkdir(parents=True)
        for i in range(per_class):
            pixels = np.clip(np.array(colour) + rng.integers(-30, 30, (16, 16, 3)), 0, 255)
            Image.fromarray(pixels.astype("uint8")).save(root / name / f"{name}{offset + i}.png")


@pytest.fixture(scope="module")
def rec(space) -> dict[str, Path]:
    """An rqkmeans:2x16 index of ml-100k and three runs (mmgrec, sasrec, pop) on its first 20 users."""
    runs, cwd = space["runs"], space["elsewhere"]
    semid("index", "build", "--dataset", "ml-100k", "--quantizer", "rqkmeans:2x16",
          "--out", rel(runs / "index", space), cwd=cwd)  # fmt: skip
    common = ["--dataset", "ml-100k", "--users", "20", "--epochs", "1", "--batch-size", "16"]
    semid_all(
        ("train", "recommender", *common, "--index", rel(runs / "index", space), "--model", "mmgrec",
         "--model-config", TINY_MMGREC, "--out", rel(runs / "mmgrec", space)),
        ("train", "recommender", *common, "--index", runs / "index", "--model", "sasrec",
         "--model-config", TINY_SASREC, "--out", runs / "sasrec"),
        ("train", "recommender", *common, "--index", runs / "index", "--model", "pop", "--out", runs / "pop"),
        cwd=cwd,
    )  # fmt: skip
    return {m: runs / m for m in ("index", "mmgrec", "sasrec", "pop")}


def test_recommend_runs_evaluate_the_same_twice(rec, space):
    cwd = space["elsewhere"]
    first = semid_all(
        *[("eval", rec[m], "--k", "5", "10") for m in ("mmgrec", "sasrec", "pop")], cwd=cwd
    )
    metrics = {m: saved_metrics(rec[m]) for m in ("mmgrec", "sasrec", "pop")}
    for m, values in metrics.items():
        assert values["num_queries"] == 20 and values["invalid_id_rate"] == 0, m
        assert 0 <= values["recall@5"] <= values["recall@10"] <= 1, m
    again = semid("eval", rel(rec["mmgrec"], space), "--k", "5", "10", cwd=cwd, script=True)
    assert saved_metrics(rec["mmgrec"]) == metrics["mmgrec"]
    assert printed_metrics(again.stdout) == printed_metrics(first[0].stdout) != {}


def test_runs_are_readable_like_any_file_the_user_writes(rec):
    """Weights, codes and checkpoints get the umask's mode, not the 0600 of their writers."""
    usual = 0o666 & ~current_umask()
    files = [p for m in ("index", "mmgrec") for p in rec[m].rglob("*") if p.is_file()]
    assert any(p.suffix == ".safetensors" for p in files)
    assert [p for p in files if p.stat().st_mode & usual != usual] == []


def current_umask() -> int:
    """The process's umask (reading it means setting it; it is put back at once)."""
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_recommend_predict_add_and_stats(rec, space):
    cwd, run = space["elsewhere"], rec["mmgrec"]
    user = load_dataset("ml-100k").user_keys[0]  # in the 20-user slice
    semid("predict", rel(run, space), "--user", user, "--k", "5", "--out", "preds.jsonl", cwd=cwd)
    (answer,) = read_jsonl(cwd / "preds.jsonl")
    assert answer["input"] == {"user": user} and len(answer["keys"]) == 5
    assert answer["scores"] == sorted(answer["scores"], reverse=True)

    new_items = space["data"] / "new_items.tsv"
    new_items.write_text(
        "new-1\tA Quiet Film (2024). Genres: Drama\nnew-2\tLoud Robots (2025). Genres: Action, Sci-Fi\n"
    )
    added = semid("index", "add", run, "--items", rel(new_items, space), cwd=cwd)
    assert "added 2 items" in added.stdout
    stats, history = semid_all(
        ("index", "stats", rel(run / "index", space), "--json"),
        (
            "predict",
            run,
            "--history",
            "new-1,1,50",
            "--k",
            "5",
            "--out",
            space["data"] / "new.jsonl",
        ),
        cwd=cwd,
    )
    assert json.loads(stats.stdout)["items"] == 1682 + 2
    (answer,) = read_jsonl(space["data"] / "new.jsonl")
    assert len(answer["keys"]) == 5 and not {"new-1", "1", "50"} & set(answer["keys"])


def test_recommend_bad_input_is_one_line(rec, space):
    done = semid(
        "predict", rec["mmgrec"], "--user", "no-such-user", cwd=space["elsewhere"], expect=None
    )
    assert_usage_error(done, "unknown user 'no-such-user'")
    done = semid("eval", space["runs"] / "missing-run", cwd=space["elsewhere"], expect=None)
    assert_usage_error(done)


@pytest.fixture(scope="module")
def docs(space) -> Path:
    """A promptdsi run on 60 Debian package descriptions (tiny random encoder, one epoch)."""
    run = space["runs"] / "docs"
    semid("train", "retriever", "--dataset", "debian-docs", "--max-docs", "60", "--model", "promptdsi",
          "--model-config", json.dumps(TINY_PROMPTDSI), "--epochs", "1", "--add-epochs", "1",
          "--num-beams", "5", "--out", rel(run, space), cwd=space["elsewhere"])  # fmt: skip
    return run


def test_retrieve_eval_add_and_predict(docs, space):
    cwd = space["elsewhere"]
    semid("eval", docs, "--k", "1", "10", cwd=cwd)
    before = saved_metrics(docs)
    assert before["d0-test/invalid_id_rate"] == 0 and before["d0-test/num_queries"] > 0
    semid("eval", rel(docs, space), "--k", "1", "10", cwd=cwd, script=True)
    assert saved_metrics(docs) == before

    later = len(read_jsonl(docs / "later.jsonl"))
    added = semid("index", "add", rel(docs, space), "--docs", docs / "later.jsonl", cwd=cwd)
    assert f"added {later:,} documents" in added.stdout
    semid("predict", docs, "--query", "image viewer", "--k", "3", "--out", "answers.jsonl", cwd=cwd)
    (answer,) = read_jsonl(cwd / "answers.jsonl")
    assert answer["input"] == {"query": "image viewer"} and len(answer["keys"]) == 3
    assert answer["scores"] == sorted(answer["scores"], reverse=True)
    done = semid("predict", docs, "--query", "image viewer", "--k", "0", cwd=cwd, expect=None)
    assert_usage_error(done, "k must be")


@pytest.fixture(scope="module")
def images(space) -> dict[str, Path]:
    """A class-folder collection (3 classes x 20 PNGs), its index, and an AVG run (one epoch)."""
    photos, index, run = (
        space["data"] / "photos",
        space["runs"] / "photos-index",
        space["runs"] / "avg",
    )
    write_class_folders(photos, 20)
    write_class_folders(space["data"] / "more", 3, offset=100, seed=1)
    semid(
        "index",
        "build",
        "--dataset",
        rel(photos, space),
        "--out",
        rel(index, space),
        cwd=space["elsewhere"],
    )
    semid("train", "retriever", "--dataset", photos, "--model", "avg", "--index", index, "--epochs", "1",
          "--out", run, cwd=space["elsewhere"])  # fmt: skip
    return {"photos": photos, "index": index, "run": run}


def test_text2image_eval_add_and_predict(images, space):
    cwd, run = space["elsewhere"], images["run"]
    semid("eval", rel(run, space), "--k", "1", "5", cwd=cwd)
    before = saved_metrics(run)
    assert before["invalid_id_rate"] == 0 and 0 <= before["recall@1"] <= before["recall@5"] <= 1
    semid("eval", run, "--k", "1", "5", cwd=cwd, script=True)
    assert saved_metrics(run) == before

    size = len(json.loads((run / "index" / "keys.json").read_text()))  # the 20% of images held out
    assert size == 12
    added = semid("index", "add", run, "--items", rel(space["data"] / "more", space), cwd=cwd)
    assert "added 9 images" in added.stdout
    from semid.saving import read_rows  # the image head scores the new images too

    assert len(read_rows(run / "index" / "image_features.safetensors")) == size + 9
    stats, _ = semid_all(
        ("index", "stats", run / "index", "--json"),
        (
            "predict",
            run,
            "--query",
            "a photo of a red fox",
            "--k",
            "3",
            "--out",
            space["data"] / "fox.jsonl",
        ),
        cwd=cwd,
    )
    assert json.loads(stats.stdout)["items"] == size + 9
    (answer,) = read_jsonl(space["data"] / "fox.jsonl")
    assert len(answer["keys"]) == 3 and answer["scores"] == sorted(answer["scores"], reverse=True)
    done = semid(
        "index", "add", run, "--items", space["data"] / "no-such-folder", cwd=cwd, expect=None
    )
    assert_usage_error(done)
