"""The task interface: every task builds an index, trains, evaluates, adds, and predicts.

A task owns its data kind and its protocol and nothing else: it composes the engine's one
indexing path (:mod:`semid.indexing`), one training path (:func:`semid.training.train_model`), one
search path (:mod:`semid.ranking`), one save format (:mod:`semid.saving`, :mod:`semid.runs`) and
registered models (:mod:`semid.models`). The CLI and the benchmarks call tasks; a new task is one
new module that subclasses :class:`Task` and registers itself here.
"""

from __future__ import annotations

import dataclasses
import importlib
import json
import numbers
import os
import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Sequence
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor

from semid.atomic import check_replaceable
from semid.configs import config_from_dict
from semid.defaults import DEFAULT_K
from semid.devices import check_cuda_device
from semid.distributed import is_launched, is_main_process, on_main_process
from semid.errors import SemidError
from semid.ids import INDEX_FILES, QUANTIZER_DIR
from semid.indexing import ADDED_TEXTS, add_lock, added_texts
from semid.json_values import as_json, is_integer, is_key
from semid.locking import write_lock
from semid.manifest import RUN_ENTRIES, clear_killed_writes, run_containing
from semid.metrics import cutoffs
from semid.models import is_generator
from semid.notes import tell
from semid.ranking import Ranker, Ranking, ranker_for
from semid.runs import (
    MANIFEST,
    PARTS,
    Run,
    items_added_since_training,
    load_run,
    read_manifest,
    read_run_config,
    training_index_remover,
)
from semid.tasks.data import resolve_dataset
from semid.wording import counted, did_you_mean

_TASKS: dict[str, Task] = {}
# built-in tasks: name -> the module whose import registers it
BUILTIN_TASKS = {
    "recommend": "semid.tasks.recommend",
    "retrieve": "semid.tasks.retrieve",
    "text2image": "semid.tasks.text2image",
}


@dataclass
class IndexSource:
    """Where the items of an index come from: a dataset, or embeddings with their keys."""

    dataset: str | None = None
    items: str | None = None  # item texts for an interactions file (item, text columns)
    # explicit column names by role (user, item, timestamp, text)
    columns: dict[str, str] | None = None
    missing_text: str = "error"  # interactions whose item has no text: "error" or "drop"
    min_interactions: int = 3  # users with fewer interactions are dropped
    embeddings: Path | None = None
    keys: Path | None = None
    interactions: Path | None = None  # user-item log for graph quantizers (with embeddings)
    encoder: str | None = None  # sentence-transformers folder for item texts (default: MiniLM)
    device: str = "cpu"  # where texts are embedded (a torch device string, already resolved)


@dataclass
class EvalOptions:
    """Search-time settings of `Task.evaluate` (nothing here changes what was built)."""

    split: str = "test"
    ks: Sequence[int] = (5, 10)
    num_beams: int | None = None  # None: the run's
    batch_size: int = 256
    device: str = "cpu"
    cold_share: float = 0.0  # recommend: share of the top-k for items added after training
    cold_prefix: int = 1
    keep_seen: bool = False  # recommend: also rank items the user already interacted with
    item_mix: float | None = None  # weight of a generator's item or image head (None: the run's)
    max_users: int | None = None  # recommend: an evenly spaced subset of the split's users
    max_queries: int | None = None  # retrieve, text2image: an evenly spaced subset of test queries

    def __post_init__(self) -> None:
        """Library callers get the checks the command line makes (`semid eval`'s flags)."""
        if self.split not in ("valid", "test"):  # as `semid eval --split`
            raise SemidError(f"split must be 'valid' or 'test', got {self.split!r}")
        self.ks = cutoffs(self.ks)
        for name in ("batch_size", "num_beams", "max_users", "max_queries"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < 1
            ):
                raise SemidError(f"{name} must be an integer >= 1, got {value!r}")
        self.device = resolve_device(str(self.device))


def check_recommend_only_options(run: Run, options: EvalOptions, kind: str) -> None:
    """SemidError naming ``--cold-share``, ``--keep-seen`` or ``--users`` when given for a run of
    another task (a ``kind`` run), which would ignore it and save its metrics under its name."""
    flags = [flag for flag, on in (("--cold-share", options.cold_share > 0),
                                   ("--keep-seen", options.keep_seen),
                                   ("--cold-prefix", options.cold_prefix != 1),
                                   ("--users", options.max_users is not None)) if on]  # fmt: skip
    if flags:
        raise SemidError(f"{flags[0]} is for recommendation runs; {run.path} is a {kind} run")


