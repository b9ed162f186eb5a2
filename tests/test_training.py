"""Tests of the shared training loop: config checks, determinism, exact resume, early stopping, 2 processes."""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import subprocess
import sys
import time
from functools import partial
from pathlib import Path

import pytest
import torch
from _two_process_train import SimulatedCrash, make_dataset, make_model
from safetensors.torch import load_file

from semid.errors import SemidError
from semid.training import TrainConfig, TrainConfigError, Trainer, TrainResult
from semid.training.checkpoints import complete_checkpoints, load_progress
from semid.training.config import TrainProgress
from semid.training.schedule import lr_factor
from semid.training.trainer import EpochShuffleSampler, process_seed

HELPER = Path(__file__).with_name("_two_process_train.py")


def tiny_config(**overrides) -> TrainConfig:
    """60 examples in batches of 8: 8 micro-batches per epoch, the last one short."""
    values = dict(
        max_epochs=3,
        batch_size=8,
        lr=0.05,
        checkpoint_every=3,
        log_every=1,
        mixed_precision="no",
        early_stopping_patience=None,
        metric="acc",
    )
    return TrainConfig(**(values | overrides))


def weights(trainer: Trainer) -> dict[str, torch.Tensor]:
    return {
        k: v.detach().cpu().clone()
        for k, v in trainer.accelerator.unwrap_model(trainer.model).state_dict().items()
    }


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), f"{k} differs by {(a[k] - b[k]).abs().max().item()}"


def metric_lines(path: Path) -> list[dict]:
    """metrics.jsonl without the wall times, which differ between runs."""
    lines = path.read_text().splitlines()
    return [{k: v for k, v in json.loads(line).items() if k != "time"} for line in lines]


def accuracy_eval(data):
    """An evaluate() callback: accuracy of the model on `data`, under two names."""

    def evaluate(model):
        device = next(model.parameters()).device
        x = torch.stack([d["x"] for d in data]).to(device)
        y = torch.stack([d["y"] for d in data]).to(device)
        acc = (model.net(x).argmax(1) == y).float().mean().item()
        return {"acc": acc, "err": 1.0 - acc}

    return evaluate


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("max_epochs", 0),
        ("batch_size", 2.5),
        ("batch_size", True),
        ("grad_accum_steps", 0),
        ("lr", 0.0),
        ("lr", float("nan")),
        ("weight_decay", -1.0),
        ("max_grad_norm", 0.0),
        ("max_steps", 0),
        ("warmup_steps", -1),
        ("mixed_precision", "fp8"),
        ("schedule", "step"),
        ("metric_mode", "maximize"),
        ("metric", ""),
        ("early_stopping_patience", 0),
    ],
)
def test_config_rejects_bad_field_and_names_it(field, value):
    with pytest.raises(TrainConfigError, match=field):
        TrainConfig(**{field: value})


def test_config_round_trips_and_rejects_unknown_keys():
    config = TrainConfig(lr=3e-4, max_steps=7, schedule="cosine")
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config
    with pytest.raises(TrainConfigError, match="learning_rate"):
        TrainConfig.from_dict({"learning_rate": 0.1})
    assert issubclass(TrainConfigError, ValueError) and issubclass(TrainConfigError, SemidError)


@pytest.mark.parametrize("schedule", ["constant", "linear", "cosine"])
def test_lr_factor_warms_up_then_decays(schedule):
    factors = [
        lr_factor(step, warmup_steps=4, total_steps=14, schedule=schedule) for step in range(15)
    ]
    assert factors[:5] == pytest.approx([0.25, 0.5, 0.75, 1.0, 1.0])
    middle, end = {"constant": (1.0, 1.0), "linear": (0.5, 0.0), "cosine": (0.5, 0.0)}[schedule]
    assert (factors[9], factors[14]) == pytest.approx((middle, end), abs=1e-12)
    assert all(a >= b for a, b in zip(factors[4:-1], factors[5:], strict=True))


def test_fit_learns_and_writes_artifacts(tmp_path):
    data, held_out = make_dataset(60), make_dataset(40, seed=1)
    trainer = Trainer(
        make_model(),
        data,
        tiny_config(warmup_steps=2, schedule="linear"),
        tmp_path,
        evaluate=accuracy_eval(held_out),
        collate_fn=None,
    )
    before = accuracy_eval(held_out)(trainer.model)["acc"]
    result = trainer.fit()

    assert (result.steps, result.epochs, result.stopped_early) == (24, 3, False)
    assert result.best_metrics["acc"] > before + 0.2
    assert load_file(result.best_path).keys() == weights(trainer).keys()
    assert [p.name for p in complete_checkpoints(tmp_path / "checkpoints")] == [
        "step-00000021",
        "step-00000024",
    ]
    assert not list((tmp_path / "checkpoints").glob(".*"))  # no temp folders left
    lines = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [line for line in lines if "loss" in line]
    evals = [line for line in lines if "eval/acc" in line]
    assert [line["step"] for line in losses] == list(range(1, 25))
    assert [line["step"] for line in evals] == [8, 16, 24]
    assert {"epoch", "time", "lr"} <= losses[0].keys()
    # 2 warm-up steps, then linear decay over the remaining 22 steps
    assert [line["lr"] for line in losses[:3]] == pytest.approx([0.025, 0.05, 0.05])
    assert losses[-1]["lr"] == pytest.approx(0.05 / 22)
    assert sum(line["loss"] for line in losses[-8:]) < sum(line["loss"] for line in losses[:8])


