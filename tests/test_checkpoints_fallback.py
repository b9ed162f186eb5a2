"""Resume falls back past a damaged checkpoint, refuses pickled code, survives a full disk mid-save."""

from __future__ import annotations

import errno
import random
from pathlib import Path

import pytest
import torch
from _two_process_train import SimulatedCrash, make_dataset, make_model

import semid.training.checkpoints as checkpoints
from semid.atomic import DiskFullError
from semid.errors import SemidError
from semid.quantization import build_quantizer
from semid.quantizers.rqvae import RQVAE
from semid.training import TrainConfig, Trainer
from semid.training.checkpoints import complete_checkpoints

pytestmark = pytest.mark.usefixtures("one_thread")


def tiny_config() -> TrainConfig:
    """60 examples in batches of 8: 8 steps per epoch, a checkpoint every 3 steps, the last 2 kept."""
    return TrainConfig(
        max_epochs=3, batch_size=8, lr=0.05, checkpoint_every=3, mixed_precision="no"
    )


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    model = trainer.accelerator.unwrap_model(trainer.model)
    return {k: v.clone() for k, v in model.state_dict().items()}


def assert_same_weights(a: Trainer, b: Trainer) -> None:
    wa, wb = weights(a), weights(b)
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


@pytest.fixture
def reference(tmp_path) -> Trainer:
    trainer = Trainer(make_model(), make_dataset(60), tiny_config(), tmp_path / "ref")
    trainer.fit()
    return trainer


def interrupted_run(out: Path) -> list[Path]:
    """Train until forward call 20 (step 20) crashes; returns the kept checkpoints (steps 16, 18)."""
    model = make_model()
    model.crash_at_call = 20
    with pytest.raises(SimulatedCrash):
        Trainer(model, make_dataset(60), tiny_config(), out).fit()
    return complete_checkpoints(out / "checkpoints")


def truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