def subset_positions(total: int, most: int | None) -> Tensor:
    """Positions (at most ``most``, all when None) spread evenly over ``range(total)``, in order:
    the subset of ``--users N`` and ``--queries N``, the same on every call. Spaced in floats, as
    the recommendation task's validation subset always was (the users it validates on, and so its
    early stopping, stay as they were); the PromptDSI cache's ``evenly_spaced`` samples rows in
    integers, exact past 2**24."""
    if most is None or most >= total:
        return torch.arange(total)
    return torch.linspace(0, total - 1, most).long()


def added_summary(ids: Any, keys: list[str], codes: Tensor | None = None) -> dict:
    """What `index add` of items or images returns: how many ``keys`` it added, the index's size
    (``ids``, the grown index) and the added keys with their ``codes`` (none: an empty (0, L))."""
    codes = ids.codes[:0] if codes is None else codes
    return {"added": len(keys), "index_size": len(ids), "keys": keys, "codes": codes}


def rows_to_add(keys: Sequence[str], is_indexed: Callable[[str], bool], noun: str, source: str,
                skip_indexed: bool, fix: str) -> list[int]:  # fmt: skip
    """Positions of the ``keys`` that `semid index add` adds from ``source``: with
    ``skip_indexed``, those not indexed yet, telling how many of its ``noun``s were left out (none
    may be left); without it, all of them, or SemidError when some are indexed, naming the flag
    and ``fix`` (what else to do: "give new keys")."""
    if skip_indexed:
        rows = [i for i, key in enumerate(keys) if not is_indexed(key)]
        if len(rows) < len(keys):
            tell(f"left out {counted(len(keys) - len(rows), noun)} of {source} already indexed")
        return rows
    clash = [key for key in keys if is_indexed(key)]
    if not clash:
        return list(range(len(keys)))
    if len(clash) == len(keys):
        raise SemidError(
            f"every {noun} of {source} is already indexed (e.g. {clash[0]!r}); {fix}, or pass "
            f"--skip-indexed to leave indexed {noun}s out without an error"
        )
    new = len(keys) - len(clash)
    raise SemidError(
        f"{len(clash):,} of the {counted(len(keys), noun)} of {source} "
        f"{'is' if len(clash) == 1 else 'are'} already indexed (e.g. {clash[0]!r}); pass "
        f"--skip-indexed to add only the {counted(new, 'new one')}, or {fix}"
    )


def check_index_out(out: Path) -> None:
    """Refuse an ``--out`` that holds something other than an index: the build replaces the whole
    folder, so a run or the user's own files in it would be lost. An empty folder, an index (it holds
    ``codes.safetensors``) or what is left of a damaged one (index files only) may be replaced,
    unless it is a trained run's own index, which its model was trained on."""
    run = out.resolve().parent
    if (run / MANIFEST).is_file() and out.resolve() == run / PARTS["index"]:
        raise SemidError(f"--out {out} is the index of the run {run}, which its model was "
                         "trained on; build the new index elsewhere and train a run on it")  # fmt: skip
    if (out / MANIFEST).is_file():
        raise SemidError(f"--out {out} holds a semid run, not an index; choose another --out "
                         "(an index folder, or a new one)")  # fmt: skip
    check_replaceable(out, {*INDEX_FILES, QUANTIZER_DIR}, "index", marker="codes.safetensors")


