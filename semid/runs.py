"""Run directories: what a trained run holds, and loading it back with every part checked.

A run folder::

    manifest.json   {"format_version": 2, "task": "recommend", "parts": {"index": "index", "model": "model"}}
    config.json     {"spec": {...the task's typed spec...}, "state": {...}, "versions": {...}, "threads": N, "command": ...,
                     "adds": [{"command": ..., "source": ..., "threads": N}, ...] after `semid index add`}
    index/          the SemanticIDs and the quantizer that made them
    model/          the trained model (any registered model, one save format)
    metrics.json    evaluation results by split
    train/          checkpoints and metrics.jsonl of the training loop

The manifest says which task wrote the run and which parts it has, so a run is checked before
anything heavy is loaded; ``config.json`` holds everything needed to reproduce and evaluate it.
"""

from __future__ import annotations

import os
import shutil
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager, nullcontext
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

import semid
from semid.atomic import atomic_dir, read_json, restore_on_error, write_json
from semid.configs import config_to_dict
from semid.distributed import on_main_process
from semid.errors import SemidError
from semid.ids import SemanticIDs
from semid.locking import can_write, write_lock
from semid.manifest import MANIFEST, METRICS, PARTS, RUN_CONFIG, RUN_FORMAT, read_manifest
from semid.models import load_model
from semid.saving import versions

if TYPE_CHECKING:
    from torch import nn

DATA_FIELDS = ("dataset", "items")  # spec fields that may name data files (stored absolute)


@dataclass
class Run:
    """A loaded run directory: its task, config, index and model."""

    path: Path
    task: str
    config: dict[str, Any]  # config.json: spec, state, versions, command
    ids: SemanticIDs
    model: Any

    def __repr__(self) -> str:
        return (f"Run({str(self.path)!r}, task={self.task!r}, model={self.spec.get('model')!r}, "
                f"ids={self.ids!r})")  # fmt: skip

    @property
    def index_path(self) -> Path:
        """The run's index folder."""
        return self.path / PARTS["index"]

    @property
    def spec(self) -> dict[str, Any]:
        """The task spec the run was trained with (a dict; the task turns it into its dataclass)."""
        return self.config["spec"]

    @property
    def state(self) -> dict[str, Any]:
        """What training recorded beside the spec (e.g. ``trained_items``)."""
        return self.config.get("state", {})


def copy_index(
    index: str | os.PathLike, run: str | os.PathLike, trained_sha256: str | None = None
) -> None:
    """Copy an index folder (with its quantizer) into ``run/index``, atomically. With
    ``trained_sha256`` (the IDs the run's model learned), an index that changed since (rebuilt or
    added to while the run trained) is refused: the run would pair the model with IDs it never
    learned."""
    with _index_copied(index, Path(run) / PARTS["index"]) as tmp:
        if (
            tmp is not None
            and trained_sha256 is not None
            and SemanticIDs.load(tmp).sha256() != trained_sha256
        ):
            raise SemidError(f"{index} changed while {run} trained (rebuilt, or items added): its "
                             f"IDs are not those the model learned, so {run} was not written; "
                             "train again (with --no-resume: the checkpoints are of the old IDs)")  # fmt: skip


TRAINING_INDEX = ("train", "index")  # in a run folder: the copy of --index a training learns from
INDEX_COPY_WAIT_S = 60.0  # another writer of --index (a second training copying it) is waited for


def training_index(
    index: str | os.PathLike, out: str | os.PathLike, ids_sha256: str, device: str = "auto"
) -> Path:
    """Copy ``index`` beside the run's checkpoints (``out/train/index``), holding the index's write
    lock (by the main process of a launched job training on ``device``), and
    return the copy: what the training learns from and copies into its run at the end, whatever
    becomes of ``index`` meanwhile (rebuilt, or items added to it). Take it once the inputs are
    checked (a refused command leaves no folder); the copy must hold ``ids_sha256``, the IDs the
    model was built on, else ``index`` changed while the training started."""
    copy = Path(out).joinpath(*TRAINING_INDEX)
    if copy.resolve() in Path(index).resolve().parents:
        raise SemidError(f"--index {index} lies inside {copy}, which the training replaces with its "
                         "copy of the index; move the index out of the run folder")  # fmt: skip

    def copy_locked() -> None:
        lock = (write_lock(index, f"index {index}", INDEX_COPY_WAIT_S, "wait for it, then train")
                if Path(index).is_dir() and can_write(index) else nullcontext())  # fmt: skip
        with lock, _index_copied(index, copy):
            pass

    on_main_process(copy_locked, device)
    if SemanticIDs.load(copy).sha256() != ids_sha256:
        raise SemidError(f"{index} changed while {out} started (rebuilt, or items added); "
                         "train again")  # fmt: skip
    return copy


