"""The training loop shared by every generator: `model(batch) -> (loss, logits)` on `accelerate`."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import sys
import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate import Accelerator
from accelerate.utils import broadcast_object_list, gather_object, set_seed
from torch import nn
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler
from tqdm import tqdm

from semid.atomic import atomic_file, read_json, write_failure, write_json
from semid.determinism import repeatable
from semid.distributed import MainProcessError, is_launched, trains_on_cpu
from semid.errors import SemidError
from semid.progress import progress_bar
from semid.training.checkpoints import (
    DamagedCheckpointError,
    check_checkpoint,
    checkpoint_dir,
    collective_atomic_dir,
    complete_checkpoints,
    load_progress,
    prune_checkpoints,
    quiet_declared_ties,
    save_progress,
)
from semid.training.config import (
    DATA_ORDER_FIELDS,
    OPTIMIZER_FIELDS,
    TrainConfig,
    TrainProgress,
    TrainResult,
)
from semid.training.heap import HeapTrimmer
from semid.training.schedule import lr_factor
from semid.wording import counted

Evaluate = Callable[[nn.Module], dict[str, float]]
OptimizerFactory = Callable[[nn.Module], torch.optim.Optimizer]


class EpochShuffleSampler(Sampler[int]):
    """A fresh permutation of range(n) per epoch, a pure function of (seed, epoch).

    Unlike `RandomSampler` it draws nothing from the global RNG, so the order of epoch e does not
    depend on what ran before it: a run resumed in the middle of epoch e sees the same order.
    """

    def __init__(self, n: int, seed: int) -> None:
        self.n, self.seed, self.epoch = n, seed, 0

    def __iter__(self) -> Iterator[int]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + self.epoch)
        return iter(torch.randperm(self.n, generator=generator).tolist())

    def __len__(self) -> int:
        return self.n


MODEL_CONFIG_FILE = "model_config.json"  # the config the checkpoints' weights were made with
TRAINED_ON_FILE = "trained_on.json"  # what the checkpoints were trained on (the caller's stamp)
# how to start over, for the command line and for Python callers of fit
START_OVER = "start over (--no-resume; in Python, fit(resume=False))"
UNCHECKED_RESUME = f"a resume cannot be checked without it; {START_OVER}"  # a damaged saved config


def model_config_dict(model: nn.Module) -> dict[str, Any] | None:
    """The model's dataclass ``config`` as JSON values (lists for tuples), or None without one."""
    config = getattr(model, "config", None)
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        return None
    return json.loads(json.dumps(dataclasses.asdict(config)))


def _short(value: Any) -> str:
    """A stamp value for a message: a content hash shortened to 12 characters."""
    text = repr(value)
    return text[:13] + "...'" if isinstance(value, str) and len(value) == 64 else text


def process_seed(seed: int, process_index: int) -> int:
    """The seed of process ``process_index`` of a run seeded ``seed``: ``seed`` itself for the first
    (so one process trains as seeded), a mix of both for the others, so that no process of one
    run draws the stream of a process of a run with another seed (``seed + index`` gave process 1
    of seed 0 the stream of process 0 of seed 1)."""
    if process_index == 0:
        return seed
    return int(np.random.SeedSequence([seed, process_index]).generate_state(1)[0])