class Task(ABC):
    """One kind of retrieval: its data, protocol, and the five operations the CLI exposes."""

    name: ClassVar[str]
    spec_class: ClassVar[type]  # the typed spec saved in a run's config.json
    entry: ClassVar[str] = "item"  # what its index holds, in messages: item, document, image
    # `semid index add`: the flag that gives what is added, and the command's other flags that
    # reach this task's `add` (as keyword arguments without the dashes); the rest are refused
    add_source: ClassVar[str] = "--items"
    add_options: ClassVar[tuple[str, ...]] = ()

    def build_index(self, source: IndexSource, quantizer: str, out: Path, collisions: str = "extra-level",
                    seed: int = 0, **options: Any) -> tuple[Any, list[str]]:  # fmt: skip
        """Build and save an ID index at ``out`` (one writer at a time); returns it and lines worth
        telling the user."""
        source = with_absolute_data(source)
        with write_lock(out, f"index {out}"):
            check_index_out(Path(out))
            return self._build_index(source, quantizer, Path(out), collisions, seed, **options)

    def train(self, spec: Any, out: Path, index: Path | None = None, resume: bool = True,
              device: str = "auto") -> dict:  # fmt: skip
        """Train a run into ``out`` (resumable; one writer at a time); returns a summary (steps,
        seconds, valid metrics). A folder holding another task's or model's run is refused before
        anything in it changes; so is a ``device`` that `resolve_device` refuses."""
        device = resolve_device(device)  # "gpu", or cuda without a GPU, never trains on the CPU
        out, spec = Path(out), with_absolute_data(spec)
        if index is not None:
            check_out_beside_index(out, Path(index))
        check_out_of_runs(out)
        with ExitStack() as held:

            def claim() -> None:  # rank 0 of a launched job writes; the other ranks train beside it
                held.enter_context(write_lock(out, f"run {out}"))
                self._check_owner(out, spec, resume)

            on_main_process(claim, device)
            if index is not None and is_main_process():  # the copy of --index it learns from
                held.callback(training_index_remover(out, index))
            return self._train(spec, out, index, resume, device)

    def add(self, run_path: Path, source: Path, **options: Any) -> dict:
        """Add items (documents, images) to a run without retraining; a concurrent writer of the
        run is waited for (up to ``ADD_WAIT_SECONDS``)."""
        if not isinstance(source, str | os.PathLike):
            raise SemidError(f"source must be the path of the items' file or folder, got "
                             f"{type(source).__name__}; e.g. add(run, 'new_items.jsonl')")  # fmt: skip
        with add_lock(Path(run_path), f"run {run_path}"):
            return self._add(Path(run_path), Path(source), **options)

    def _check_owner(self, out: Path, spec: Any, resume: bool = True) -> None:
        """SemidError unless ``out`` is new, empty, or a run of this task and model that training
        may replace; a run whose config is lost is replaced only when not resuming (whatever its
        model), and not when it holds texts of items added to it."""
        if out.is_dir():
            clear_killed_writes(out)  # a first training's killed final write left temporaries
        if not (out / MANIFEST).is_file():
            strangers = (
                sorted(p.name for p in out.iterdir() if p.name not in RUN_ENTRIES)
                if out.is_dir()
                else []
            )
            if strangers:
                raise SemidError(f"--out {out} is not empty and not a semid run (it holds {strangers[0]}); "
                                 "choose a new or empty folder")  # fmt: skip
            return
        manifest = read_manifest(out)
        if manifest["task"] != self.name:
            raise SemidError(
                f"{out} holds a {manifest['task']} run; choose another --out for this {self.name} run"
            )
        try:
            config = read_run_config(out)
        except SemidError:
            # nothing to resume from it: a new run replaces it, unless items were added to it
            if not resume and not (out / PARTS["index"] / ADDED_TEXTS).is_file():
                return
            raise
        model = config["spec"].get("model")
        if model != spec.model:
            raise SemidError(
                f"{out} holds a {model} run; choose another --out (or delete it) to train {spec.model}"
            )
        added = items_added_since_training(out, config)
        if added:
            raise SemidError(
                f"{out} holds {counted(added, self.entry)} added with `semid index add` since it was "
                "trained, which training it again would drop; train into another --out (or delete "
                "the run to replace it)"
            )

    @abstractmethod
    def _build_index(self, source: IndexSource, quantizer: str, out: Path, collisions: str, seed: int,
                     **options: Any) -> tuple[Any, list[str]]:  # fmt: skip
        """Build and save the index (called under the write lock)."""

    @abstractmethod
    def _train(self, spec: Any, out: Path, index: Path | None, resume: bool, device: str) -> dict:
        """Train the run (called under the write lock)."""

    def evaluate(
        self, run: Run | str | os.PathLike, options: EvalOptions | None = None
    ) -> dict[str, float]:
        """Metrics of a run (loaded, or its folder) on a split (``options``: the defaults of
        `EvalOptions`, the test split)."""
        if options is not None and not isinstance(options, EvalOptions):
            raise SemidError(f"options must be an EvalOptions, got {type(options).__name__}; write "
                             "e.g. EvalOptions(split='valid', ks=(5, 10))")  # fmt: skip
        if not isinstance(run, Run):
            run = load_run(Path(run), self.name)
        return self._evaluate(run, EvalOptions() if options is None else options)

    @abstractmethod
    def _evaluate(self, run: Run, options: EvalOptions) -> dict[str, float]:
        """Metrics of a loaded run on a split."""

    @abstractmethod
    def _add(self, run_path: Path, source: Path, **options: Any) -> dict:
        """Add items to the run (called under the write lock); returns a summary."""

    @abstractmethod
    def predictor(self, run: Run, device: str = "cpu") -> Predictor:
        """A predictor over a loaded run (see :class:`Predictor`)."""

    def spec_of(self, run: Run) -> Any:
        """The run's spec as this task's typed dataclass."""
        return config_from_dict(self.spec_class, run.spec, f"{run.path}/config.json")