def training_index_remover(out: str | os.PathLike, index: str | os.PathLike) -> Callable[[], None]:
    """Call before a training of ``out`` from ``index``; the function returned, called when the
    command ends, removes the copy of ``index`` the training took (`training_index`): the run
    holds it then, or the training stopped and the next one copies ``index`` again. A folder
    that was there before and is untouched (a refused command; a text-to-image index that an
    earlier training built there) stays, so a refused command leaves the run folder as it was."""
    copy = Path(out).joinpath(*TRAINING_INDEX)
    found = _identity(copy.parent, [copy.name])  # an atomic replacement gives a new inode

    def remove() -> None:
        taken = _identity(copy.parent, [copy.name])
        if taken not in (found, (0, 0)) and copy.resolve() != Path(index).resolve():
            shutil.rmtree(copy, ignore_errors=True)

    return remove


@contextmanager
def _index_copied(index: str | os.PathLike, dest: Path) -> Iterator[Path | None]:
    """Copy an index folder to ``dest``, atomically; yields the copy before it replaces ``dest``
    (an exception leaves ``dest`` as it was), or None when ``index`` is ``dest`` itself."""
    SemanticIDs.load(index)  # fail early, with the index's own message, if it is not one
    if Path(index).resolve() == dest.resolve():
        yield None
        return
    with atomic_dir(dest) as tmp:
        shutil.copytree(index, tmp, dirs_exist_ok=True)
        yield tmp


@contextmanager
def replacing_run(run: str | os.PathLike, extra: Sequence[str] = ()) -> Iterator[None]:
    """The final writes of a training as one change: the index, the model, ``config.json``,
    ``manifest.json`` and the task's ``extra`` files. An exception inside (Ctrl-C too) puts the
    earlier run back as it was, so an interrupted retrain never leaves a new index beside an old
    model. The earlier run's ``metrics.json`` is dropped here: its figures are of the model being
    replaced."""
    run = Path(run)
    run.mkdir(parents=True, exist_ok=True)
    names = [*PARTS.values(), RUN_CONFIG, MANIFEST, METRICS, *extra]
    with restore_on_error([run / name for name in names]):
        (run / METRICS).unlink(missing_ok=True)
        yield


def write_run(run: str | os.PathLike, task: str, spec: Any, state: dict[str, Any],
              added_from: str | os.PathLike | None = None) -> None:  # fmt: skip
    """Write the manifest and ``config.json`` of a run whose index and model are already in place.

    ``added_from``: the data a `semid index add` just indexed; the training's command, thread
    count and versions stay, and the add is appended to ``adds`` (its command, the data's absolute
    path, its thread count, and its versions where they differ from training's)."""
    run = Path(run)
    config = {
        "spec": config_to_dict(spec),
        "state": state,
        "versions": versions(),
        # torch's thread count in training: another count can change the weights' last digits
        "threads": torch.get_num_threads(),
        "command": command_line(),
        "run_path": str(run.resolve()),  # where the data paths are relative to (`moved_data`)
    }
    if added_from is not None:
        trained = read_json(run / RUN_CONFIG, RETRAIN)
        add = {"command": config["command"], "source": str(Path(added_from).resolve()),
               "threads": config["threads"]}  # fmt: skip
        if config["versions"] != trained.get("versions"):
            add["versions"] = config["versions"]
        config |= {
            key: trained[key] for key in ("versions", "threads", "command") if key in trained
        }
        config["adds"] = [*trained.get("adds", []), add]
    write_json(run / RUN_CONFIG, config)
    manifest = {
        "format_version": RUN_FORMAT,
        "task": task,
        "parts": PARTS,
        "semid_version": semid.__version__,
    }
    write_json(run / MANIFEST, manifest)


