"""Sequential recommendation: the next item a user interacts with, on a leave-one-out split.

Protocol (docs/protocols.md): each user's events ordered by time; the last is the test target, the
second to last the valid target, the rest train; histories truncated to ``max_history`` items; full
ranking over every indexed item except those the user interacted with before the target
(RecBole's full-sort convention; ``keep_seen`` ranks everything); Recall@k and NDCG@k, and the
share of returned IDs outside the index (the invalid-ID rate; 0 under the trie). Generators take
their top-k from trie-constrained beam search, scorers (pop, SASRec) from full scoring: both through
:func:`semid.ranking.ranker_for`. Semantic IDs only ever see training interactions.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import torch
from torch import Tensor

from semid import notes
from semid.atomic import check_output_folder
from semid.data.logs import RecDataset
from semid.data.sequences import (
    CodeCollator,
    RecData,
    SequenceDataset,
    TargetDataset,
    gather_history,
    keep_indexed_items,
    prepare_data,
    slice_users,
)
from semid.data.splits import PAD
from semid.distributed import is_main_process
from semid.errors import SemidError
from semid.hybrid import Candidates, HybridRanker, choose_mix
from semid.ids import SemanticIDs, load_quantizer
from semid.indexing import add_items
from semid.metrics import compute_metrics
from semid.models import is_generator, save_model
from semid.notes import tell
from semid.progress import batch_starts
from semid.ranking import Ranker, Ranking, ranker_for
from semid.runs import Run, copy_index, load_run, replacing_run, write_run
from semid.tasks.base import EvalOptions, IndexSource, Predictor, Task, move, register_task
from semid.tasks.data import (
    DataChanged,
    check_fingerprint,
    data_stamp,
    fingerprint,
    trained_on,
)
from semid.tasks.items import (
    INTERACTION_VECTORS,
    build_item_index,
    dataset_texts,
    item_texts_of,
    new_model,
    read_new_items,
    recommendation_dataset,
    source_dataset,
)
from semid.tasks.specs import RecommendSpec
from semid.training import train_model
from semid.wording import counted, example_key

SPLITS = ("valid", "test")
# the spec's fields, besides the data and the IDs, that shape the training examples
SPLIT_FIELDS = ("columns", "missing_text", "min_interactions", "users")


class RecommendTask(Task):
    """Recommenders: index items, train on a leave-one-out split, rank unseen items per user."""

    name = "recommend"
    spec_class = RecommendSpec

    def _build_index(
        self, source: IndexSource, quantizer: str, out: Path, collisions: str, seed: int
    ) -> tuple[SemanticIDs, list[str]]:
        """Semantic IDs of a dataset's items (texts embedded with MiniLM) or of given embeddings."""
        return build_item_index(source, quantizer, out, collisions, seed)

    def load_data(self, spec: RecommendSpec, ids: SemanticIDs, run: Run | None = None) -> RecData:
        """The spec's dataset split, items mapped to index rows (optionally only the first users);
        for a trained ``run``, after checking that its data files did not change."""
        return self.load_split(spec, ids, run)[1]

    def load_split(
        self, spec: RecommendSpec, ids: SemanticIDs, run: Run | None = None
    ) -> tuple[RecDataset, RecData]:
        """The spec's dataset (as loaded, with its notes) and its split, as `load_data`."""
        if run is not None:
            check_fingerprint(run, spec.dataset, spec.items)
        dataset = source_dataset(spec)
        if spec.users is not None:
            dataset = slice_users(dataset, spec.users)
        return dataset, prepare_data(dataset, ids, spec.max_history)

    def _train(self, spec: RecommendSpec, out: Path, index: Path | None = None, resume: bool = True,
               device: str = "auto") -> dict:  # fmt: skip
        """Copy the index into ``out``, train, save ``out/model`` and the run files; returns a summary."""
        check_output_folder(out)
        if index is None:
            raise SemidError("a recommender needs --index (build one with `semid index build`)")
        ids = SemanticIDs.load(index)
        dataset, data = self.load_split(spec, ids)
        if is_main_process():
            lines = [*dataset.notes, describe_data(dataset, data)]
            if (
                ids.metadata.get("item_vectors") == INTERACTION_VECTORS
                and dataset.item_texts is not None
            ):
                lines.append(f"note: {index} was built without item texts (item vectors from the "
                             "interactions): `semid index add` will take new items' vectors, not "
                             "their texts; build the index with --items too to add items by text")  # fmt: skip
            num_valid = len(data.positions("valid"))
            if spec.eval_users is not None and spec.eval_users < num_valid:
                lines.append(f"validating on {spec.eval_users:,} of {counted(num_valid, 'valid user')} "
                             "during training (--eval-users)")  # fmt: skip
            tell("\n".join(lines))
        state: dict[str, Any] = {
            "trained_items": len(ids),
            "data_sha256": fingerprint(spec.dataset, spec.items),
        }
        torch.manual_seed(spec.train.seed)
        model = new_model(spec, ids)
        started = time.perf_counter()
        summary: dict[str, Any] = {"steps": 0, "epochs": 0, "best_step": 0}
        # statistics of the training data, fitted before any gradient step (MMGRec's cooccur,
        # most-popular's counts)
        if hasattr(model, "fit_train_sequences_"):
            model.fit_train_sequences_(*data.train_sequences())
        if getattr(model, "trainable", True):
            stamp = trained_on(state["data_sha256"], spec.dataset, ids.sha256(), spec, SPLIT_FIELDS)
            result = self._fit(model, spec, ids, data, out, resume, device, stamp)
            started -= result.resumed_after_s  # train_seconds counts the earlier processes too
            summary = {"steps": result.steps, "epochs": result.epochs,
                       "best_step": result.best_step, "valid": result.best_metrics}  # fmt: skip
            if is_generator(model) and model.has_item_head():  # the mixing weight, on valid
                by_weight, at_best = tune_item_mix(model, ids, data, spec)
                summary["item_mix_valid_ndcg@10"] = by_weight
                summary["item_mix"] = model.config.item_mix
                # the valid figures of the saved model: at the chosen weight, not training's
                summary["valid"] = {**result.best_metrics, **at_best}
        summary["train_seconds"] = round(time.perf_counter() - started, 2)
        if is_main_process():
            with replacing_run(out):
                copy_index(index, out)
                save_model(model, out / "model")
                # rows added later by `semid index add` (beyond trained_items) are cold-start items
                write_run(out, self.name, spec, {**state, "result": summary})
        return summary

    def _fit(self, model: Any, spec: RecommendSpec, ids: SemanticIDs, data: RecData, out: Path,
             resume: bool, device: str, stamp: dict[str, Any]):  # fmt: skip
        if getattr(model, "train_format", "target") == "sequence":
            dataset = SequenceDataset(data, training_window(model, spec.max_history))
        else:
            dataset = TargetDataset(data, data.positions("train"), spec.max_history)
        codes = ids.codes if is_generator(model) else None
        if is_generator(model):
            model.use_trie(ids.trie(model.codebook_sizes))

        def validate(m: Any) -> dict[str, float]:
            device = str(next(m.parameters()).device)  # the trainer's device
            ranker = ranker_for(m, ids, spec.num_beams)
            ranker = ranker.to(device)
            return evaluate_ranker(ranker, data, "valid", codes=codes, max_len=spec.max_history,
                                   max_users=spec.eval_users, device=device)  # fmt: skip

        collate = CodeCollator(dataset.collate, codes)
        return train_model(
            model, dataset, spec.train, out / "train", validate, collate, resume, device, stamp
        )

    def evaluate(self, run: Run, options: EvalOptions) -> dict[str, float]:
        """Full-ranking Recall/NDCG@k of a run on its valid or test split."""
        spec = self.spec_of(run)
        data = self.load_data(spec, run.ids, run)
        ranker = self.ranker(run, spec, options)
        codes = run.ids.codes if is_generator(run.model) else None
        return evaluate_ranker(
            ranker, data, options.split, options.ks, codes, spec.max_history, options.batch_size,
            options.max_users, exclude_seen=not options.keep_seen, device=options.device,
        )  # fmt: skip

    def ranker(self, run: Run, spec: RecommendSpec, options: EvalOptions) -> Ranker:
        """The run's ranker with the options' search-time settings, on the options' device."""
        run.model.to(options.device)
        generator_options = {}
        if is_generator(run.model):
            generator_options = {"trained_items": run.state.get("trained_items"), "item_mix": options.item_mix,
                    "cold_share": options.cold_share, "cold_prefix": options.cold_prefix}  # fmt: skip
        elif options.cold_share or options.item_mix is not None:
            raise SemidError(
                "--cold-share and --item-mix need a generator; this run's model scores items directly"
            )
        ranker = ranker_for(
            run.model, run.ids, options.num_beams or spec.num_beams, **generator_options
        )
        return ranker.to(options.device)

    def _add(self, run_path: Path, source: Path, keys: Path | None = None,
            encoder: str | None = None, device: str = "cpu", **options: Any) -> dict:  # fmt: skip
        """New items (texts as in ``read_new_items``, embedded on ``device``, or embeddings + keys)
        get IDs from the saved quantizer; the model can recommend them at once (no retraining)."""
        run = load_run(run_path, self.name)
        columns = self.spec_of(run).columns
        if run.ids.metadata.get("item_vectors") == INTERACTION_VECTORS and keys is None:
            raise SemidError(
                f"{run_path}'s index was built without item texts (its item vectors come from the "
                f"interactions, which new items have none of yet); give them "
                f"{load_quantizer(run.index_path).dim}-d vectors (--items new.npy --keys new.txt), or "
                "build the index and train the run with --items FILE to add items by text"
            )
        new_keys, x, texts = read_new_items(
            source, keys, encoder, run.ids.metadata.get("encoder"), columns, run.ids, device
        )
        ids, codes = add_items(run.index_path, new_keys, x, run.model, texts)
        return {"added": len(new_keys), "index_size": len(ids), "keys": new_keys, "codes": codes}

    def predictor(self, run: Run, device: str = "cpu") -> RecommendPredictor:
        """Top-k items for known users or for given histories."""
        return RecommendPredictor(run, device)