def with_absolute_data(spec: Any) -> Any:
    """A spec or `IndexSource` whose data paths (``dataset``, ``items``) are absolute, as the CLI
    gives them: a run or index made with a relative one would find its data from one folder only."""
    paths = {name: resolve_dataset(str(getattr(spec, name)), f"--{name}") for name in ("dataset", "items")
             if isinstance(getattr(spec, name, None), str | os.PathLike)}  # fmt: skip
    return dataclasses.replace(spec, **paths) if paths else spec


def check_out_beside_index(out: Path, index: Path) -> None:
    """SemidError if ``out`` is the ``--index`` folder or inside it: the run would be written into
    the index it copies (a copy of a folder into itself never ends)."""
    inside, folder = out.resolve(), index.resolve()
    if inside == folder or folder in inside.parents:
        raise SemidError(f"--out {out} is inside --index {index}; choose an --out outside the index "
                         "folder (the run keeps its own copy of the index)")  # fmt: skip


def check_out_of_runs(out: Path) -> None:
    """SemidError if ``out`` lies inside another run's folder: a run nested in a run would be
    lost when the outer one is retrained or moved."""
    run = run_containing(out)
    if run is not None:
        raise SemidError(
            f"--out {out} is inside the run {run}; choose an --out outside every run folder"
        )


# input kind -> the field of serve's /predict body that lists inputs of that kind
REQUEST_FIELDS = {"user": "users", "history": "histories", "query": "queries"}
# any input may carry its caller's id (a string or an integer), echoed in its answer
INPUT_ID = "id"