RETRAIN = "retrain the run (`semid train ... --no-resume` into it replaces it)"


def read_run_config(run: str | os.PathLike) -> dict[str, Any]:
    """The run's ``config.json`` (spec, state, versions), checked to hold a spec."""
    path = Path(run) / RUN_CONFIG
    config = read_json(path, RETRAIN)
    if not isinstance(config, dict) or not isinstance(config.get("spec"), dict):
        raise SemidError(f"{path} has no task spec; {RETRAIN}")
    config["spec"].update(moved_data(config, Path(run)))
    return config


def items_added_since_training(run: Path, config: dict[str, Any]) -> int:
    """How many items the run's index holds beyond the ``trained_items`` its model was trained
    with (added by `semid index add`); 0 for a run that does not record them."""
    trained = config.get("state", {}).get("trained_items")
    index_config = run / PARTS["index"] / "config.json"
    if not isinstance(trained, int) or not index_config.is_file():
        return 0
    try:
        indexed = read_json(index_config, "retrain the run").get("num_items", trained)
    except SemidError:  # a damaged index holds no item to lose: the retrain replaces it
        return 0
    return max(0, int(indexed) - trained)


def moved_data(config: dict[str, Any], run: Path) -> dict[str, str]:
    """The spec's data paths (``dataset``, ``items``) that are gone but sit where they were
    relative to the run folder, which moved with them (a project folder renamed or copied
    whole), as their new paths. Their content is still checked against training's hash."""
    trained_at = config.get("run_path")
    here = run.resolve()
    if not isinstance(trained_at, str) or Path(trained_at) == here:
        return {}
    moved = {}
    for field in DATA_FIELDS:
        path = config["spec"].get(field)
        if not isinstance(path, str) or not os.path.isabs(path) or os.path.exists(path):
            continue  # a registered dataset's name, or a path that is still there
        candidate = os.path.normpath(here / os.path.relpath(path, trained_at))
        if os.path.exists(candidate):
            moved[field] = candidate
    return moved


def run_stamp(run_dir: Path) -> tuple[int, ...]:
    """Inode and modification time (ns) of each part a reader loads (the index and model folders,
    config.json, manifest.json; 0 when missing): a swapped or rewritten part changes them, and a
    metrics.json written by an evaluation does not."""
    return _identity(run_dir, (*PARTS.values(), RUN_CONFIG, MANIFEST))


def _identity(run: str | os.PathLike, names: Sequence[str]) -> tuple[int, ...]:
    """(inode, modification time in ns) of each of ``names`` in ``run``, (0, 0) for a missing one."""
    stamp: list[int] = []
    for name in names:
        try:
            info = (Path(run) / name).stat()
        except (FileNotFoundError, NotADirectoryError):  # no such run: load_run says so
            stamp += [0, 0]
        else:
            stamp += [info.st_ino, info.st_mtime_ns]
    return tuple(stamp)


LOAD_TRIES = 3  # reads of a run that changed meanwhile, before giving up


def load_run(run: str | os.PathLike, task: str | None = None) -> Run:
    """Load manifest, config, index and model of a run directory and check that they fit together;
    with ``task``, also that the run belongs to that task. A change that lands while the parts are
    read (a retrain's final write begun after the read began) gets them read again, also when the
    half-changed parts did not fit together."""
    path = Path(run)
    for _ in range(LOAD_TRIES):
        stamp = run_stamp(path)
        try:
            loaded = _load_parts(path, task)
        except SemidError:
            if run_stamp(path) != stamp:
                continue
            raise
        if run_stamp(path) == stamp:
            return loaded
    raise SemidError(f"{path} kept changing while it was read ({LOAD_TRIES} tries); try again "
                     "once the command writing it is done")  # fmt: skip