def test_same_seed_same_weights_other_seed_differs(tmp_path):
    def run(seed, name):
        trainer = Trainer(
            make_model(dropout=0.3),
            make_dataset(60),
            tiny_config(max_epochs=2, seed=seed),
            tmp_path / name,
        )
        trainer.fit()
        return weights(trainer)

    first = run(0, "a")
    assert_same_weights(first, run(0, "b"))
    assert not torch.equal(first["net.0.weight"], run(1, "c")["net.0.weight"])


# 4 optimizer steps per epoch (8 micro-batches, 2 per step), a checkpoint every 3 steps: a crash at
# forward call 12 resumes from the end of epoch 0, 13 from step 6 (4 batches into epoch 1), 20 from
# step 9 (2 batches into epoch 2)
@pytest.mark.parametrize(("crash_at_call", "resumed_batch"), [(12, 0), (13, 4), (20, 2)])
def test_resume_after_interruption_gives_identical_weights(tmp_path, crash_at_call, resumed_batch):
    # dropout, accumulation over a short last batch, warm-up and cosine decay all depend on restored state
    config = tiny_config(grad_accum_steps=2, warmup_steps=3, schedule="cosine", weight_decay=0.01)
    data, held_out = make_dataset(60), make_dataset(30, seed=1)

    reference = Trainer(
        make_model(dropout=0.3), data, config, tmp_path / "ref", evaluate=accuracy_eval(held_out)
    )
    expected = reference.fit()

    crashing = make_model(dropout=0.3)
    crashing.crash_at_call = crash_at_call
    with pytest.raises(SimulatedCrash):
        Trainer(crashing, data, config, tmp_path / "run", evaluate=accuracy_eval(held_out)).fit()
    last = complete_checkpoints(tmp_path / "run" / "checkpoints")[-1]
    crashed = load_progress(last)
    assert crashed.batch_in_epoch == resumed_batch

    # a differently initialised model: everything must come from the checkpoint
    resumed = Trainer(
        make_model(seed=123, dropout=0.3),
        data,
        config,
        tmp_path / "run",
        evaluate=accuracy_eval(held_out),
    )
    result = resumed.fit(resume=True)

    assert_same_weights(weights(reference), weights(resumed))
    assert (result.steps, result.epochs, result.best_step, result.best_metrics) == (
        expected.steps,
        expected.epochs,
        expected.best_step,
        expected.best_metrics,
    )
    assert_same_weights(load_file(expected.best_path), load_file(result.best_path))
    # the wall time of the crashed process is carried over, so a resumed run reports its whole time
    assert expected.resumed_after_s == 0.0
    assert result.resumed_after_s == crashed.elapsed_s > 0

    # lines logged after the checkpoint were dropped on resume, then logged once more
    assert metric_lines(tmp_path / "run" / "metrics.jsonl") == metric_lines(
        tmp_path / "ref" / "metrics.jsonl"
    )


@pytest.mark.parametrize("max_steps", [None, 16])  # 16: the run's last step ends epoch 2
# a crash stands for what no handler sees: a killed process, or Ctrl-C on several processes
@pytest.mark.parametrize("interruption", [KeyboardInterrupt, SimulatedCrash])
def test_an_interrupted_end_of_epoch_evaluation_keeps_the_epoch(tmp_path, max_steps, interruption):
    """The epoch's batches are saved before its evaluation; the resume runs only the evaluation, and
    the run ends as an uninterrupted one, weights, best and log alike."""
    data, held_out = make_dataset(60), make_dataset(30, seed=1)
    config = tiny_config(weight_decay=0.01, max_steps=max_steps)
    reference = Trainer(make_model(dropout=0.3), data, config, tmp_path / "ref",
                        evaluate=accuracy_eval(held_out))  # fmt: skip
    expected = reference.fit()
    evaluations = 0

    def interrupted_second_evaluation(model):
        nonlocal evaluations
        evaluations += 1
        scores = accuracy_eval(held_out)(model)
        if evaluations == 2:  # scored, then interrupted before the epoch's end is saved
            raise interruption
        return scores

    with pytest.raises(interruption):
        Trainer(make_model(dropout=0.3), data, config, tmp_path / "run",
                evaluate=interrupted_second_evaluation).fit()  # fmt: skip
    saved = load_progress(complete_checkpoints(tmp_path / "run" / "checkpoints")[-1])
    assert (saved.step, saved.epoch, saved.batch_in_epoch, saved.last_eval_step) == (16, 1, 8, 8)
    resumed = Trainer(make_model(seed=7, dropout=0.3), data, config, tmp_path / "run",
                      evaluate=accuracy_eval(held_out))  # fmt: skip
    result = resumed.fit()
    assert resumed.notes[0].startswith("resuming from step 16")
    assert_same_weights(weights(reference), weights(resumed))
    assert (result.steps, result.epochs, result.best_step, result.best_metrics) == (
        expected.steps, expected.epochs, expected.best_step, expected.best_metrics)  # fmt: skip
    assert metric_lines(tmp_path / "run" / "metrics.jsonl") == metric_lines(
        tmp_path / "ref" / "metrics.jsonl"
    )


