"""Typed, validated hyper-parameters of the shared training loop, and what a run returns."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from semid.errors import SemidError

PRECISIONS = ("no", "bf16", "fp16", "auto")
SCHEDULES = ("constant", "linear", "cosine")
METRIC_MODES = ("max", "min")
# Fields that fix which sample lands in which step: a resumed run must keep them to stay exact.
DATA_ORDER_FIELDS = ("batch_size", "grad_accum_steps", "seed")
# Fields the optimizer's saved state holds: a resumed run would keep the old values silently.
OPTIMIZER_FIELDS = ("lr", "weight_decay")


class TrainConfigError(SemidError, ValueError):
    """A TrainConfig field holds a value the trainer cannot use; the message names the field."""


@dataclass
class TrainConfig:
    """Hyper-parameters of `Trainer`; every field is checked on construction."""

    max_epochs: int = 10
    max_steps: int | None = None  # optimizer steps; stops before max_epochs when reached first
    lr: float = 1e-3
    weight_decay: float = 0.0  # AdamW decay, never applied to biases and norm weights
    warmup_steps: int = 0  # linear warm-up from lr/warmup_steps to lr, then `schedule`
    # after warm-up: "constant", or "linear" / "cosine" decay to 0 at the last step
    schedule: str = "constant"
    batch_size: int = 256  # per process: global batch = batch_size * processes * grad_accum_steps
    grad_accum_steps: int = 1
    max_grad_norm: float | None = 1.0  # None: no clipping
    # "no" | "bf16" | "fp16" | "auto" (bf16 on a GPU that supports it, else no)
    mixed_precision: str = "auto"
    checkpoint_every: int = 500  # optimizer steps; also at the end of every epoch and at the end
    keep_checkpoints: int = 2  # older checkpoints are deleted once a newer one is complete
    log_every: int = 10  # optimizer steps between two loss lines in metrics.jsonl
    eval_every_epochs: int = 1
    # evaluations without improvement before stopping; None: never stop early
    early_stopping_patience: int | None = 3
    metric: str = "ndcg@10"  # key of the dict returned by `evaluate` that selects the best weights
    metric_mode: str = "max"  # "max" or "min": which direction is better
    seed: int = 0
    num_workers: int = 0  # DataLoader worker processes

    def __post_init__(self) -> None:
        for name in (
            "max_epochs",
            "batch_size",
            "grad_accum_steps",
            "checkpoint_every",
            "keep_checkpoints",
            "log_every",
            "eval_every_epochs",
        ):
            _check_int(self, name, minimum=1)
        for name in ("warmup_steps", "seed", "num_workers"):
            _check_int(self, name, minimum=0)
        for name in ("max_steps", "early_stopping_patience"):
            if getattr(self, name) is not None:
                _check_int(self, name, minimum=1)
        _check_float(self, "lr", positive=True)
        _check_float(self, "weight_decay", positive=False)
        if self.max_grad_norm is not None:
            _check_float(self, "max_grad_norm", positive=True)
        _check_choice(self, "mixed_precision", PRECISIONS)
        _check_choice(self, "schedule", SCHEDULES)
        _check_choice(self, "metric_mode", METRIC_MODES)
        if not isinstance(self.metric, str) or not self.metric:
            raise TrainConfigError(
                f"TrainConfig.metric={self.metric!r}: give the name of a metric returned by `evaluate`, e.g. 'ndcg@10'"
            )

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> TrainConfig:
        """Build a config from a dict (e.g. parsed JSON), rejecting unknown keys."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(values) - known)
        if unknown:
            raise TrainConfigError(
                f"unknown TrainConfig field(s) {unknown}; known fields: {sorted(known)}"
            )
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-serialisable dict; `from_dict` reads it back."""
        return dataclasses.asdict(self)


@dataclass(frozen=True)
class TrainResult:
    """What `Trainer.fit` returns: the best evaluation, counters, and where the weights are."""

    best_metrics: dict[
        str, float
    ]  # the evaluation that selected `best_path`; empty without `evaluate`
    best_step: int  # optimizer step of the best weights (the last step without `evaluate`)
    steps: int  # optimizer steps done in total, across resumes
    epochs: int  # completed epochs
    stopped_early: bool
    best_path: Path  # best/model.safetensors
    last_checkpoint: Path  # folder to resume from
    resumed_after_s: float = 0.0  # training wall time of earlier processes, when this one resumed


@dataclass
class TrainProgress:
    """Counters saved with every checkpoint so a run can resume where it stopped, even mid-epoch."""

    step: int = 0  # optimizer steps done
    epoch: int = 0  # completed epochs
    batch_in_epoch: int = 0  # micro-batches of the current epoch already consumed on each process
    num_processes: int = 1
    best_value: float | None = None
    best_step: int = 0
    best_metrics: dict[str, float] = field(default_factory=dict)
    evals_without_improvement: int = 0
    last_eval_step: int = -1
    stopped_early: bool = False
    elapsed_s: float = 0.0  # training wall time before this process started
    # saved just before an evaluation (the end of an epoch, the last steps of a run): a resume
    # runs that evaluation first, whatever the resumed run's length
    evaluating: bool = False

    def improves(self, value: float, mode: str) -> bool:
        """Whether `value` beats the best evaluation so far in direction `mode`."""
        if self.best_value is None:
            return not math.isnan(value)
        return value > self.best_value if mode == "max" else value < self.best_value


def _check_int(config: TrainConfig, name: str, minimum: int) -> None:
    value = getattr(config, name)
    # bool is an int subclass, but `batch_size=True` is always a mistake
    if not isinstance(value, int) or isinstance(value, bool) or value < minimum:
        raise TrainConfigError(f"TrainConfig.{name}={value!r}: expected an integer >= {minimum}")


def _check_float(config: TrainConfig, name: str, positive: bool) -> None:
    value = getattr(config, name)
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or (value <= 0 if positive else value < 0):
        raise TrainConfigError(
            f"TrainConfig.{name}={value!r}: expected a finite number {'> 0' if positive else '>= 0'}"
        )


def _check_choice(config: TrainConfig, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(config, name)
    if value not in choices:
        raise TrainConfigError(
            f"TrainConfig.{name}={value!r}: choose one of {', '.join(map(repr, choices))}"
        )