def _load_parts(path: Path, task: str | None) -> Run:
    """One read of a run's parts (see `load_run`)."""
    manifest = read_manifest(path)
    if task is not None and manifest["task"] != task:
        raise SemidError(f"{path} is a {manifest['task']} run, not a {task} run")
    config = read_run_config(path)
    ids = SemanticIDs.load(path / PARTS["index"])
    model = load_model(path / PARTS["model"])
    check_vocabulary(model, ids, str(path))
    return Run(path, manifest["task"], config, ids, model)


def check_vocabulary(model: nn.Module, ids: SemanticIDs, where: str = "the run") -> None:
    """Raise SemidError unless the model can emit (generators) or score (scorers) the index."""
    if hasattr(model, "codebook_sizes"):  # it writes IDs
        sizes = model.codebook_sizes
        if len(sizes) != ids.levels:
            raise SemidError(
                f"the model of {where} writes {len(sizes)}-level IDs but its index has {ids.levels} levels; "
                "train the model on this index"
            )
        lv = first_level_over(sizes, ids.codebook_sizes)
        if lv is not None:
            raise SemidError(
                f"the index of {where} uses {ids.codebook_sizes[lv]} codes at level {lv} but the model only knows "
                f"{sizes[lv]}; retrain on this index (or train with a larger --extra-codes before adding items)"
            )
    elif getattr(model.config, "num_items", 0) > len(ids):
        raise SemidError(
            f"the model of {where} scores {model.config.num_items} items but its index holds {len(ids)}; "
            "the index was replaced: retrain on it"
        )


def first_level_over(model_sizes: Sequence[int], index_sizes: Sequence[int]) -> int | None:
    """The first level at which an index uses more codes than a model knows, or None."""
    return next((lv for lv, (m, i) in enumerate(zip(model_sizes, index_sizes, strict=True))
                 if i > m), None)  # fmt: skip


METRICS_WAIT_SECONDS = 60  # a metrics write waits this long for another writer of the run


def model_stamp(run: str | os.PathLike) -> tuple[int, ...]:
    """The identity (inode, modification time) of the run's index and model folders: it changes
    with a retrain or an ``index add``, not with a write of ``metrics.json``."""
    return _identity(run, tuple(PARTS.values()))


def update_metrics(
    run: str | os.PathLike,
    split: str,
    metrics: dict[str, float],
    evaluated: tuple[int, ...] | None = None,
) -> dict[str, Any]:
    """Merge ``metrics`` under ``split`` into ``run/metrics.json`` (atomically, under the run's write
    lock, so two evaluations finishing together keep both); returns the whole file. Figures already
    under ``split`` for the same catalogue (``num_items``) stay unless replaced, so an evaluation at
    other cut-offs (``--k 10 1000``) keeps the earlier ``@100``; those of another catalogue (an
    ``index add`` since) go. ``evaluated``: the :func:`model_stamp` taken before loading the
    evaluated run; if the run changed since (a retrain or an ``index add`` meanwhile), the figures
    are of another model and are refused."""
    with write_lock(run, f"run {run}", METRICS_WAIT_SECONDS, "evaluate again once it is done"):
        if evaluated is not None and model_stamp(run) != evaluated:
            raise SemidError(
                f"{run} changed while it was evaluated (retrained, or items added); its figures "
                "were not saved: evaluate it again"
            )
        current = read_metrics(run)
        earlier = current.get(split, {})
        same_catalogue = "num_items" in metrics and earlier.get("num_items") == metrics["num_items"]
        current[split] = {**earlier, **metrics} if same_catalogue else metrics
        write_json(Path(run) / METRICS, current)
    return current


def read_metrics(run: str | os.PathLike) -> dict[str, Any]:
    """The run's ``metrics.json`` ({} when absent), checked to be an object of metrics by split."""
    path = Path(run) / METRICS
    current = read_json(path, "delete it and evaluate again") if path.is_file() else {}
    if not isinstance(current, dict):
        raise SemidError(
            f"{path} is not a JSON object of metrics by split; delete it and evaluate again"
        )
    return current


def command_line() -> str:
    """The command that started this process, for provenance (``python -m semid ...`` is recorded
    as the ``semid ...`` it stands for, not as ``__main__.py ...``)."""
    program = Path(sys.argv[0])
    name = program.parent.name if program.name == "__main__.py" else program.name
    return " ".join([name, *sys.argv[1:]])