@dataclass
class UserHistories:
    """The users a predictor answers for: their split (items as index rows) and keys; ``live``
    when they come from the data files as they are now rather than as trained on."""

    data: RecData
    user_keys: list[str]
    live: bool = False
    left_out: frozenset[str] = frozenset()  # users loading dropped for too few events
    user_of_key: dict[str, int] = field(init=False)
    # events per user id, counted once: `events` is asked for every input of a changed log
    event_counts: list[int] = field(init=False)

    def __post_init__(self) -> None:
        self.user_of_key = {k: i for i, k in enumerate(self.user_keys)}
        self.event_counts = self.data.split.ptr.diff().tolist()

    def events(self, user: str) -> int:
        """How many events of ``user`` (a key) the data holds on items of the index."""
        return self.event_counts[self.user_of_key[user]]

    def answerable(self) -> list[str]:
        """The keys of the users with events on items of the index, in id order."""
        return [k for k, n in zip(self.user_keys, self.event_counts, strict=True) if n > 0]


def current_histories(spec: RecommendSpec, ids: SemanticIDs) -> tuple[UserHistories, str]:
    """Every user of the data files as they are now (any number of events), with only their events
    on items of ``ids``; and a note saying so, for a run whose data changed since training. Item
    texts are not needed (the index has the items' codes): an event on an item the items file lacks
    (new items often reach the log first) is skipped and counted like any other event outside the
    index, instead of dropped unseen for want of a text."""
    dataset = recommendation_dataset(spec.dataset, spec.items, spec.columns, "keep", 1)
    dataset, skipped = keep_indexed_items(dataset, ids)
    data = prepare_data(dataset, ids, spec.max_history)
    note = "its data changed since training: user histories come from the files as they are now"
    if skipped:
        note += (f" ({counted(skipped, 'event')} on items outside the run's index skipped; add "
                 "the items with `semid index add`)")  # fmt: skip
    return UserHistories(data, dataset.user_keys, live=True), note


