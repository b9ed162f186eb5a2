"""Kill a writer (os._exit at a fault point) at every step of a save: the artifact must still load.

A child process writes versions 1, 2, 3 over version 0 and is killed at the n-th hit of one fault
point; afterwards the path holds one complete version (old or new, never missing or mixed), a
reader's `recover()` is needed only after the fallback's first rename, and the next write cleans up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from _two_process_train import make_dataset, make_model
from safetensors.torch import load_file

from semid.atomic import FAULT_EXIT_CODE, recover
from semid.training import TrainConfig, Trainer
from semid.training.checkpoints import check_checkpoint, complete_checkpoints, load_progress

TESTS = Path(__file__).parent
PARTS = 3

WRITER = f"""
import json, sys
from pathlib import Path
import semid.atomic as atomic
path, kind, mode, first = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
if mode == "fallback":
    atomic._renameat2 = None
for version in range(first, first + 3):
    if kind == "dir":
        with atomic.atomic_dir(path) as tmp:
            for part in range({PARTS}):
                (tmp / f"part{{part}}.json").write_text(json.dumps({{"version": version}}))
    else:
        with atomic.atomic_file(path) as f:
            json.dump({{"version": version, "payload": [version] * 5000}}, f)
"""

# (kind, swap mode, fault point, how many versions the kill lets through at hit n: n - offset)
CASES = [
    ("dir", "exchange", "atomic_dir.written", 1),
    ("dir", "exchange", "atomic_dir.swapped", 0),
    ("dir", "fallback", "atomic_dir.written", 1),
    ("dir", "fallback", "atomic_dir.old_moved", 1),
    ("dir", "fallback", "atomic_dir.swapped", 0),
    ("file", "exchange", "atomic_file.written", 1),
    ("file", "exchange", "atomic_file.replaced", 0),
]


def run_writer(path: Path, kind: str, mode: str, first: int, fault: str | None, after: int = 1):
    env = {k: v for k, v in os.environ.items() if not k.startswith("SEMID_FAULT")}
    if fault:
        env |= {"SEMID_FAULT_POINT": fault, "SEMID_FAULT_AFTER": str(after)}
    args = [sys.executable, "-c", WRITER, str(path), kind, mode, str(first)]
    return subprocess.run(args, env=env, capture_output=True, text=True, timeout=120)


def read_version(path: Path, kind: str) -> int:
    """The version at `path`; fails if it is missing or mixes versions."""
    if kind == "file":
        data = json.loads(path.read_text())
        assert data["payload"] == [data["version"]] * 5000
        return data["version"]
    versions = {json.loads((path / f"part{i}.json").read_text())["version"] for i in range(PARTS)}
    assert len(versions) == 1, f"mixed folder: {versions}"
    assert sorted(p.name for p in path.iterdir()) == [f"part{i}.json" for i in range(PARTS)]
    return versions.pop()


@pytest.mark.parametrize("after", [1, 2, 3])
@pytest.mark.parametrize(("kind", "mode", "fault", "offset"), CASES)
def test_killed_write_leaves_a_loadable_version(tmp_path, kind, mode, fault, offset, after):
    path = tmp_path / ("artifact" if kind == "dir" else "artifact.json")
    assert run_writer(path, kind, mode, 0, None).returncode == 0  # versions 0..2
    assert read_version(path, kind) == 2

    killed = run_writer(path, kind, mode, 3, fault, after)  # versions 3..5, killed
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr
    expected = 2 + after - offset
    if fault.endswith("old_moved"):
        assert not path.exists()  # the window the fallback leaves; readers call recover()
        assert recover(path)
    else:
        assert not recover(path)
    assert read_version(path, kind) == expected

    assert run_writer(path, kind, mode, 10, None).returncode == 0
    assert read_version(path, kind) == 12
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


TRAINER = f"""
import sys
sys.path.insert(0, {str(TESTS)!r})
import torch
torch.set_num_threads(1)
import semid.atomic as atomic
from _two_process_train import make_dataset
from test_faults import make_model, tiny_config, train_loss
from semid.training import Trainer
if sys.argv[2] == "fallback":
    atomic._renameat2 = None
Trainer(make_model(), make_dataset(32), tiny_config(), sys.argv[1], evaluate=train_loss).fit()
"""


def tiny_config() -> TrainConfig:
    """4 steps per epoch, a checkpoint after every step, `best/` replaced after each better epoch."""
    return TrainConfig(
        max_epochs=2,
        batch_size=8,
        lr=0.05,
        checkpoint_every=1,
        mixed_precision="no",
        early_stopping_patience=None,
        metric="neg_loss",
    )


def train_loss(model: torch.nn.Module) -> dict[str, float]:
    """An evaluate() callback: minus the loss on the training set (it improves every epoch here)."""
    data = make_dataset(32)
    x, y = torch.stack([d["x"] for d in data]), torch.stack([d["y"] for d in data])
    return {"neg_loss": -torch.nn.functional.cross_entropy(model.net(x), y).item()}


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def leftovers(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob(".*") if ".lock" not in p.name)


# collective saves in order: step-1, step-2, step-3, best (new), step-4, step-5, step-6, step-7,
# best (replaced: the only save that meets an existing folder, so the only old_moved), step-8
@pytest.mark.parametrize(
    ("mode", "fault", "after"),
    [
        ("exchange", "checkpoint.written", 3),
        ("exchange", "checkpoint.swapped", 3),
        ("exchange", "checkpoint.swapped", 9),
        ("fallback", "checkpoint.old_moved", 1),
        ("fallback", "checkpoint.swapped", 9),
    ],
)
def test_killed_checkpoint_save_resumes_to_the_same_weights(tmp_path, mode, fault, after):
    torch.set_num_threads(1)
    reference = Trainer(
        make_model(), make_dataset(32), tiny_config(), tmp_path / "ref", evaluate=train_loss
    )
    expected = reference.fit()

    env = os.environ | {"SEMID_FAULT_POINT": fault, "SEMID_FAULT_AFTER": str(after)}
    args = [sys.executable, "-c", TRAINER, str(tmp_path / "run"), mode]
    killed = subprocess.run(args, env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == FAULT_EXIT_CODE, killed.stderr
    newest = complete_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    check_checkpoint(newest)  # complete and readable, whatever the kill interrupted
    note = f"resuming from step {load_progress(newest).step} ({newest})"

    resumed = Trainer(
        make_model(seed=5), make_dataset(32), tiny_config(), tmp_path / "run", evaluate=train_loss
    )
    result = resumed.fit()
    assert resumed.notes == [note]
    ref, got = weights(reference), weights(resumed)
    assert all(torch.equal(ref[k], got[k]) for k in ref)
    assert (result.best_step, result.best_metrics) == (expected.best_step, expected.best_metrics)
    assert load_file(result.best_path).keys() == load_file(expected.best_path).keys()
    assert all(
        torch.equal(load_file(result.best_path)[k], v)
        for k, v in load_file(expected.best_path).items()
    )
    assert leftovers(tmp_path / "run") == []