@pytest.mark.parametrize(  # the last step ends no epoch; the last epoch is not due for evaluation
    ("overrides", "last_step", "longer"),
    [({"max_steps": 10}, 10, {"max_steps": 20}), ({"eval_every_epochs": 2}, 24, {"max_epochs": 4})],
)
@pytest.mark.parametrize("extended", [False, True])  # resumed as it was, or with more steps
def test_a_resume_after_an_interrupted_last_evaluation_runs_it_once(
    tmp_path, monkeypatch, overrides, last_step, longer, extended
):
    """The last evaluation of a run, cut short after it was logged, is run again by the resume
    (logged once), also when the resume extends the run: as the finished run then extended."""
    data, held_out = make_dataset(60), make_dataset(30, seed=1)
    config, resumed = (
        tiny_config(**overrides),
        tiny_config(**overrides | (longer if extended else {})),
    )

    def train(folder: str, config: TrainConfig) -> Trainer:
        trainer = Trainer(make_model(), data, config, tmp_path / folder,
                          evaluate=accuracy_eval(held_out))  # fmt: skip
        trainer.fit()
        return trainer

    train("ref", config)
    reference = train("ref", resumed)
    save = Trainer._checkpoint

    def interrupted(self, progress, started):
        if progress.step == progress.last_eval_step == last_step:
            raise KeyboardInterrupt  # the last evaluation is logged, its checkpoint not written
        save(self, progress, started)

    monkeypatch.setattr(Trainer, "_checkpoint", interrupted)
    with pytest.raises(KeyboardInterrupt):
        train("run", config)
    monkeypatch.undo()
    assert_same_weights(weights(train("run", resumed)), weights(reference))
    assert metric_lines(tmp_path / "run" / "metrics.jsonl") == metric_lines(
        tmp_path / "ref" / "metrics.jsonl"
    )


def test_resume_refuses_a_changed_learning_rate_the_optimizer_state_would_hide(tmp_path):
    Trainer(make_model(), make_dataset(60), tiny_config(max_steps=3), tmp_path).fit()
    changed = Trainer(make_model(), make_dataset(60), tiny_config(max_steps=5, lr=0.01), tmp_path)
    with pytest.raises(SemidError, match=r"lr 0.05 -> 0.01 since the checkpoint .*--no-resume"):
        changed.fit()
    assert changed.fit(resume=False).steps == 5


def test_resume_names_the_fields_of_another_model_config(tmp_path):
    before, after = make_model(), make_model()
    before.config, after.config = SizedConfig(16), OtherConfig(16, 2)
    Trainer(before, make_dataset(60), tiny_config(max_steps=2), tmp_path).fit()
    with pytest.raises(
        SemidError, match=r"another model config \(fields codes are not this model.s\)"
    ):
        Trainer(after, make_dataset(60), tiny_config(max_steps=3), tmp_path).fit()


def test_resume_false_starts_over_and_finished_run_is_not_extended(tmp_path):
    config = tiny_config(max_epochs=1)
    first = Trainer(make_model(), make_dataset(60), config, tmp_path)
    done = first.fit()
    again = Trainer(make_model(seed=5), make_dataset(60), config, tmp_path)
    assert again.fit(resume=True).steps == done.steps
    assert_same_weights(weights(first), weights(again))  # loaded, not retrained
    fresh = Trainer(make_model(), make_dataset(60), config, tmp_path)
    restarted = fresh.fit(resume=False)
    assert (restarted.steps, restarted.resumed_after_s) == (done.steps, 0.0)
    assert_same_weights(weights(first), weights(fresh))


def test_resume_refuses_checkpoints_trained_on_other_data(tmp_path):
    """``trained_on`` (the caller's stamp of its data) must match the checkpoints' to resume; a
    checkpoint without a stamp (an older version's) is refused, as it cannot be checked;
    resume=False starts over."""
    stamp = {"data": "a" * 64, "ids": "b" * 64, "users": None}
    Trainer(
        make_model(), make_dataset(60), tiny_config(max_steps=3), tmp_path, trained_on=stamp
    ).fit()
    again = Trainer(
        make_model(), make_dataset(60), tiny_config(max_steps=5), tmp_path, trained_on=stamp
    )
    assert again.fit().steps == 5 and "resuming from step 3" in again.notes[0]
    other = {**stamp, "data": "c" * 64}
    changed = Trainer(
        make_model(), make_dataset(60), tiny_config(max_steps=7), tmp_path, trained_on=other
    )
    with pytest.raises(
        SemidError, match="trained on other data .data 'aaaaaaaaaaaa...' -> 'cccccccccccc...'"
    ):
        changed.fit()
    # the same data with other IDs: an index built again (or by another semid version), which
    # "restore the data" would not mend
    reindexed = Trainer(make_model(), make_dataset(60), tiny_config(max_steps=7), tmp_path,
                        trained_on={**stamp, "ids": "d" * 64})  # fmt: skip
    with pytest.raises(SemidError, match=r"other semantic IDs of the same data \(ids 'bbbbbbbbbbbb"
                                         r"\.\.\.' -> 'dddddddddddd\.\.\.'\): the index changed since .*; start over"):  # fmt: skip
        reindexed.fit()
    assert changed.fit(resume=False).steps == 7  # and the new stamp is kept
    assert Trainer(make_model(), make_dataset(60), tiny_config(max_steps=8), tmp_path,
                   trained_on=other).fit().steps == 8  # fmt: skip
    (tmp_path / "trained_on.json").unlink()  # as written before stamps existed: unchecked
    unstamped = Trainer(make_model(), make_dataset(60), tiny_config(max_steps=9), tmp_path,
                        trained_on=stamp)  # fmt: skip
    with pytest.raises(
        SemidError, match="older semid that did not record trained_on.json .* start over"
    ):
        unstamped.fit()
    assert unstamped.fit(resume=False).steps == 9
    (tmp_path / "trained_on.json").write_text('{"data": "old"}')  # a start without a stamp drops it
    Trainer(make_model(), make_dataset(60), tiny_config(max_steps=2), tmp_path).fit(resume=False)
    assert not (tmp_path / "trained_on.json").exists()