class Trainer:
    """Train a `model(batch) -> (loss, logits)` module with checkpoints, exact resume and early stopping.

    `out_dir` receives `checkpoints/step-XXXXXXXX/` (the last `keep_checkpoints`), `best/model.safetensors`,
    `metrics.jsonl`, `train_config.json`, `model_config.json` (the model's dataclass config) and
    `trained_on.json` (``trained_on``: the caller's JSON stamp of the data and IDs, such as content
    hashes); a resume must match both. Launched with `accelerate launch`, the same code runs
    data-parallel on several processes; `batch_size` is then per process. `evaluate(model)` runs on
    the main process only, with the unwrapped model in eval mode under `torch.no_grad()`.
    Resume takes the newest checkpoint that reads back; what it did ("resuming from step N (PATH)",
    a damaged checkpoint skipped) is printed to stderr with the progress bar and kept in `notes`.
    """

    def __init__(
        self,
        model: nn.Module,
        train_dataset: Dataset,
        config: TrainConfig,
        out_dir: str | Path,
        evaluate: Evaluate | None = None,
        collate_fn: Callable[[list[Any]], Any] | None = None,
        optimizer_factory: OptimizerFactory | None = None,
        device: str = "auto",
        trained_on: dict[str, Any] | None = None,
    ) -> None:
        """``device``: "cpu" keeps training on the CPU; "cuda:N" picks GPU N; "auto" lets
        accelerate choose (a GPU when there is one, each launched process its own).
        ``trained_on``: JSON values naming the training data (checked on resume; None: unchecked)."""
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}")
        if isinstance(train_dataset, IterableDataset):
            raise SemidError(
                "Trainer needs a map-style dataset (with __len__ and __getitem__) to resume mid-epoch; materialise the iterable one, e.g. list(dataset)"
            )
        if len(train_dataset) == 0:
            raise SemidError("the training set is empty; check the data split before training")
        self.config, self.out_dir, self.evaluate = config, Path(out_dir), evaluate
        self.model_config = model_config_dict(model)  # checked on resume: the weights must fit
        # checked on resume too: the checkpoints' weights were learned from this data
        self.trained_on = None if trained_on is None else json.loads(json.dumps(trained_on))
        self.notes: list[str] = []  # resume notes, also printed with the progress output
        if device.startswith("cuda:") and not is_launched():  # launched: each process its own GPU
            torch.cuda.set_device(int(device[5:]))
        self.accelerator = Accelerator(
            cpu=trains_on_cpu(device),
            mixed_precision=_resolve_precision(config.mixed_precision, device),
            gradient_accumulation_steps=config.grad_accum_steps,
            # the loop steps the schedule once per optimizer step; accelerate would step it once per process
            step_scheduler_with_optimizer=False,
        )
        self.sampler = EpochShuffleSampler(len(train_dataset), config.seed)
        # a private generator, so creating a DataLoader iterator does not consume the global RNG
        self._loader_generator = torch.Generator().manual_seed(config.seed)
        self._heap = HeapTrimmer()  # the C heap's free pages go back to the system as it trains
        loader = DataLoader(
            train_dataset,
            batch_size=config.batch_size,
            sampler=self.sampler,
            collate_fn=collate_fn,
            num_workers=config.num_workers,
            generator=self._loader_generator,
        )
        optimizer = (optimizer_factory or self._default_optimizer)(model)
        self.model, self.optimizer, self.loader = self.accelerator.prepare(model, optimizer, loader)
        self.batches_per_epoch = len(self.loader)  # per process, after sharding
        self.steps_per_epoch = math.ceil(self.batches_per_epoch / config.grad_accum_steps)
        self.total_steps = config.max_epochs * self.steps_per_epoch
        if config.max_steps is not None:
            self.total_steps = min(self.total_steps, config.max_steps)
        factor = partial(
            lr_factor,
            warmup_steps=config.warmup_steps,
            total_steps=self.total_steps,
            schedule=config.schedule,
        )
        schedule = torch.optim.lr_scheduler.LambdaLR(self.optimizer.optimizer, factor)
        self.scheduler = self.accelerator.prepare(schedule)

    @property
    def checkpoints_root(self) -> Path:
        """Folder holding the `step-XXXXXXXX` checkpoints."""
        return self.out_dir / "checkpoints"

    @property
    def best_path(self) -> Path:
        """Weights of the best evaluation so far (the last weights when there is no `evaluate`).

        Tied tensors are stored once: read them back with `safetensors.torch.load_model(model, path)`.
        """
        return self.out_dir / "best" / "model.safetensors"

    def fit(self, resume: bool = True) -> TrainResult:
        """Train until max_epochs, max_steps or early stopping; resume from the last checkpoint if any."""
        with repeatable(self.accelerator.device):
            return self._fit(resume)

    def _fit(self, resume: bool) -> TrainResult:
        progress = self._start(resume)
        resumed_after_s = progress.elapsed_s
        started = time.monotonic() - resumed_after_s
        # in a log file the bar redraws every 30 s (progress_bar): a long first epoch is not silent
        with progress_bar(
            total=self.total_steps, initial=progress.step, desc="train",
            disable=not self.accelerator.is_main_process,
        ) as bar:  # fmt: skip
            if self._epoch_consumed(progress):  # saved before its end ran
                self._end_epoch(progress, started)
            elif progress.evaluating and self.evaluate is not None:  # before a run's last one
                self._run_evaluation(progress, started, scheduled=False)
                self._checkpoint(progress, started)
            while not self._finished(progress):
                if self._train_epoch(progress, started, bar):
                    self._end_epoch(progress, started)
        # max_steps or eval_every_epochs can leave the last weights unevaluated; they may be the best
        unevaluated = progress.last_eval_step != progress.step and not progress.stopped_early
        if self.evaluate is not None and unevaluated:
            self._save_before_evaluation(progress, started)
            self._run_evaluation(progress, started, scheduled=False)
        self._save_unless_saved(progress, started)
        if self.evaluate is None:
            self._save_best()
            progress.best_step = progress.step
        self.accelerator.wait_for_everyone()
        return TrainResult(
            best_metrics=dict(progress.best_metrics),
            best_step=progress.best_step,
            steps=progress.step,
            epochs=progress.epoch,
            stopped_early=progress.stopped_early,
            best_path=self.best_path,
            last_checkpoint=self._last_checkpoint(),
            resumed_after_s=resumed_after_s,
        )

    def _check_same_data_on_every_process(self) -> None:
        """SemidError on every process of a launched job whose processes prepared different
        training data (``trained_on`` differs from process 0's): each process builds what it trains
        on (a retrieval run its document IDs), and machines whose floating-point paths differ (other
        CPUs or GPUs, thread counts) can build other IDs, which would train one model on
        disagreeing targets."""
        acc = self.accelerator
        if acc.num_processes == 1 or self.trained_on is None:
            return
        first = broadcast_object_list([self.trained_on])[0]
        differing = sorted(
            k for k in {*first, *self.trained_on} if first.get(k) != self.trained_on.get(k)
        )
        reports = gather_object([(acc.process_index, differing)])
        disagree = [(index, keys) for index, keys in reports if keys]
        if disagree:
            index, keys = disagree[0]
            # every process stops; the main process alone tells it (the same line N times else)
            refusal = SemidError if acc.is_main_process else MainProcessError
            raise refusal(
                f"process {index} prepared other training data than process 0 ({', '.join(keys)} "
                f"differ{'s' if len(keys) == 1 else ''}; {len(disagree)} of {acc.num_processes - 1} "
                "other processes disagree): semantic IDs built on machines whose floating-point "
                "paths differ can differ; run every process on the same kind of device with the "
                "same thread count (OMP_NUM_THREADS), or train in one process"
            )

    def _start(self, resume: bool) -> TrainProgress:
        """Seed everything, then restore the last checkpoint (resume) or clear earlier outputs."""
        acc = self.accelerator
        # one stream per process: the same seed on every rank of a launched job drew the same
        # dropout masks on each (one process alone keeps the seed as given)
        set_seed(process_seed(self.config.seed, acc.process_index))
        self._check_same_data_on_every_process()
        resume_from = self._loadable_checkpoint() if resume else None
        self._saved_at = None
        if resume_from is None:
            if acc.is_main_process:
                shutil.rmtree(self.checkpoints_root, ignore_errors=True)
                (self.out_dir / "metrics.jsonl").unlink(missing_ok=True)
                write_json(self.out_dir / "train_config.json", self.config.to_dict())
                if self.model_config is not None:
                    write_json(self.out_dir / MODEL_CONFIG_FILE, self.model_config)
                if self.trained_on is not None:
                    write_json(self.out_dir / TRAINED_ON_FILE, self.trained_on)
                else:  # an earlier run's stamp would be checked against the next resume
                    (self.out_dir / TRAINED_ON_FILE).unlink(missing_ok=True)
            acc.wait_for_everyone()
            return TrainProgress(num_processes=acc.num_processes)
        self._check_resumable(resume_from)
        # weights, optimizer, schedule, grad scaler, RNG states of this process, accumulation counter
        acc.load_state(str(resume_from))
        progress = load_progress(resume_from)
        self._note(f"resuming from step {progress.step} ({resume_from})")
        self._saved_at = _snapshot(progress)
        if acc.is_main_process:
            # saved before its step's evaluation (an epoch's end, the last steps of a run; older
            # checkpoints flag only the first): the evaluation runs again, so one logged after goes
            eval_pending = progress.evaluating or self._epoch_consumed(progress)
            self._truncate_metrics(progress.step, keep_evals_at_step=not eval_pending)
            write_json(self.out_dir / "train_config.json", self.config.to_dict())
        acc.wait_for_everyone()
        return progress

    def _loadable_checkpoint(self) -> Path | None:
        """The newest checkpoint whose files all read back; damaged newer ones are skipped with a note."""
        found = complete_checkpoints(self.checkpoints_root)
        damage = None
        for older, folder in reversed(list(enumerate(found))):
            try:
                check_checkpoint(folder)
            except DamagedCheckpointError as e:
                damage = damage or f"{folder}: {e}"
                if older:  # else the error below says it all
                    self._note(f"checkpoint {folder} is damaged ({e}); trying the previous one")
                continue
            return folder
        if damage is not None:
            raise SemidError(
                f"no checkpoint under {self.checkpoints_root} can be read (newest {damage}); "
                f"delete that folder, or {START_OVER}"
            )
        return None

    def _note(self, message: str) -> None:
        self.notes.append(message)
        if self.accelerator.is_main_process:
            tqdm.write(message, file=sys.stderr)

    def _check_resumable(self, folder: Path) -> None:
        saved = load_progress(folder)
        if saved.num_processes != self.accelerator.num_processes:
            raise SemidError(
                f"checkpoint {folder} was written by {saved.num_processes} process(es) but this run has "
                f"{self.accelerator.num_processes}; launch with the same number, or {START_OVER}"
            )
        # checkpoints of older versions recorded neither what they learned from nor the model
        # config: a resume could not be checked (other IDs went on silently, another config
        # failed inside torch)
        unrecorded = [name for name, given in ((TRAINED_ON_FILE, self.trained_on),
                                               (MODEL_CONFIG_FILE, self.model_config))
                      if given is not None and not (self.out_dir / name).is_file()]  # fmt: skip
        if unrecorded:
            raise SemidError(
                f"cannot resume {self.out_dir}: its checkpoints were written by an older semid that "
                f"did not record {' or '.join(unrecorded)} (what they learned from), so the resume "
                f"cannot be checked; {START_OVER}"
            )
        # the data first: other data changes the model config too (the IDs size the codebooks)
        data_file = self.out_dir / TRAINED_ON_FILE
        if data_file.is_file() and self.trained_on is not None:
            before = read_json(data_file, UNCHECKED_RESUME)
            changed = [f"{k} {_short(before.get(k))} -> {_short(v)}"
                       for k, v in self.trained_on.items() if before.get(k) != v]  # fmt: skip
            if changed and all(c.startswith("ids ") for c in changed):  # the data as it was
                raise SemidError(
                    f"cannot resume {self.out_dir}: its checkpoints were trained on other semantic "
                    f"IDs of the same data ({'; '.join(changed)}): the index changed since (built "
                    f"again, or by another semid version); {START_OVER}"
                )
            if changed:
                raise SemidError(
                    f"cannot resume {self.out_dir}: its checkpoints were trained on other data "
                    f"({'; '.join(changed)}); restore the data, or {START_OVER}"
                )
        config_file = self.out_dir / "train_config.json"
        if config_file.is_file():
            before = read_json(config_file, UNCHECKED_RESUME)
            for fields, why in ((DATA_ORDER_FIELDS, "they fix the data order"),
                                (OPTIMIZER_FIELDS, "the optimizer's saved state keeps the old values")):  # fmt: skip
                changed = [f"{f} {before.get(f)} -> {getattr(self.config, f)}"
                           for f in fields if before.get(f) != getattr(self.config, f)]  # fmt: skip
                if changed:
                    raise SemidError(
                        f"cannot resume {self.out_dir}: {'; '.join(changed)} since the checkpoint "
                        f"({why}); restore them, or {START_OVER}"
                    )
        model_file = self.out_dir / MODEL_CONFIG_FILE
        if model_file.is_file() and self.model_config is not None:
            before = read_json(model_file, UNCHECKED_RESUME)
            if not isinstance(before, dict):
                raise SemidError(f"{model_file} is not a JSON object; {UNCHECKED_RESUME}")
            foreign = sorted(set(before) - set(self.model_config))  # fields this model lacks
            if foreign:
                raise SemidError(
                    f"cannot resume {self.out_dir}: its checkpoints were made with another model "
                    f"config (fields {', '.join(foreign[:4])} are not this model's); train into "
                    f"another folder, or {START_OVER}"
                )
            changed = [f"{k} {before.get(k)!r} -> {v!r}"
                       for k, v in self.model_config.items() if before.get(k) != v]  # fmt: skip
            if changed:
                more = f"; and {len(changed) - 3} more" if len(changed) > 3 else ""
                raise SemidError(
                    f"cannot resume {self.out_dir}: the model config changed since the checkpoint "
                    f"({'; '.join(changed[:3])}{more}; it follows --model-config and options such "
                    f"as --max-history); restore them, or {START_OVER}"
                )

    def _epoch_consumed(self, progress: TrainProgress) -> bool:
        """Whether every micro-batch of the current epoch has been consumed (its end may be pending)."""
        return progress.batch_in_epoch == self.batches_per_epoch

    def _train_epoch(self, progress: TrainProgress, started: float, bar: tqdm) -> bool:
        """Run the rest of the current epoch; False when max_steps stopped it before the end."""
        acc, cfg = self.accelerator, self.config
        self.sampler.epoch = progress.epoch
        # worker seeds come from this generator: reset it so a resumed epoch seeds its workers the same way
        self._loader_generator.manual_seed(cfg.seed * 1_000_003 + progress.epoch)
        loader = self.loader
        if progress.batch_in_epoch:
            loader = acc.skip_first_batches(self.loader, progress.batch_in_epoch)
        self.model.train()
        loss_sum, loss_count = torch.zeros((), device=acc.device), 0
        for batch in loader:
            with acc.accumulate(self.model):
                loss = _loss_of(self.model(batch))
                acc.backward(loss)
                if acc.sync_gradients:
                    step_lr = self.scheduler.get_last_lr()[0]  # logged: the rate this update uses
                    if cfg.max_grad_norm is not None:
                        acc.clip_grad_norm_(self.model.parameters(), cfg.max_grad_norm)
                self.optimizer.step()
                if acc.sync_gradients and not acc.optimizer_step_was_skipped:
                    self.scheduler.step()
                self.optimizer.zero_grad()
            progress.batch_in_epoch += 1
            loss_sum, loss_count = loss_sum + loss.detach().float(), loss_count + 1
            if not acc.sync_gradients:
                continue
            progress.step += 1
            bar.update(1)
            self._heap.maybe_trim()
            end_of_epoch = self._epoch_consumed(progress)
            if progress.step % cfg.log_every == 0 or end_of_epoch:
                mean_loss = acc.reduce(loss_sum / loss_count, reduction="mean").item()
                loss_sum, loss_count = torch.zeros_like(loss_sum), 0
                bar.set_postfix(loss=f"{mean_loss:.4f}", refresh=False)
                self._log(progress, started, loss=mean_loss, lr=step_lr)
            if cfg.max_steps is not None and progress.step >= cfg.max_steps:
                return end_of_epoch
            # the end-of-epoch checkpoint follows right away, after the evaluation
            if progress.step % cfg.checkpoint_every == 0 and not end_of_epoch:
                self._checkpoint(progress, started)
        return True

    def _end_epoch(self, progress: TrainProgress, started: float) -> None:
        """Evaluate (when due) and checkpoint a finished epoch. The epoch is saved as trained but
        not ended before its evaluation, so an evaluation cut short (Ctrl-C, a killed process, on
        any number of processes) loses no training: a resume redoes only the evaluation, as if
        uninterrupted. Each evaluated epoch so writes two checkpoints (the second replaces the
        first: the same step)."""
        due = (
            self.evaluate is not None and (progress.epoch + 1) % self.config.eval_every_epochs == 0
        )
        progress.evaluating = False  # one saved before a resume that no longer evaluates it
        if due:
            self._save_before_evaluation(progress, started)
        progress.epoch += 1
        progress.batch_in_epoch = 0
        if due:
            self._run_evaluation(progress, started)
        self._checkpoint(progress, started)

    def _save_before_evaluation(self, progress: TrainProgress, started: float) -> None:
        """Checkpoint `progress` marked as saved just before an evaluation: an evaluation cut
        short keeps the trained steps, and a resume runs that evaluation first."""
        progress.evaluating = True
        self._save_unless_saved(progress, started)

    def _save_unless_saved(self, progress: TrainProgress, started: float) -> None:
        """Checkpoint `progress` unless the newest checkpoint already holds it (a resume, say)."""
        if self._saved_at != _snapshot(progress):
            self._checkpoint(progress, started)

    def _run_evaluation(
        self, progress: TrainProgress, started: float, scheduled: bool = True
    ) -> None:
        """Evaluate on the main process, share the result, keep the best weights, maybe stop early.

        An evaluation off the schedule (of the last weights, where max_steps or eval_every_epochs
        left them unevaluated) can keep the best weights but leaves the count of evaluations without
        improvement as it was: a run extended past it (a larger max_steps or max_epochs) counts
        only the evaluations an uninterrupted longer run makes."""
        acc, cfg = self.accelerator, self.config
        metrics: list[dict[str, float] | None] = [None]
        if acc.is_main_process:
            model = acc.unwrap_model(self.model)
            model.eval()
            # in float32 as `semid eval` ranks: bf16 autocast (a GPU's default) ties scores of
            # close items, which made the choice of the best epoch noisier than on a CPU
            with torch.no_grad():
                metrics[0] = {k: v if isinstance(v, int) else float(v)  # counts stay whole
                              for k, v in self.evaluate(model).items()}  # fmt: skip
            model.train()
        metrics = broadcast_object_list(metrics)[0]
        if cfg.metric not in metrics:
            raise SemidError(
                f"evaluate() returned {sorted(metrics)} but TrainConfig.metric is {cfg.metric!r}; set metric to one of those"
            )
        self._log(progress, started, **{f"eval/{k}": v for k, v in metrics.items()})
        progress.last_eval_step, progress.evaluating = progress.step, False
        improved = progress.improves(metrics[cfg.metric], cfg.metric_mode)
        if acc.is_main_process:  # one line per evaluation, also where no progress bar shows (logs)
            if improved or progress.best_value is None:  # None: every evaluation so far was NaN
                best = "best so far" if improved else "no best yet"
            else:
                best = f"best {progress.best_value:.4f} at step {progress.best_step}"
            epoch = progress.epoch + (progress.batch_in_epoch > 0)  # the one it is in, if any
            tqdm.write(f"epoch {epoch}, step {progress.step}: {cfg.metric} {metrics[cfg.metric]:.4f} "
                       f"({best}), {time.monotonic() - started:.0f} s", file=sys.stderr)  # fmt: skip
        if improved:
            progress.best_value, progress.best_step, progress.best_metrics = (
                metrics[cfg.metric],
                progress.step,
                metrics,
            )
            self._save_best()
        if not scheduled:
            return
        if improved:
            progress.evals_without_improvement = 0
        else:
            progress.evals_without_improvement += 1
            patience = cfg.early_stopping_patience
            progress.stopped_early = (
                patience is not None and progress.evals_without_improvement >= patience
            )
            if progress.stopped_early and acc.is_main_process:  # said: the cap was not reached
                tqdm.write(f"stopped early: {counted(patience, 'evaluation')} without a better "
                           f"{cfg.metric} (best at step {progress.best_step}; --patience sets how "
                           "many)", file=sys.stderr)  # fmt: skip

    def _checkpoint(self, progress: TrainProgress, started: float) -> None:
        """Save model, optimizer, schedule, RNG states and counters; keep the newest few."""
        acc = self.accelerator
        progress.elapsed_s = time.monotonic() - started
        with (
            collective_atomic_dir(acc, checkpoint_dir(self.checkpoints_root, progress.step)) as tmp,
            quiet_declared_ties(acc.unwrap_model(self.model)),
        ):
            acc.save_state(str(tmp))
            if acc.is_main_process:
                save_progress(tmp, progress)
        if acc.is_main_process:
            prune_checkpoints(self.checkpoints_root, self.config.keep_checkpoints)
        self._saved_at = _snapshot(progress)
        acc.wait_for_everyone()

    def _save_best(self) -> None:
        acc = self.accelerator
        with (
            collective_atomic_dir(acc, self.best_path.parent) as tmp,
            quiet_declared_ties(acc.unwrap_model(self.model)),
        ):
            acc.save_model(self.model, tmp, safe_serialization=True)

    def _finished(self, progress: TrainProgress) -> bool:
        cfg = self.config
        out_of_steps = cfg.max_steps is not None and progress.step >= cfg.max_steps
        return progress.stopped_early or out_of_steps or progress.epoch >= cfg.max_epochs

    def _last_checkpoint(self) -> Path | None:
        found = complete_checkpoints(self.checkpoints_root)
        return found[-1] if found else None

    def _log(self, progress: TrainProgress, started: float, **values: float) -> None:
        if self.accelerator.is_main_process:
            line = {
                "step": progress.step,
                "epoch": progress.epoch,
                **values,
                "time": round(time.monotonic() - started, 3),
            }
            path = self.out_dir / "metrics.jsonl"
            try:  # a line cut short here is skipped on resume (_logged_before)
                with open(path, "a") as f:
                    f.write(json.dumps(line) + "\n")
            except OSError as e:
                failure = write_failure(e, path)  # the last checkpoint is intact: resume from it
                if failure is not None:
                    raise failure from None
                raise

    def _truncate_metrics(self, step: int, keep_evals_at_step: bool = True) -> None:
        """Drop metric lines logged after the checkpoint we resume from; they will be logged again
        (and its step's evaluation, unless ``keep_evals_at_step``)."""
        path = self.out_dir / "metrics.jsonl"
        if path.is_file():
            kept = [
                line
                for line in path.read_text().splitlines(keepends=True)
                if _logged_before(line, step, keep_evals_at_step)
            ]
            with atomic_file(path) as f:
                f.writelines(kept)

    def _default_optimizer(self, model: nn.Module) -> torch.optim.Optimizer:
        """AdamW; biases and norm weights (1-d parameters) get no weight decay, as usual for Transformers."""
        params = [p for p in model.parameters() if p.requires_grad]
        groups = [
            {
                "params": [p for p in params if p.ndim >= 2],
                "weight_decay": self.config.weight_decay,
            },
            {"params": [p for p in params if p.ndim < 2], "weight_decay": 0.0},
        ]
        return torch.optim.AdamW([g for g in groups if g["params"]], lr=self.config.lr)