def _dtype_of(times: list[Any]) -> torch.dtype:
    """int64 for integer timestamps, float64 for fractional ones (as the data holds them)."""
    return torch.float64 if any(isinstance(v, float) for v in times) else torch.long


class RecommendPredictor(Predictor):
    """Answers ``{"user": ID}`` (history from the run's data; ``"split": "valid"|"test"`` stops it
    before that target, as `evaluate` sees it) or ``{"history": [item keys]}`` (a new user).

    The data is read on the first input that names a user, and again whenever its files change
    (checked at each input, by size and time). Data that changed since training is not refused:
    users' histories come from the files as they are now (events on items outside the index
    skipped; the model's user token is the new-user one), and a note on stderr says so once."""

    task = "recommend"
    accepts = ("user", "history")
    input_options = ("split",)
    serves = "recommends items for users and histories"

    def __init__(self, run: Run, device: str = "cpu") -> None:
        super().__init__(run, device)
        self.spec = get_task().spec_of(run)
        self.codes = run.ids.codes if is_generator(run.model) else None
        self._loaded: tuple[Any, UserHistories] | None = None
        # the texts of a registered dataset (or folder) as read with the histories, so that
        # answering a user and showing texts loads the dataset once
        self._read_texts: dict[str, str] | None = None

    def data_texts(self) -> dict[str, str]:
        """The texts of the run's items file, or of its registered dataset."""
        if self._read_texts is not None:
            return self._read_texts
        return item_texts_of(self.spec)

    def histories(self) -> UserHistories:
        """The users' histories, re-read when the data files changed since the last read."""
        stamp = data_stamp(self.spec.dataset, self.spec.items)
        loaded = self._loaded  # one read: the serving thread may replace it meanwhile
        if loaded is None or loaded[0] != stamp:
            loaded = (stamp, self._read_histories())
            self._loaded = loaded
        return loaded[1]

    def _read_histories(self) -> UserHistories:
        try:
            dataset, data = get_task().load_split(self.spec, self.run.ids, self.run)
        except DataChanged:
            histories, note = current_histories(self.spec, self.run.ids)
            notes.note(f"{self.run.path}: {note}")
            return histories
        if self.spec.items is None:  # the texts are the dataset's own (no items file)
            self._read_texts = dataset_texts(dataset)
        return UserHistories(data, dataset.user_keys, left_out=dataset.left_out_users)

    def read_data(self) -> None:
        """The users' histories, read now. Data that cannot be read is noted on stderr, not
        raised: histories are still answered, and users are refused with the reason."""
        try:
            self.histories()
        except SemidError as e:
            notes.note(f"{self.run.path}: {e} (until that is fixed, users are refused; histories "
                       "are answered)")  # fmt: skip

    @property
    def user_keys(self) -> list[str]:
        """The keys of the users the predictor can answer (``--users all``), in id order: those
        with events on items of the index."""
        return self.histories().answerable()

    def check_input(self, item: dict[str, Any]) -> dict[str, Any]:
        """A known user (optionally up to a split's target) or a non-empty history of known items."""
        self.refuse_other_inputs(item)
        if not isinstance(item, dict) or ("user" in item) == ("history" in item):
            raise SemidError('each input needs exactly one of "user" or "history"')
        if "history" in item:
            if "split" in item:
                raise SemidError('"split" goes with a "user" (their events up to that split\'s '
                                 'target); a "history" input is answered as given: drop "split"')  # fmt: skip
            history = item["history"]
            if not isinstance(history, list) or not history or not all(_is_key(h) for h in history):
                raise SemidError('"history" must be a non-empty list of item keys')
            history = [str(h) for h in history]  # integers name keys, as a user may be an integer
            unknown = [h for h in history if h not in self.run.ids]
            if unknown:
                titled = self._item_titled(unknown[0])
                if titled is not None:
                    raise SemidError(f"unknown item {unknown[0]!r} in the history: a history lists item "
                                     f"keys, and {unknown[0]!r} begins the text of item {titled}")  # fmt: skip
                example = example_key(unknown[0], self.run.ids.keys)
                raise SemidError(f"unknown item {unknown[0]!r} in the history; use keys of the "
                                 f"run's index, such as {example}")  # fmt: skip
            return {"history": history}
        user = str(item["user"])
        split = item.get("split")
        if split is not None and split not in SPLITS:
            raise SemidError(f'"split" must be valid or test, got {split!r}')
        self._check_user(user, split, self.histories())
        return {"user": user, "split": split} if split else {"user": user}

    def _item_titled(self, given: str) -> str | None:
        """``'1' ('Toy Story (1995). Genres: ...')``: the key and text of the first item whose text
        begins with ``given`` (case aside), for a history that names an item by its title; None
        when none does or the run has no texts."""
        wanted, keys = given.strip().lower(), self.run.ids.keys
        texts = self.item_texts(keys) if wanted else None
        found = next((i for i, t in enumerate(texts or ()) if t.lower().startswith(wanted)), None)
        return None if found is None else f"{keys[found]!r} ({texts[found][:60]!r})"

    def _check_user(self, user: str, split: str | None, histories: UserHistories) -> None:
        if user not in histories.user_of_key:
            left_out = ""
            if user in histories.left_out:
                left_out = (f" (it has fewer than {self.spec.min_interactions} interactions: such "
                            "users were left out at training)")  # fmt: skip
            example = None if left_out else example_key(user, histories.user_of_key)
            raise SemidError(f"unknown user {user!r}{left_out}; pass a user of the run's data"
                             f"{f', such as {example},' if example else ''} or a history")  # fmt: skip
        if histories.live and split is not None:
            raise SemidError(
                f'"split" needs the data {self.run.path} was trained on, which changed since; '
                "ask without a split, or restore the data"
            )
        if histories.live and histories.events(user) == 0:
            raise SemidError(
                f"user {user!r} has no events on items of the run's index; add the items with "
                "`semid index add`, or pass a history"
            )

    def resolve(self, checked: list[dict[str, Any]]) -> list[dict[str, Any]]:
        """Each user input with its events attached as item keys (``"events"``), so that a model
        process answers it without reading the data files; other inputs as they are."""
        batch, seen = self._batch(checked)
        keys = self.run.ids.keys
        resolved = []
        for i, item in enumerate(checked):
            if "user" in item and "events" not in item:
                real = batch["items"][i] != PAD
                item = {**item, "events": {
                    "items": [keys[r] for r in batch["items"][i][real].tolist()],
                    "times": batch["times"][i][real].tolist(),
                    "seen": [keys[r] for r in seen[i][seen[i] != PAD].tolist()],
                    "user": int(batch["users"][i]),
                }}  # fmt: skip
            resolved.append(item)
        return resolved

    def check_resolved(self, item: dict[str, Any]) -> dict[str, Any]:
        """A user input resolved by another copy of the run, whose items must be in this copy's
        index; any other input as `check_input` checks it."""
        if "events" not in item:
            return self.check_input(item)
        events = item["events"]
        unknown = next((k for k in [*events["items"], *events["seen"]]
                        if k not in self.run.ids), None)  # fmt: skip
        if unknown is not None:
            raise SemidError(f"item {unknown!r} of user {item['user']!r} is not in this copy of "
                             "the run's index (it changed meanwhile); ask again")  # fmt: skip
        return item

    def rank(self, inputs: list[dict[str, Any]], k: int, num_beams: int | None) -> Ranking:
        """One beam search (or scoring pass) over the batch of inputs."""
        batch, seen = self._batch(inputs)
        if self.codes is not None:
            batch = CodeCollator(lambda b: b, self.codes)(batch)
        return self.ranker(num_beams).rank(move(batch, self.device), k, seen)

    def make_ranker(self, num_beams: int | None) -> Ranker:
        """Beam search (generators) or full scoring over the run's index."""
        return get_task().ranker(
            self.run, self.spec, EvalOptions(num_beams=num_beams, device=self.device)
        )

    def _batch(self, inputs: list[dict[str, Any]]) -> tuple[dict[str, Tensor], Tensor]:
        """The model batch of checked (or resolved) inputs: users (B,) (-1: a user the model has
        not seen), items and times (B, T) left-padded, and every item seen before each input
        (B, M), sorted and left-padded with PAD, which the answers leave out."""
        t, n = self.spec.max_history, len(inputs)
        known = [i for i, x in enumerate(inputs) if "user" in x and "events" not in x]
        users_of = self._gather_users([inputs[i] for i in known]) if known else None
        others = {
            i: self._events_of(x) for i, x in enumerate(inputs) if "user" not in x or "events" in x
        }
        sources = [*([users_of] if users_of else []), *others.values()]
        floating = any(source["times"].is_floating_point() for source in sources)
        dtype = torch.float64 if floating else torch.long
        width = max((source["seen"].shape[-1] for source in sources), default=0)
        items = torch.full((n, t), PAD, dtype=torch.long)
        times = torch.zeros(n, t, dtype=dtype)
        users = torch.full((n,), -1, dtype=torch.long)
        seen = torch.full((n, width), PAD, dtype=torch.long)
        if users_of:
            rows = torch.tensor(known)
            items[rows], times[rows], users[rows] = (
                users_of["items"],
                users_of["times"].to(dtype),
                users_of["users"],
            )
            seen[rows, width - users_of["seen"].shape[1] :] = users_of["seen"]
        for i, e in others.items():  # histories and resolved users: one row each
            length = len(e["items"])
            items[i, t - length :], times[i, t - length :] = e["items"], e["times"].to(dtype)
            seen[i, width - len(e["seen"]) :] = e["seen"].sort().values
            users[i] = e["users"]
        return {"users": users, "items": items, "times": times}, seen

    def _gather_users(self, inputs: list[dict[str, Any]]) -> dict[str, Tensor]:
        """Known users' last items and times (K, T) and seen rows (K, M), from one read of the data."""
        h = self.histories()
        for x in inputs:  # checked against an earlier read: the data may have changed since
            self._check_user(x["user"], x.get("split"), h)
        users = torch.tensor([h.user_of_key[x["user"]] for x in inputs])
        positions = self._positions(h, inputs)
        gathered = gather_history(h.data, positions, self.spec.max_history, users)
        if h.live:  # the ids of the current data are not the ids trained on: new users
            gathered["users"] = torch.full_like(users, -1)
        return {**gathered, "seen": h.data.seen_before(positions, users)}

    def _events_of(self, item: dict[str, Any]) -> dict[str, Any]:
        """A history's (or resolved user's) item rows, times, seen rows and user id."""
        ids = self.run.ids
        if "history" in item:
            rows = ids.rows_of_keys(item["history"])[-self.spec.max_history :]
            return {"items": rows, "times": torch.zeros(len(rows), dtype=torch.long),
                    "seen": rows.unique(), "users": -1}  # fmt: skip
        e, t = item["events"], self.spec.max_history  # another copy's history may be longer
        return {"items": ids.rows_of_keys(e["items"][-t:]), "seen": ids.rows_of_keys(e["seen"]),
                "times": torch.tensor(e["times"][-t:], dtype=_dtype_of(e["times"])),
                "users": e["user"]}  # fmt: skip

    def _positions(self, histories: UserHistories, inputs: list[dict[str, Any]]) -> Tensor:
        """Sequence positions to predict at: after the whole history, or at a split's target."""
        s = histories.data.split
        users = torch.tensor([histories.user_of_key[x["user"]] for x in inputs])
        end = s.ptr[users + 1]
        offset = torch.tensor([{"valid": 2, "test": 1}.get(x.get("split"), 0) for x in inputs])
        has_targets = (s.ptr[users + 1] - s.ptr[users]) >= 3
        return torch.where(has_targets | (offset == 0), end - offset, end)