@dataclasses.dataclass
class SizedConfig:
    codes: int


@dataclasses.dataclass
class OtherConfig:
    width: int
    depth: int


def test_a_resume_on_other_data_names_the_data_before_the_model_config_it_changed(tmp_path):
    """Other data gives other IDs, which size the codebooks: the data is the change to name."""
    before, after = make_model(), make_model()
    before.config, after.config = SizedConfig(16), SizedConfig(17)
    stamp = {"data": "a" * 64, "ids": "b" * 64}
    Trainer(before, make_dataset(60), tiny_config(max_steps=2), tmp_path, trained_on=stamp).fit()
    other = Trainer(after, make_dataset(60), tiny_config(max_steps=3), tmp_path,
                    trained_on={**stamp, "data": "c" * 64})  # fmt: skip
    with pytest.raises(SemidError, match=r"trained on other data \(data 'aaaaaaaaaaaa\.\.\.' ->"):
        other.fit()
    same_data = Trainer(
        after, make_dataset(60), tiny_config(max_steps=3), tmp_path, trained_on=stamp
    )
    with pytest.raises(
        SemidError, match="model config changed since the checkpoint .codes 16 -> 17"
    ):
        same_data.fit()


def test_max_steps_stops_mid_epoch_evaluates_and_refuses_changed_batch_size(tmp_path):
    evaluate = accuracy_eval(make_dataset(20, seed=1))
    config = tiny_config(max_steps=5)
    result = Trainer(make_model(), make_dataset(60), config, tmp_path, evaluate=evaluate).fit()
    assert (result.steps, result.epochs, result.best_step) == (5, 0, 5)  # last weights evaluated
    assert load_progress(result.last_checkpoint).batch_in_epoch == 5
    assert load_progress(result.last_checkpoint).last_eval_step == 5
    assert result.best_path.is_file()
    with pytest.raises(SemidError, match="batch_size"):
        Trainer(
            make_model(), make_dataset(60), tiny_config(max_steps=5, batch_size=4), tmp_path
        ).fit()


def test_early_stopping_keeps_best_weights(tmp_path, capsys):
    scores = iter([0.5, 0.7, 0.6, 0.65, 0.1, 0.9])
    snapshots = []

    def evaluate(model):
        snapshots.append({k: v.cpu().clone() for k, v in model.state_dict().items()})
        return {"ndcg@10": next(scores)}

    config = tiny_config(max_epochs=6, early_stopping_patience=2, metric="ndcg@10")
    result = Trainer(make_model(), make_dataset(60), config, tmp_path, evaluate=evaluate).fit()
    assert result.stopped_early and result.epochs == 4
    assert result.best_metrics == {"ndcg@10": 0.7} and result.best_step == 16
    # said, as the epochs asked for were not all run
    assert "stopped early: 2 evaluations without a better ndcg@10 (best at step 16;" in (
        capsys.readouterr().err
    )
    assert_same_weights(load_file(result.best_path), snapshots[1])


@pytest.mark.parametrize("interrupted", [False, True])
def test_an_evaluation_off_the_schedule_counts_nothing_toward_early_stopping(
    tmp_path, monkeypatch, interrupted
):
    """A run stopped by max_steps mid-epoch evaluates its last weights; extended, it stops early
    only on the evaluations an uninterrupted run makes (epoch ends at steps 8, 16, 24), also when
    that last evaluation was cut short and the extended run redoes it first."""
    # steps 8, 12 (the max_steps stop; run twice when interrupted), 16, 24
    scores = iter([0.5, 0.4, *([0.4] if interrupted else []), 0.45, 0.6])

    def evaluate(model):
        return {"acc": next(scores)}

    def fit(**overrides) -> TrainResult:
        config = tiny_config(early_stopping_patience=2, **overrides)
        return Trainer(make_model(), make_dataset(60), config, tmp_path, evaluate=evaluate).fit()

    if interrupted:
        save = Trainer._checkpoint

        def cut_short(self, progress, started):
            if progress.step == progress.last_eval_step == 12:
                raise KeyboardInterrupt  # the last evaluation ran, its checkpoint was not written
            save(self, progress, started)

        monkeypatch.setattr(Trainer, "_checkpoint", cut_short)
        with pytest.raises(KeyboardInterrupt):
            fit(max_steps=12)
        monkeypatch.undo()
    else:
        assert fit(max_steps=12).best_step == 8
    extended = fit()  # to max_epochs 3
    assert not extended.stopped_early and extended.epochs == 3
    assert extended.best_step == 24 and extended.best_metrics == {"acc": 0.6}


def test_patience_counts_evaluations_without_improvement_in_a_row(tmp_path):
    """An improvement starts the count again: patience 2 lets a run go on through two dips."""
    scores = iter([0.5, 0.4, 0.6, 0.5, 0.7])

    def evaluate(model):
        return {"acc": next(scores)}

    config = tiny_config(max_epochs=5, early_stopping_patience=2)
    result = Trainer(make_model(), make_dataset(60), config, tmp_path, evaluate=evaluate).fit()
    assert not result.stopped_early and result.epochs == 5
    assert result.best_step == 40 and result.best_metrics == {"acc": 0.7}


