"""`accelerate launch` of `semid train recommender` with two CPU processes: the run is written once,
reported once, and loads and evaluates in a fresh process."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from _semid_cli import ENV, TINY_DSI, saved_metrics, semid

pytestmark = pytest.mark.slow

TINY_MMGREC = '{"dim": 16, "layers": 1, "decoder_layers": 1}'
# the torchrun-based launcher with ACCELERATE_USE_CPU runs gloo (see tests/test_training.py)
LAUNCH = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
          "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", "0"]  # fmt: skip


def test_two_process_training_writes_the_run_once(tmp_path):
    semid(
        "index",
        "build",
        "--dataset",
        "ml-100k",
        "--quantizer",
        "rqkmeans:2x16",
        "--out",
        "index",
        cwd=tmp_path,
    )
    train = ["-m", "semid.cli.main", "train", "recommender", "--dataset", "ml-100k", "--index", "index",
             "--model", "mmgrec", "--model-config", TINY_MMGREC, "--users", "20", "--epochs", "1",
             "--batch-size", "8", "--out", "run"]  # fmt: skip
    done = subprocess.run([*LAUNCH, *train], cwd=tmp_path, env=ENV | {"ACCELERATE_USE_CPU": "1"},
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("wrote run (") == 1, done.stdout  # the summary, from rank 0 only
    assert done.stdout.count("ndcg@10") == 1, done.stdout
    assert [p.name for p in tmp_path.rglob("manifest.json")] == ["manifest.json"]
    assert not list((tmp_path / "run").glob("*.tmp*"))

    semid("eval", "run", "--k", "5", "10", cwd=tmp_path)
    metrics = saved_metrics(tmp_path / "run")
    assert metrics["num_queries"] == 20 and metrics["invalid_id_rate"] == 0


def test_two_process_retrieval_training_learns_the_main_process_ids(tmp_path):
    """Each process builds the document IDs from its own encodings; every process then takes the
    main process's (`main_process_value`), so machines whose floating-point paths differ train one
    model on one set of targets, and the run is written once."""
    train = ["-m", "semid.cli.main", "train", "retriever", "--dataset", "debian-docs", "--max-docs", "60",
             "--model", "promptdsi", "--model-config", json.dumps(TINY_DSI), "--epochs", "1", "--out", "run"]  # fmt: skip
    done = subprocess.run([*LAUNCH, *train], cwd=tmp_path, env=ENV | {"ACCELERATE_USE_CPU": "1"},
                          capture_output=True, text=True, timeout=400)  # fmt: skip
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.count("saved to run") == 1, done.stdout
    semid("eval", "run", "--k", "1", "10", cwd=tmp_path)