def describe_data(dataset: RecDataset, data: RecData) -> str:
    """One line on what training sees: users, items, events, and how many test targets repeat an
    item of their own history (ranking excludes seen items, so those are misses unless --keep-seen)."""
    s = data.split
    targets = data.positions("test")
    repeats = pd.DataFrame({"u": s.sequence_users.numpy(), "i": s.sequence_items.numpy()})
    repeated = int(repeats.duplicated().to_numpy()[targets.numpy()].sum())
    line = (f"data: {counted(len(dataset.user_keys), 'user')} ({counted(len(targets), 'test user')}), "
            f"{counted(len(dataset.item_keys), 'item')}, {counted(len(s.sequence_items), 'interaction')}")  # fmt: skip
    if repeated:
        line += (f"; {counted(repeated, 'test target')} {'repeats' if repeated == 1 else 'repeat'} "
                 "an item of the user's history (ranked only with `semid eval --keep-seen`)")  # fmt: skip
    return line


def training_window(model: Any, max_history: int) -> int:
    """Targets per window of ``train_format = "sequence"`` training: the model's ``train_window``
    when it reads fewer items than ``max_history`` (TIGER's ``max_items``), else ``max_history``."""
    window = getattr(model, "train_window", None)
    return max_history if window is None else min(window, max_history)