def test_an_evaluation_that_ties_the_best_is_no_improvement(tmp_path):
    """A plateau runs out the patience; the first of the tied evaluations keeps the best weights."""
    snapshots = []

    def evaluate(model):
        snapshots.append({k: v.cpu().clone() for k, v in model.state_dict().items()})
        return {"acc": 0.5}

    config = tiny_config(max_epochs=6, early_stopping_patience=2)
    result = Trainer(make_model(), make_dataset(60), config, tmp_path, evaluate=evaluate).fit()
    assert result.stopped_early and result.epochs == 3 and result.best_step == 8
    assert_same_weights(load_file(result.best_path), snapshots[0])
    progress = TrainProgress(best_value=0.5)
    assert not progress.improves(0.5, "max") and not progress.improves(0.5, "min")
    assert progress.improves(0.6, "max") and progress.improves(0.4, "min")
    assert not progress.improves(float("nan"), "max")


def test_each_epoch_sees_its_own_shuffle_of_the_data(tmp_path):
    """Epochs are not replays of one order: epoch e's order is the sampler's for (seed, e)."""
    data = make_dataset(60)
    seen: list[int] = []
    model = make_model()
    forward = model.forward

    def recording(batch):
        seen.extend(index_of(data, x) for x in batch["x"])
        return forward(batch)

    model.forward = recording
    Trainer(model, data, tiny_config(max_epochs=2, seed=3), tmp_path).fit()
    epoch0, epoch1 = seen[:60], seen[60:]
    assert sorted(epoch0) == sorted(epoch1) == list(range(60)) and epoch0 != epoch1
    sampler = EpochShuffleSampler(60, seed=3)
    assert epoch0 == list(sampler)
    sampler.epoch = 1
    assert epoch1 == list(sampler)


def index_of(data: list[dict[str, torch.Tensor]], x: torch.Tensor) -> int:
    return next(i for i, d in enumerate(data) if torch.equal(d["x"], x))


def test_metric_mode_min(tmp_path):
    scores = iter([0.5, 0.3, 0.4])
    config = tiny_config(max_epochs=3, metric="loss", metric_mode="min")
    result = Trainer(
        make_model(), make_dataset(60), config, tmp_path, evaluate=lambda m: {"loss": next(scores)}
    ).fit()
    assert result.best_metrics == {"loss": 0.3} and result.best_step == 16


def test_clear_errors_for_missing_metric_and_bad_model_output(tmp_path):
    trainer = Trainer(
        make_model(),
        make_dataset(60),
        tiny_config(max_epochs=1),
        tmp_path / "a",
        evaluate=lambda m: {"recall@10": 0.1},
    )
    with pytest.raises(SemidError, match=r"recall@10.*acc"):
        trainer.fit()

    class DictModel(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = torch.nn.Linear(6, 3)

        def forward(self, batch):
            return {"loss": self.lin(batch["x"]).sum()}

    with pytest.raises(SemidError, match=r"\(loss, logits\)"):
        Trainer(DictModel(), make_dataset(8), tiny_config(), tmp_path / "b").fit()
    with pytest.raises(SemidError, match="empty"):
        Trainer(make_model(), [], tiny_config(), tmp_path / "c")


def test_crash_while_saving_keeps_previous_checkpoint(tmp_path, monkeypatch):
    config = tiny_config(max_epochs=2, checkpoint_every=100)
    reference = Trainer(make_model(), make_dataset(60), config, tmp_path / "ref")
    reference.fit()

    trainer = Trainer(make_model(), make_dataset(60), config, tmp_path / "run")
    real_save, calls = trainer.accelerator.save_state, []

    def save_then_die(folder):
        real_save(folder)
        calls.append(folder)
        if len(calls) == 2:  # the epoch-1 checkpoint is complete; die inside the epoch-2 one
            raise SimulatedCrash("killed while writing a checkpoint")

    monkeypatch.setattr(trainer.accelerator, "save_state", save_then_die)
    with pytest.raises(SimulatedCrash):
        trainer.fit()
    assert [p.name for p in complete_checkpoints(tmp_path / "run" / "checkpoints")] == [
        "step-00000008"
    ]
    with open(tmp_path / "run" / "metrics.jsonl", "a") as f:
        f.write('{"step": 9, "lo')  # a line cut short by the crash

    resumed = Trainer(make_model(), make_dataset(60), config, tmp_path / "run")
    resumed.fit()
    assert_same_weights(weights(reference), weights(resumed))
    assert not list((tmp_path / "run" / "checkpoints").glob(".*"))
    assert metric_lines(tmp_path / "run" / "metrics.jsonl") == metric_lines(
        tmp_path / "ref" / "metrics.jsonl"
    )


# `accelerate launch --cpu --num_processes 2` starts a single process unless MPI is set up
# (accelerate 1.15 simple launcher); the torchrun-based launcher with ACCELERATE_USE_CPU runs gloo.
TWO_PROCESSES = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu",
                 "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no",
                 "--dynamo_backend", "no", "--main_process_port", "0"]  # fmt: skip
ONE_THREAD = {"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"}