class Predictor(ABC):
    """Answers queries with a loaded run: top-k keys, scores and semantic IDs per input."""

    task: ClassVar[str]
    # the input kinds the run answers ("user", "history", "query"), and what it does for them
    accepts: ClassVar[tuple[str, ...]] = ("query",)
    input_options: ClassVar[tuple[str, ...]] = ()  # further fields an input may carry ("split")
    serves: ClassVar[str] = "retrieves documents for queries"

    def __init__(self, run: Run, device: str = "cpu") -> None:
        self.run, self.device = run, device
        self.run.model.to(device)
        self._rankers: dict[int | None, Ranker] = {}
        self._texts: dict[str, str] | None = None  # item_texts', read once
        # held while a lazily read cache fills, so that server threads asking at once read it once
        self._reading = threading.RLock()

    def ranker(self, num_beams: int | None) -> Ranker:
        """The run's ranker for a beam width (None: the run's), built once (its trie) and reused."""
        if num_beams not in self._rankers:
            self._rankers[num_beams] = self.make_ranker(num_beams).to(self.device)
        return self._rankers[num_beams]

    @abstractmethod
    def make_ranker(self, num_beams: int | None) -> Ranker:
        """A new ranker over the run's index and model with this beam width."""

    @abstractmethod
    def check_input(self, item: dict[str, Any]) -> dict[str, Any]:
        """One input, validated and normalised; SemidError (one line) if it cannot be answered."""

    @abstractmethod
    def rank(self, inputs: list[dict[str, Any]], k: int, num_beams: int | None) -> Ranking:
        """The ranking of a batch of checked inputs."""

    def predict(
        self, inputs: list[dict[str, Any]], k: int | None = None, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """One answer per input, best first: ``{"input", "keys", "scores", "ids"}``, and a one-line
        ``"note"`` when the input was not answered as given (`rank_with_notes`). A beam wider
        than the catalogue is searched as the catalogue size: a beam per ID already keeps every ID,
        and a wider one would only allocate (and cache a ranker for) empty beams. ``k`` None:
        ``DEFAULT_K``, or the catalogue's size when it is smaller."""
        if isinstance(inputs, dict | str) or not isinstance(inputs, Iterable):
            raise SemidError(f"inputs must be a list of inputs, got {type(inputs).__name__}; e.g. "
                             '[{"user": "196"}] or [{"query": "..."}]')  # fmt: skip
        inputs = list(inputs)  # a generator too: read once, answered in order
        k = self._asked_k(k, num_beams)
        return self._answers(inputs, [self.check_input(item) for item in inputs], k, num_beams)

    def resolve(self, checked: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Checked inputs in a form that another copy of the run answers (`predict_resolved`)
        without reading the run's data files: a model process gets these, so only the server's
        copy reads the data. By default the inputs themselves (a query needs no data)."""
        return checked

    def predict_resolved(
        self, resolved: list[dict[str, Any]], k: int | None = None, num_beams: int | None = None
    ) -> list[dict[str, Any]]:
        """``predict`` of inputs from another copy's `resolve`; each answer's ``"input"`` is the
        resolved input."""
        k = self._asked_k(k, num_beams)
        return self._answers(resolved, [self.check_resolved(x) for x in resolved], k, num_beams)

    def check_resolved(self, item: dict[str, Any]) -> dict[str, Any]:
        """One input of `resolve`, checked against this copy of the run (by default as an input)."""
        return self.check_input(item)

    def _answers(self, inputs: list[Any], checked: list[dict[str, Any]], k: int,
                 num_beams: int | None) -> list[dict[str, Any]]:  # fmt: skip
        if num_beams is not None:
            num_beams = min(num_beams, self.max_k())
        if not checked:
            return []
        ranking, said = self.rank_with_notes(checked, k, num_beams)
        answers = answers_of(inputs, self.run.ids.keys, ranking)
        for answer, note in zip(answers, said, strict=True):
            if note is not None:
                answer["note"] = note
        return answers

    def rank_with_notes(
        self, inputs: list[dict[str, Any]], k: int, num_beams: int | None
    ) -> tuple[Ranking, list[str | None]]:
        """`rank`, and per input a one-line note on how it was read, put in its answer as
        ``"note"`` (for example, history items the model cannot read); None: no note."""
        return self.rank(inputs, k, num_beams), [None] * len(inputs)

    def refuse_other_inputs(self, item: Any) -> None:
        """SemidError if ``item`` is an input of a kind the run does not take (``"query"`` for a
        recommender, ``"user"`` or ``"history"`` for a retriever), saying what the run serves and
        what to send instead, or carries a field no input has (a typo such as ``"splt"``)."""
        if not isinstance(item, dict):
            return
        asked = [f for f in REQUEST_FIELDS if f not in self.accepts and f in item]
        if asked:
            send = (
                'send {"users": [...]} or {"histories": [[...]]} '
                "(predict: --user, --users, --history or --histories)"
                if "user" in self.accepts
                else 'send {"queries": ["..."]} (predict: --query or --queries)'
            )
            raise SemidError(f"this run {self.serves}, not for a {asked[0]}; {send}")
        unknown = sorted(
            str(f) for f in item if f not in {*REQUEST_FIELDS, *self.input_options, INPUT_ID}
        )
        if unknown:
            takes = " or ".join(f'"{f}"' for f in self.accepts)
            options = "".join(f', optionally with "{f}"' for f in (*self.input_options, INPUT_ID))
            near = did_you_mean(unknown[0], (*self.accepts, *self.input_options, INPUT_ID))
            raise SemidError(
                f"unknown field {unknown[0]!r}{near} in an input; an input holds {takes}{options}"
            )
        key = item.get(INPUT_ID)
        if INPUT_ID in item and not is_key(key):
            raise SemidError(f'an input\'s "{INPUT_ID}" must be a string or an integer, got '
                             f"{json.dumps(key)[:40]}")  # fmt: skip

    def read_data(self) -> None:
        """Read what answering needs besides the run (a recommender's interactions) now, so that
        the first request does not wait for it; nothing by default."""
        return

    def unsearched_note(self) -> str | None:
        """What of the run's own data its answers leave out, for a note before answering (a
        retrieval run's documents held out for `semid index add`); None by default."""
        return None

    def item_texts(self, keys: Sequence[str]) -> list[str] | None:
        """Each key's text, for people reading answers ("" for a key without one): the run's data's
        (`data_texts`) and those of items added by text since (read once); None when it has none."""
        if self._texts is None:
            with self._reading:
                if self._texts is None:
                    self._texts = {**self.data_texts(), **added_texts(self.run.index_path)}
        if not self._texts:
            return None
        return [self._texts.get(k, "") for k in keys]

    def data_texts(self) -> dict[str, str]:
        """Each item's text in the run's data, by key; none by default."""
        return {}

    def _asked_k(self, k: int | None, num_beams: int | None) -> int:
        """``k``, checked (`check_k`), or `default_k` when None."""
        k = self.default_k() if k is None else k
        self.check_k(k, num_beams)
        return k

    def default_k(self) -> int:
        """The number of answers when none is asked for: ``DEFAULT_K``, at most the catalogue."""
        return min(DEFAULT_K, self.max_k())

    def check_k(
        self, k: int, num_beams: int | None, names: tuple[str, str] = ("k", "num_beams")
    ) -> None:
        """SemidError unless 1 <= k <= catalogue size and num_beams (if given) >= k; ``names``:
        what the caller calls the two (a command's ``--k`` and ``--num-beams``)."""
        for name, value in zip(names, (k, num_beams), strict=True):
            if value is not None and not is_integer(value):
                raise SemidError(f"{name} must be a whole number, got {value!r}")
        if not 1 <= k <= self.max_k():
            raise SemidError(
                f"{names[0]} must be in [1, {self.max_k()}] (the items it can rank), got {k}"
            )
        if num_beams is not None and num_beams < k:
            raise SemidError(f"{names[1]} must be >= {names[0]} ({k}), got {num_beams}")

    def max_k(self) -> int:
        """The catalogue size: the largest k a query can ask for."""
        return len(self.run.ids)

    def info(self) -> dict[str, Any]:
        """What is being served: task, model, index size, search defaults, versions."""
        return {
            "task": self.task,
            # the /predict body fields this run answers ("inputs" takes objects of those kinds)
            "inputs": [*(REQUEST_FIELDS[kind] for kind in self.accepts), "inputs"],
            "run": os.path.abspath(self.run.path),  # a client is elsewhere: not as typed
            "model": self.run.model.name,
            "index_size": len(self.run.ids),
            "levels": self.run.ids.levels,
            # a scorer (pop, sasrec) ranks every item: it searches no beams, and ignores any asked for
            "num_beams": self.run.spec.get("num_beams") if is_generator(self.run.model) else None,
            "device": str(self.device),
            "versions": self.run.config.get("versions", {}),
        }


class QueryPredictor(Predictor):
    """A predictor of query texts (retrieval, text-to-image): checks ``{"query": TEXT}`` inputs and
    ranks by beam search over the run's IDs, mixed with the model's item head when it has one."""

    @property
    @abstractmethod
    def default_num_beams(self) -> int:
        """Beams when a call gives none: the run's setting."""

    def check_input(self, item: dict[str, Any]) -> dict[str, Any]:
        """A non-empty query text."""
        self.refuse_other_inputs(item)
        return query_input(item)

    def make_ranker(self, num_beams: int | None, item_mix: float | None = None) -> Ranker:
        """Beam search over the run's IDs, mixed with the item head (and lexical scores) as the
        model says (``item_mix``: the head's weight instead of the model's; 0: no head)."""
        beams = num_beams or self.default_num_beams
        return ranker_for(self.run.model, self.run.ids, beams, item_mix=item_mix)

    def mixed_ranker(self, num_beams: int | None, item_mix: float | None) -> Ranker:
        """The cached ranker for ``num_beams``, or, with ``item_mix``, a new one on the device."""
        if item_mix is None:
            return self.ranker(num_beams)
        return self.make_ranker(num_beams, item_mix).to(self.device)


def with_input_id(item: dict[str, Any], checked: dict[str, Any]) -> dict[str, Any]:
    """The checked input with the caller's ``"id"`` of ``item`` put back, when it has one."""
    return {**checked, INPUT_ID: item[INPUT_ID]} if INPUT_ID in item else checked


def query_input(item: Any) -> dict[str, Any]:
    """``{"query": TEXT}`` of an input with a non-empty query text that is Unicode text; SemidError
    (one line) otherwise."""
    query = item.get("query") if isinstance(item, dict) else None
    if query is not None and not isinstance(query, str):
        raise SemidError(f'"query" must be a text (a JSON string), got {as_json(query)}')
    if not isinstance(query, str) or not query.strip():
        raise SemidError('each input needs a non-empty "query" text')
    try:
        query.encode("utf-8")
    except UnicodeEncodeError as e:
        code = ord(query[e.start])
        if 0xDC80 <= code <= 0xDCFF:  # Python's stand-in for a command-line byte that is not UTF-8
            what = f"the byte 0x{code - 0xDC00:02x}, which is not UTF-8"
        else:  # JSON's "\ud83d": half of a UTF-16 pair
            what = f"an unpaired surrogate escape (\\u{code:04x}), half of a character"
        raise SemidError(f'the "query" holds {what}; send UTF-8 text') from None
    return {"query": query}


def answers_of(inputs: list[Any], keys: list[str], ranking: Ranking) -> list[dict[str, Any]]:
    """The JSON answer of each input (row i of the ranking answers ``inputs[i]``): keys, scores
    and IDs of its valid entries. The tensors become lists once per batch, not once per row."""
    answers = []
    for item, rows, scores, codes in zip(inputs, ranking.rows.tolist(), ranking.scores.tolist(),
                                         ranking.codes.tolist(), strict=True):  # fmt: skip
        real = [j for j, r in enumerate(rows) if r >= 0]
        answers.append({
            "input": item,
            "keys": [keys[rows[j]] for j in real],
            "scores": [round(scores[j], 6) for j in real],
            "ids": [codes[j] for j in real],
        })  # fmt: skip
    return answers


def register_task(task: Task) -> Task:
    """Make ``task`` available by its name to the CLI, `load_predictor` and the benchmarks."""
    _TASKS[task.name] = task
    return task


def get_task(name: str) -> Task:
    """The registered task called ``name`` (a built-in task's module is imported now)."""
    if name not in _TASKS and name in BUILTIN_TASKS:
        importlib.import_module(BUILTIN_TASKS[name])  # registers it
    if name not in _TASKS:
        known = sorted(set(_TASKS) | set(BUILTIN_TASKS))
        raise SemidError(f"unknown task {name!r}; known: {', '.join(known)}")
    return _TASKS[name]


def task_of_run(run_path: str | Path) -> Task:
    """The task that wrote a run directory (from its manifest)."""
    return get_task(read_manifest(run_path)["task"])


def load_predictor(run_path: str | Path, device: str = "cpu") -> Predictor:
    """Load a run once and return its task's predictor on ``device``."""
    device = resolve_device(device)
    run = load_run(run_path)
    return get_task(run.task).predictor(run, device)


def resolve_device(device: str) -> str:
    """``cpu``, ``cuda``, ``cuda:N`` or ``auto`` (cuda when available) -> a torch device string;
    in a launched job ``cuda:N`` is ``cuda``, the process's own GPU."""
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cpu":
        return device
    if device == "cuda" or (device.startswith("cuda:") and device[5:].isdigit()):
        check_cuda_device(device, f"--device {device}", "--device cpu")
        # a launched job's processes each use their own GPU (the launcher's LOCAL_RANK)
        return "cuda" if is_launched() else device
    raise SemidError(f"--device must be cpu, cuda, cuda:N or auto, got {device!r}")


def move(batch: Any, device: str | torch.device) -> Any:
    """A batch (tensor or dict of tensors) on ``device``."""
    if isinstance(batch, torch.Tensor):
        return batch.to(device)
    if isinstance(batch, dict):
        return {k: move(v, device) for k, v in batch.items()}
    return batch