def tune_item_mix(
    model: Any, ids: SemanticIDs, data: RecData, spec: RecommendSpec
) -> tuple[dict[str, float], dict[str, float]]:
    """Set ``model.config.item_mix`` to the weight of ``MIX_GRID`` with the best valid NDCG@10
    (one beam search per query, every weight re-ranks its candidates); returns NDCG@10 by weight
    and the valid Recall/NDCG@5/10 at the chosen weight."""
    device = str(next(model.parameters()).device)
    ranker = HybridRanker(model, ids, spec.num_beams).to(device)
    parts: list[Candidates] = []

    class Recorder:  # ranks like the hybrid ranker and keeps the candidates
        def rank(self, batch: Any, k: int, seen: Tensor | None = None) -> Ranking:
            parts.append(ranker.candidates(batch, k, seen))
            return parts[-1].top(0.0, k, ids)

    _, _, targets, _ = rank_split(Recorder(), data, "valid", 10, ids.codes, spec.max_history,
                                  max_users=spec.eval_users, device=device)  # fmt: skip
    model.config.item_mix, ndcg = choose_mix(parts, targets, ids)
    rows = torch.cat([c.top(model.config.item_mix, 10, ids).rows for c in parts])
    return ndcg, compute_metrics(rows, targets, ks=(5, 10))