def train_helper(out: Path, *flags: str, processes: int = 2, check: bool = True) -> int:
    """Run tests/_two_process_train.py into ``out`` (batches of 16 samples in all); its exit code."""
    launch = TWO_PROCESSES if processes == 2 else [sys.executable]
    batch = str(16 // processes)
    command = [*launch, str(HELPER), str(out), "--batch-size", batch, *flags]
    env = os.environ | ONE_THREAD
    return subprocess.run(
        command, env=env, check=check, timeout=300, capture_output=not check
    ).returncode


def test_no_process_of_a_run_draws_the_stream_of_a_process_of_another_seed():
    """Processes were seeded seed + index, so process 1 of a run seeded 0 drew the dropout masks
    of process 0 of a run seeded 1: two seeds of a 3-seed study shared a stream."""
    assert [process_seed(s, 0) for s in range(5)] == list(range(5))  # one process: as seeded
    streams = {process_seed(s, i) for s in range(100) for i in range(8)}
    assert len(streams) == 800
    assert process_seed(0, 1) == process_seed(0, 1)  # the same on every run


@pytest.mark.slow
def test_two_processes_agree_with_each_other_and_with_one_process(tmp_path):
    train_helper(tmp_path / "two")
    train_helper(tmp_path / "one", processes=1)

    rank0, rank1 = (
        load_file(tmp_path / "two" / "rank0.safetensors"),
        load_file(tmp_path / "two" / "rank1.safetensors"),
    )
    single = load_file(tmp_path / "one" / "rank0.safetensors")
    assert_same_weights(rank0, rank1)
    # same global batch (2 x 8 = 16) and same sample order: equal up to the all-reduce's float rounding
    for k in single:
        torch.testing.assert_close(rank0[k], single[k], rtol=1e-5, atol=1e-6)
    assert not torch.equal(rank0["net.0.weight"], make_model().net[0].weight)
    # each process draws its own random stream (dropout masks): the same seed gave both the same
    seeds = [int((tmp_path / run / f"seed{rank}.txt").read_text()) for run, rank in (("one", 0), ("two", 0), ("two", 1))]  # fmt: skip
    assert seeds[1] == seeds[0] and seeds[2] == process_seed(seeds[0], 1) != seeds[0]
    last = complete_checkpoints(tmp_path / "two" / "run" / "checkpoints")[-1]
    assert load_progress(last).num_processes == 2 and (last / "random_states_1.pkl").is_file()


@pytest.mark.slow
def test_processes_that_prepared_other_training_data_are_refused(tmp_path):
    """A retrieval run builds its document IDs in every process of a launched job; machines whose
    floating-point paths differ can build other IDs, and the processes then trained one model on
    disagreeing targets without a word."""
    run = subprocess.run(
        [*TWO_PROCESSES, str(HELPER), str(tmp_path / "out"), "--batch-size", "8", "--ids-per-process"],
        env=os.environ | ONE_THREAD, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert run.returncode != 0
    assert (
        run.stderr.count("process 1 prepared other training data than process 0 (ids differs;") == 1
    )
    assert not (tmp_path / "out" / "rank0.safetensors").exists()
    # the main process's IDs, shared (as a retrieval run shares its document IDs): it trains
    shared = subprocess.run(
        [*TWO_PROCESSES, str(HELPER), str(tmp_path / "shared"), "--batch-size", "8",
         "--ids-per-process", "--shared-ids"],
        env=os.environ | ONE_THREAD, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert shared.returncode == 0, shared.stderr[-2000:]
    assert (tmp_path / "shared" / "rank1.safetensors").is_file()


@pytest.mark.slow
def test_two_processes_keep_an_epoch_whose_evaluation_failed(tmp_path):
    """Rank 0 fails in the second evaluation while rank 1 waits for its result (no handler can save
    then): the epoch was saved before the evaluation, and the resume ends as an uninterrupted run."""
    train_helper(tmp_path / "ref", "--evaluate")
    failed = tmp_path / "failed"
    assert train_helper(failed, "--evaluate", "--crash-at-evaluation", "2", check=False) != 0
    saved = load_progress(complete_checkpoints(failed / "run" / "checkpoints")[-1])
    assert (saved.step, saved.epoch, saved.batch_in_epoch, saved.num_processes) == (8, 1, 4, 2)
    train_helper(failed, "--evaluate")
    for rank in (0, 1):
        assert_same_weights(load_file(tmp_path / "ref" / f"rank{rank}.safetensors"),
                            load_file(failed / f"rank{rank}.safetensors"))  # fmt: skip
    assert metric_lines(failed / "run" / "metrics.jsonl") == metric_lines(
        tmp_path / "ref" / "run" / "metrics.jsonl"
    )


def test_each_evaluation_prints_one_line_with_the_best_so_far(tmp_path, capfd):
    scores = iter([float("nan"), 0.5, 0.7, 0.6])
    trainer = Trainer(make_model(), make_dataset(60), tiny_config(max_epochs=4), tmp_path,
                      evaluate=lambda model: {"acc": next(scores)})  # fmt: skip
    trainer.fit()
    lines = [line for line in capfd.readouterr().err.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 4
    assert lines[0].startswith("epoch 1, step 8: acc nan (no best yet), ")
    assert lines[1].startswith("epoch 2, step 16: acc 0.5000 (best so far), ")
    assert lines[2].startswith("epoch 3, step 24: acc 0.7000 (best so far), ")
    assert lines[3].startswith("epoch 4, step 32: acc 0.6000 (best 0.7000 at step 24), ")


class TiedClassifier(torch.nn.Module):
    """Embeds integer tokens and scores them with the same (tied) matrix, like T5's lm_head."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.embed = torch.nn.Embedding(3, 6)
        self.head = torch.nn.Linear(6, 3, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, batch):
        logits = self.head(self.embed(batch["y"]))
        return torch.nn.functional.cross_entropy(logits, batch["y"]), logits


def test_saving_tied_weights_is_silent_and_resume_keeps_the_tie(tmp_path, caplog):
    config = tiny_config(max_epochs=1, metric="acc")
    trainer = Trainer(TiedClassifier(), make_dataset(60), config, tmp_path,
                      evaluate=lambda model: {"acc": 0.5})  # fmt: skip
    trainer.fit()
    assert "Removed shared tensor" not in caplog.text
    assert load_file(trainer.best_path).keys() == {"embed.weight"}  # saved once

    resumed = Trainer(TiedClassifier(), make_dataset(60), tiny_config(max_epochs=2), tmp_path)
    resumed.fit()
    model = resumed.accelerator.unwrap_model(resumed.model)
    assert model.head.weight is model.embed.weight
    assert not torch.equal(model.embed.weight, TiedClassifier().embed.weight)


def test_other_shared_tensor_warnings_are_kept():
    from semid.training.checkpoints import _DeclaredTiesFilter

    def record(message):
        return logging.LogRecord(
            "accelerate.utils.other", logging.WARNING, "", 0, message, (), None
        )

    keep = _DeclaredTiesFilter({"head.weight"})
    assert not keep.filter(record("[RANK 0] Removed shared tensor {'head.weight'} while saving."))
    assert keep.filter(record("[RANK 0] Removed shared tensor {'other.weight'} while saving."))
    assert keep.filter(record("[RANK 0] Removed shared tensor {'head.weight', 'x'} while saving."))
    assert keep.filter(record("something else"))


def test_training_written_to_a_log_file_shows_its_progress(tmp_path, capsys):
    """A run whose stderr is a file (nohup, a cluster job) says how far it is, not only at epochs' ends."""
    Trainer(make_model(), make_dataset(60), tiny_config(max_steps=5), tmp_path).fit()
    err = capsys.readouterr().err  # pytest's capture is not a terminal
    assert "train:" in err and "5/5" in err


def test_a_full_disk_while_logging_is_one_line_and_the_checkpoint_resumes(tmp_path, monkeypatch):
    """The metrics log is appended between checkpoints: a disk that fills then is told as a full
    disk (not a traceback), and the run resumes from its last checkpoint once there is room."""
    import errno

    import semid.training.trainer as trainer_module
    from semid.atomic import DiskFullError

    real_open, calls = open, {"n": 0}

    def filling(path, *args, **kwargs):
        if Path(path).name == "metrics.jsonl":
            calls["n"] += 1
            if calls["n"] == 3:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return real_open(path, *args, **kwargs)

    monkeypatch.setattr(trainer_module, "open", filling, raising=False)
    config = tiny_config(max_epochs=2, log_every=1, checkpoint_every=2)
    with pytest.raises(DiskFullError, match="metrics.jsonl; free space and rerun"):
        Trainer(make_model(), make_dataset(60), config, tmp_path).fit()
    monkeypatch.undo()
    result = Trainer(make_model(), make_dataset(60), config, tmp_path).fit()
    assert result.steps > 0


def test_work_on_the_main_process_runs_there_only_and_its_refusal_reaches_every_process(
    monkeypatch,
):
    from semid.distributed import on_main_process

    assert on_main_process(lambda: 7) == 7  # one process: the main one
    from semid.atomic import DiskFullError

    with pytest.raises(DiskFullError, match="no space left"):  # one process: as raised
        on_main_process(lambda: (_ for _ in ()).throw(DiskFullError("x")))
    monkeypatch.setenv("RANK", "1")  # another rank (of a job of one: no collective to join)
    assert on_main_process(lambda: pytest.fail("ran on a rank > 0")) is None


def test_a_launched_process_leaves_its_process_group_when_refused(tmp_path, monkeypatch, request):
    """A process that exits on a refusal while in the job's process group could abort in gloo's
    threads ("terminate called without an active exception"); it leaves the group first."""
    import semid.cli.main as cli

    notes = logging.getLogger("semid.notes")
    request.addfinalizer(partial(notes.setLevel, notes.level))  # main quiets a rank > 0's notes
    left = []
    monkeypatch.setattr(cli, "leave_process_group", lambda: left.append(True))
    assert cli.main(["eval", str(tmp_path / "nowhere")]) == 2
    assert not left  # one process: no group
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "1")
    assert cli.main(["eval", str(tmp_path / "nowhere")]) == 2
    assert left == [True]


def test_other_ranks_of_a_launched_job_leave_rank_0s_refusals_to_it(
    tmp_path, monkeypatch, capfd, request
):
    """A refusal every process raises after the main process (on_main_process) is told once, by
    rank 0; an error of another rank's own is told by it, named."""
    import semid.cli.eval
    from semid.cli.main import main
    from semid.distributed import MainProcessError

    notes = logging.getLogger("semid.notes")
    request.addfinalizer(partial(notes.setLevel, notes.level))  # main quiets a rank > 0's notes
    monkeypatch.setenv("RANK", "1")
    assert main(["eval", str(tmp_path / "nowhere")]) == 2
    assert capfd.readouterr().err.startswith("semid: error (process 1): ")

    def refused_by_rank_0(*args, **kwargs):
        raise MainProcessError("refused")

    monkeypatch.setattr(semid.cli.eval, "read_manifest", refused_by_rank_0)
    assert main(["eval", str(tmp_path)]) == 2
    assert capfd.readouterr().err == ""  # rank 0 says it, once


def test_a_collective_broken_by_another_process_is_one_line(tmp_path, monkeypatch, capfd):
    """The surviving process of a launched job whose other process was killed: one line saying
    so and how to resume, not the backend's traceback."""
    import semid.cli.eval
    from semid.cli.main import main

    def peer_gone(*args, **kwargs):
        raise RuntimeError("[../gloo/transport/tcp/pair.cc:553] Connection closed by peer "
                           "[127.0.0.1]:31125\nThis is typically caused by a remote worker crashing")  # fmt: skip

    monkeypatch.setattr(semid.cli.eval, "read_manifest", peer_gone)
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert main(["eval", str(tmp_path)]) == 2
    (line,) = capfd.readouterr().err.splitlines()
    assert line.startswith("semid: error: another process of this launched job stopped ([")
    assert line.endswith("run the same command again to resume from the last checkpoint")


@pytest.mark.slow
def test_a_launched_job_refused_by_rank_0_stops_at_once_with_one_line(tmp_path):
    """Rank 0 refuses the --out (another model's run): every rank stops with it, instead of rank 1
    waiting for rank 0 in the process group until the launcher kills it (30 s)."""
    from conftest import random_ml100k_index

    from semid.cli.main import main

    _, _, idx = random_ml100k_index(tmp_path)
    run = tmp_path / "run"
    assert main(["train", "recommender", "--dataset", "ml-100k", "--index", str(idx), "--model",
                 "pop", "--out", str(run)]) == 0  # fmt: skip
    command = [*TWO_PROCESSES, "-m", "semid.cli.main", "train", "recommender", "--dataset",
               "ml-100k", "--index", str(idx), "--model", "sasrec", "--out", str(run)]  # fmt: skip
    started = time.monotonic()
    done = subprocess.run(command, env=os.environ | ONE_THREAD, capture_output=True, text=True,
                          timeout=300, check=False)  # fmt: skip
    assert done.returncode != 0 and time.monotonic() - started < 25
    errors = [line for line in done.stderr.splitlines() if line.startswith("semid: error:")]
    assert errors == [f"semid: error: {run} holds a pop run; choose another --out (or delete it) "
                      "to train sasrec"]  # fmt: skip


def test_the_process_group_is_joined_as_the_trainer_would_join_it(monkeypatch):
    """On the CPU when ACCELERATE_USE_CPU says so (the README's CPU launch), whatever --device
    resolved to, and with a timeout that outlasts an index built by rank 0 meanwhile."""
    import accelerate

    from semid.distributed import COLLECTIVE_TIMEOUT, join_process_group

    joined = []
    monkeypatch.setattr(accelerate, "PartialState", lambda **kwargs: joined.append(kwargs))
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    join_process_group("cuda")
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    join_process_group("cuda")
    join_process_group("cpu")
    assert joined == [{"cpu": True, "timeout": COLLECTIVE_TIMEOUT},
                      {"cpu": False, "timeout": COLLECTIVE_TIMEOUT},
                      {"cpu": True, "timeout": COLLECTIVE_TIMEOUT}]  # fmt: skip
    assert COLLECTIVE_TIMEOUT.total_seconds() >= 3600


def test_evaluation_ranks_in_float32_under_mixed_precision(tmp_path):
    """Training under bf16 autocast (a GPU's default) evaluates outside it, in float32 as
    `semid eval` ranks: bf16 ties the scores of close items and made the best epoch's choice noisy.
    (In a fresh process: accelerate keeps one mixed precision per process.)"""
    script = f"""
import sys, torch
sys.path.insert(0, {str(HELPER.parent)!r})
from _two_process_train import make_dataset, make_model
from semid.training import TrainConfig, Trainer
data = make_dataset(60)
seen = []
def evaluate(model):
    seen.append((torch.is_autocast_enabled("cpu"), model.net[0].weight.dtype))
    return {{"acc": 0.5}}
config = TrainConfig(max_epochs=2, batch_size=8, mixed_precision="bf16", metric="acc")
Trainer(make_model(), data, config, {str(tmp_path)!r}, evaluate=evaluate).fit()
print(seen)
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == str([(False, torch.float32)] * 2)


def test_auto_precision_is_bf16_only_when_training_on_a_gpu(monkeypatch):
    """On a GPU machine, `--device cpu` (or ACCELERATE_USE_CPU) trains in float32: bf16 autocast
    on a CPU is slow on most CPUs and gives other figures than a machine without a GPU."""
    from semid.training.trainer import _resolve_precision

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    monkeypatch.delenv("ACCELERATE_USE_CPU", raising=False)
    assert _resolve_precision("auto", "cuda") == "bf16"
    assert _resolve_precision("auto", "auto") == "bf16"
    assert _resolve_precision("auto", "cpu") == "no"
    assert _resolve_precision("fp16", "cpu") == "fp16"  # asked for: as asked
    monkeypatch.setenv("ACCELERATE_USE_CPU", "1")
    assert _resolve_precision("auto", "auto") == "no"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.delenv("ACCELERATE_USE_CPU")
    assert _resolve_precision("auto", "auto") == "no"


def test_a_launched_process_uses_its_own_gpu_whatever_cuda_n_names(monkeypatch):
    """Under `accelerate launch` each process has its GPU (LOCAL_RANK, set when the process group
    is joined): `--device cuda:1` must not put every process's evaluation on GPU 1."""
    from semid.tasks.base import resolve_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resolve_device("cuda:1") == "cuda:1"
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_device("cuda:1") == "cuda" and resolve_device("cuda") == "cuda"
    assert resolve_device("cpu") == "cpu"
    with pytest.raises(SemidError, match="only 2 GPU"):
        resolve_device("cuda:2")