class Planted:
    """Unpickling this would create `marker`: stands for code hidden in a checkpoint."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (open, (str(self.marker), "w"))


@pytest.mark.parametrize(
    ("damaged_file", "damage"),
    [
        ("optimizer.bin", truncate),
        ("model.safetensors", truncate),
        ("random_states_0.pkl", lambda p: p.write_bytes(b"")),
        ("scheduler.bin", lambda p: p.write_bytes(random.Random(0).randbytes(300))),
        ("trainer_state.json", lambda p: p.write_text('{"step": 18, "ep')),
        ("random_states_0.pkl", Path.unlink),  # resuming without it is not exact
        ("optimizer.bin", Path.unlink),
        ("model.safetensors", Path.unlink),
    ],
)
def test_damaged_latest_checkpoint_falls_back_to_previous(
    tmp_path, reference, capsys, damaged_file, damage
):
    previous, latest = interrupted_run(tmp_path / "run")
    assert (previous.name, latest.name) == ("step-00000016", "step-00000018")
    damage(latest / damaged_file)

    resumed = Trainer(make_model(seed=9), make_dataset(60), tiny_config(), tmp_path / "run")
    resumed.fit()

    damaged_note, resume_note = resumed.notes
    assert damaged_note.startswith(f"checkpoint {latest} is damaged ({damaged_file}")
    assert damaged_note.endswith("); trying the previous one")
    assert resume_note == f"resuming from step 16 ({previous})"
    err = capsys.readouterr().err.splitlines()
    assert [line for line in err if line and not line.startswith("train:")] == resumed.notes
    assert_same_weights(reference, resumed)


def test_fresh_resume_says_where_it_resumes(tmp_path, reference):
    latest = interrupted_run(tmp_path / "run")[-1]
    resumed = Trainer(make_model(seed=9), make_dataset(60), tiny_config(), tmp_path / "run")
    resumed.fit()
    assert resumed.notes == [f"resuming from step 18 ({latest})"]
    assert_same_weights(reference, resumed)


def test_no_readable_checkpoint_is_one_clear_error(tmp_path):
    for folder in interrupted_run(tmp_path / "run"):
        truncate(folder / "optimizer.bin")
    trainer = Trainer(make_model(), make_dataset(60), tiny_config(), tmp_path / "run")
    with pytest.raises(SemidError, match="no checkpoint under .* can be read") as caught:
        trainer.fit()
    assert "\n" not in str(caught.value)


def test_planted_pickle_is_refused_and_never_run(tmp_path):
    latest = interrupted_run(tmp_path / "run")[-1]
    marker = tmp_path / "code-ran"
    torch.save({"state": Planted(marker)}, latest / "optimizer.bin")
    trainer = Trainer(make_model(), make_dataset(60), tiny_config(), tmp_path / "run")
    with pytest.raises(SemidError, match="pickled objects that could run code") as caught:
        trainer.fit()
    assert "\n" not in str(caught.value) and "optimizer.bin" in str(caught.value)
    assert not marker.exists()


def test_full_disk_while_saving_checkpoint_leaves_nothing_and_retry_works(
    tmp_path, reference, monkeypatch
):
    real_save, calls = torch.save, []

    def save_until_full(obj, f, *args, **kwargs):
        calls.append(f)
        if len(calls) == 10:  # inside the 4th checkpoint (3 files each): the disk fills up
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save_until_full)
    trainer = Trainer(make_model(), make_dataset(60), tiny_config(), tmp_path / "run")
    with pytest.raises(DiskFullError) as caught:
        trainer.fit()
    assert str(caught.value) == (
        f"no space left on device while writing {tmp_path / 'run/checkpoints/step-00000009'}; "
        "free space and rerun (nothing was replaced: an earlier version, if any, is intact)"
    )
    root = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in root.iterdir()) == ["step-00000006", "step-00000008"]

    monkeypatch.setattr(torch, "save", real_save)
    resumed = Trainer(make_model(seed=3), make_dataset(60), tiny_config(), tmp_path / "run")
    resumed.fit()
    assert resumed.notes == [f"resuming from step 8 ({root / 'step-00000008'})"]
    assert_same_weights(reference, resumed)


def test_load_torch_file_refuses_code_and_reports_damage(tmp_path):
    good = tmp_path / "good.bin"
    torch.save({"w": torch.ones(2), "step": 3}, good)
    assert checkpoints.load_torch_file(good)["step"] == 3
    planted = tmp_path / "planted.bin"
    torch.save(Planted(tmp_path / "code-ran"), planted)
    with pytest.raises(SemidError, match="could run code"):
        checkpoints.load_torch_file(planted)
    assert not (tmp_path / "code-ran").exists()
    truncate(good)
    with pytest.raises(checkpoints.DamagedCheckpointError, match="good.bin"):
        checkpoints.load_torch_file(good)


def test_rqvae_fit_checkpoint_is_loaded_weights_only(tmp_path):
    data = torch.randn(64, 8, generator=torch.Generator().manual_seed(0))
    spec = "rqvae:2x4"
    settings = {"epochs": 2, "checkpoint_every": 1, "progress": False}
    build_quantizer(spec).fit(data, checkpoint_dir=tmp_path, **settings)
    path = tmp_path / RQVAE.checkpoint_name
    payload = torch.load(path, weights_only=True)  # plain data: weights_only can read it
    payload["state"]["epoch"] = 1  # resume to redo the last epoch, through the checked loader
    torch.save(payload, path)
    build_quantizer(spec).fit(data, checkpoint_dir=tmp_path, **settings)

    torch.save({"fingerprint": Planted(tmp_path / "code-ran")}, path)
    with pytest.raises(SemidError, match="could run code"):
        build_quantizer(spec).fit(data, checkpoint_dir=tmp_path, **settings)
    assert not (tmp_path / "code-ran").exists()
    path.write_bytes(b"")
    with pytest.raises(SemidError, match=f"checkpoint {path} is damaged"):
        build_quantizer(spec).fit(data, checkpoint_dir=tmp_path, **settings)