def evaluate_ranker(
    ranker: Ranker,
    data: RecData,
    which: str = "valid",
    ks: Any = (5, 10),
    codes: Tensor | None = None,
    max_len: int = 50,
    batch_size: int = 256,
    max_users: int | None = None,
    exclude_seen: bool = True,
    device: str = "cpu",
    targets_in: Tensor | None = None,
) -> dict[str, float]:
    """Recall@k, NDCG@k, invalid-ID rate and queries/s over the valid or test targets
    (``targets_in`` (num_items,) bool: only the queries whose target row is marked, e.g. new items)."""
    users, ranking, targets, seconds = rank_split(
        ranker,
        data,
        which,
        max(ks),
        codes,
        max_len,
        batch_size,
        max_users,
        exclude_seen,
        device,
        targets_in,
    )
    metrics = compute_metrics(ranking.rows, targets, ks=ks, names=("recall", "ndcg"))
    metrics["queries_per_s"] = len(targets) / max(seconds, 1e-9)
    metrics["num_queries"] = float(len(targets))
    return metrics


def rank_split(
    ranker: Ranker, data: RecData, which: str, k: int, codes: Tensor | None = None,
    max_len: int = 50, batch_size: int = 256, max_users: int | None = None,
    exclude_seen: bool = True, device: str = "cpu", targets_in: Tensor | None = None,
) -> tuple[Tensor, Ranking, Tensor, float]:  # fmt: skip
    """The ranking of every valid or test query: (users (Q,), Ranking, targets (Q,), seconds).

    ``max_users`` keeps a fixed, evenly spaced subset of users (cheap validation during training);
    ``targets_in`` (num_items,) bool keeps only the queries whose target row is marked."""
    if batch_size < 1:
        raise SemidError(f"--batch-size must be >= 1, got {batch_size}")
    positions = data.positions(which)
    if targets_in is not None:
        positions = positions[targets_in[data.split.sequence_items[positions]]]
    if max_users is not None and max_users < len(positions):
        positions = positions[torch.linspace(0, len(positions) - 1, max_users).long()]
    if len(positions) == 0:
        raise SemidError(f"no {which} queries to evaluate (check the data slice)")
    dataset = TargetDataset(data, positions, max_len, with_seen=exclude_seen)
    collate = CodeCollator(dataset.collate, codes)
    # Answers go into tensors sized for every query at the first batch: thousands of small
    # per-batch parts kept between the large temporaries of scoring fragmented the heap (an
    # evaluation of 300,000 users over 60,000 items peaked at 12 GB)
    ranking: Ranking | None = None
    started = time.perf_counter()
    with torch.no_grad():
        for lo in batch_starts(len(dataset), batch_size, f"rank {which} users"):
            batch = collate(positions[lo : lo + batch_size].tolist())
            seen = batch.pop("seen", None)
            batch.pop("targets")
            batch.pop("target_codes", None)
            part = ranker.rank(move(batch, device), k, seen)
            if ranking is None:
                ranking = Ranking.empty_like(part, len(positions))
            ranking.fill_(lo, part)
    seconds = time.perf_counter() - started
    users = data.split.sequence_users[positions]
    return users, ranking, data.split.sequence_items[positions], seconds


def get_task() -> RecommendTask:
    """The registered recommendation task."""
    return TASK


TASK = register_task(RecommendTask())


def _is_key(value: Any) -> bool:
    """An item key in a JSON input: a string, or an integer (not a boolean) standing for one."""
    return isinstance(value, str) or (isinstance(value, int) and not isinstance(value, bool))