def _snapshot(progress: TrainProgress) -> TrainProgress:
    """What a checkpoint of `progress` would hold, wall time aside: equal snapshots need no new save."""
    return dataclasses.replace(progress, best_metrics=dict(progress.best_metrics), elapsed_s=0.0)


def _logged_before(line: str, step: int, keep_evals_at_step: bool = True) -> bool:
    try:
        logged = json.loads(line)
        if logged["step"] == step and not keep_evals_at_step:
            return not any(key.startswith("eval/") for key in logged)
        return logged["step"] <= step
    except (json.JSONDecodeError, KeyError, TypeError, AttributeError):
        return False  # a line cut short by the interruption


def _loss_of(output: Any) -> torch.Tensor:
    if not (isinstance(output, tuple) and len(output) == 2 and torch.is_tensor(output[0])):
        raise SemidError(
            f"model(batch) must return a (loss, logits) tuple, got {type(output).__name__}; see the generator contract in semid/generator.py"
        )
    return output[0]


def _resolve_precision(name: str, device: str) -> str:
    """'auto' becomes bf16 when training on a CUDA GPU that supports it, else no mixed precision
    (also for ``device`` cpu on a GPU machine: bf16 on a CPU is slow and changes the figures)."""
    if name != "auto":
        return name
    gpu_bf16 = torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    return "bf16" if gpu_bf16 and not trains_on_cpu(device) else "no"
