"""Answers of a recommender run: top-k items for a user of its data, or for a given history.

The users' histories are read from the run's data once and again when its files change
(``UserHistories``); data that changed since training is answered from the files as they are now
(``current_histories``). A user input is resolved to its events (``RecommendPredictor.resolve``) so
that another copy of the run (serve's model processes) answers it without reading the data.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

from semid import notes
from semid.data.sequences import (
    CodeCollator,
    RecData,
    gather_history,
    keep_indexed_items,
    prepare_data,
)
from semid.data.splits import PAD
from semid.data.tables import read_up_to
from semid.errors import RunDataError, SemidError
from semid.ids import SemanticIDs
from semid.json_values import as_json, is_key, known_key, shown_key
from semid.models import is_generator
from semid.ranking import Ranker, Ranking
from semid.runs import Run
from semid.tasks.base import EvalOptions, Predictor, get_task, move
from semid.tasks.data import DataChanged, DataStamp, appended_ends, data_stamp
from semid.tasks.items import dataset_texts, item_texts_of, recommendation_dataset
from semid.tasks.specs import RecommendSpec
from semid.wording import counted, example_key

SPLITS = ("valid", "test")


def rankable_items(run: Run) -> int:
    """The items a recommend run ranks: the whole catalogue for a generator; for a scorer (sasrec,
    pop), the items it was trained on, since it never ranks those added to the index after."""
    if is_generator(run.model):
        return len(run.ids)
    return min(len(run.ids), run.state.get("trained_items", len(run.ids)))


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
        self.spec: RecommendSpec = get_task("recommend").spec_of(run)
        self.codes = run.ids.codes if is_generator(run.model) else None
        self._loaded: tuple[Any, UserHistories] | None = None
        self._told_cut: set[str] = set()  # files whose unfinished last line was noted
        # every user's events as the files are now, read for users left out at training
        self._every_user: tuple[Any, UserHistories] | None = None
        # the texts of a registered dataset (or folder) as read with the histories, so that
        # answering a user and showing texts loads the dataset once
        self._read_texts: dict[str, str] | None = None
        self._told_untrained = False  # the note on history items a scorer does not read, given once

    def sample_inputs(self, n: int, seed: int = 0) -> list[dict[str, Any]]:
        """``n`` inputs naming users of the run's data (drawn with ``seed``, with repeats when
        ``n`` is over the users with events), for benchmarks of serving."""
        users = self.histories().answerable()
        if not users:
            raise SemidError(f"{self.run.path}: no user of its data has events on indexed items")
        picks = torch.randint(len(users), (n,), generator=torch.Generator().manual_seed(seed))
        return [{"user": users[i]} for i in picks.tolist()]

    def data_texts(self) -> dict[str, str]:
        """The texts of the run's items file, or of its registered dataset."""
        if self._read_texts is not None:
            return self._read_texts
        return item_texts_of(self.spec)

    def histories(self) -> UserHistories:
        """The users' histories, re-read when the data files changed since the last read (by one
        thread: server threads that ask meanwhile wait for its read). RunDataError when the data
        cannot be read."""
        try:
            return self._current_histories()
        except RunDataError:
            raise
        except SemidError as e:
            raise RunDataError(str(e)) from None

    def _current_histories(self) -> UserHistories:
        stamp = data_stamp(self.spec.dataset, self.spec.items)
        loaded = self._loaded  # one read: another thread may replace it meanwhile
        if loaded is None or loaded[0] != stamp:
            with self._reading:
                # read by another thread while this one waited? (the files may have changed again)
                stamp, loaded = data_stamp(self.spec.dataset, self.spec.items), self._loaded
                if loaded is None or loaded[0] != stamp:
                    loaded = (stamp, self._read_grown(loaded, stamp))
                    self._loaded = loaded
        return loaded[1]

    def _read_grown(
        self, loaded: tuple[DataStamp, UserHistories] | None, stamp: DataStamp
    ) -> UserHistories:
        """The histories as the files are at ``stamp`` (`_read_histories`), each file appended to
        since ``loaded``'s read taken up to its last line feed (`appended_ends`): a line its
        writer has not finished is read once it ends, with a note the first time a file is cut. A
        cut read that does not parse (a quoted cell's line break, cut mid-row) answers from
        ``loaded`` until the next change."""
        ends = appended_ends(loaded and loaded[0], stamp)
        for name in set(ends) - self._told_cut:
            self._told_cut.add(name)
            notes.note(f"{self.run.path}: the last line of {name} has no line feed yet; it is read "
                       "once it has one (a log being written; a file saved without one: add it)")  # fmt: skip
        with read_up_to(ends):
            try:
                return self._read_histories()
            except SemidError:
                if not ends or loaded is None:
                    raise
                return loaded[1]

    def _read_histories(self) -> UserHistories:
        try:
            dataset, data = get_task("recommend").load_split(self.spec, self.run.ids, self.run)
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
            if not isinstance(history, list) or not history:
                raise SemidError(
                    f'"history" must be a non-empty list of item keys, got {as_json(history)}'
                )
            bad = next((i for i, h in enumerate(history) if not is_key(h)), None)
            if bad is not None:
                raise SemidError(f'"history"[{bad}] must be an item key (a string or an integer), '
                                 f"got {as_json(history[bad])}")  # fmt: skip
            # integers name keys, as a user may be an integer
            history = [known_key(str(h), self.run.ids) for h in history]
            unknown = [h for h in history if h not in self.run.ids]
            if unknown:
                titled = self._item_titled(unknown[0])
                if titled is not None:
                    raise SemidError(f"unknown item {shown_key(unknown[0])} in the history: a history lists item "
                                     f"keys, and {unknown[0]!r} begins the text of item {titled}")  # fmt: skip
                example = example_key(unknown[0], self.run.ids.keys)
                raise SemidError(f"unknown item {shown_key(unknown[0])} in the history; use keys of the "
                                 f"run's index, such as {example}")  # fmt: skip
            self._check_trained_items(history)
            return {"history": history}
        split = item.get("split")
        if split is not None and split not in SPLITS:
            raise SemidError(f'"split" must be valid or test, got {split!r}')
        if not is_key(item["user"]):  # null, true or a list would be read as "None", "True", ...
            raise SemidError(
                f'"user" must be a user key (a string or an integer), got {as_json(item["user"])}'
            )
        histories = self.histories()
        user = known_key(str(item["user"]), histories.user_of_key)
        if user in histories.left_out and user not in histories.user_of_key:
            return {"user": user, "events": self._left_out_events(user, split)}
        self._check_user(user, split, histories)
        return {"user": user, "split": split} if split else {"user": user}

    def _left_out_events(self, user: str, split: str | None) -> dict[str, Any]:
        """The events of a user left out at training for too few interactions (a new user to the
        model), from the files as they are now: answered as a history of them is, so that whether
        the data changed since training does not decide it (a changed log's users are read so)."""
        if split is not None:
            raise SemidError(f'user {user!r} has fewer than {self.spec.min_interactions} '
                             'interactions, so no valid or test target: ask without "split"')  # fmt: skip
        with self._reading:
            stamp, every_user = data_stamp(self.spec.dataset, self.spec.items), self._every_user
            if every_user is None or every_user[0] != stamp:
                before = (every_user or self._loaded or (None,))[0]  # the last read of the files
                with read_up_to(appended_ends(before, stamp)):
                    self._every_user = (stamp, current_histories(self.spec, self.run.ids)[0])
        every = self._every_user[1]
        if user not in every.user_of_key or every.events(user) == 0:
            raise SemidError(f"user {user!r} has no events on items of the run's index; add the "
                             "items with `semid index add`, or pass a history")  # fmt: skip
        users = torch.tensor([every.user_of_key[user]])
        positions = every.data.split.ptr[users + 1]
        gathered = gather_history(every.data, positions, self.spec.max_history, users)
        seen = every.data.seen_before(positions, users)[0]
        return self._as_events(gathered["items"][0], gathered["times"][0], seen, -1)

    def _as_events(self, items: Tensor, times: Tensor, seen: Tensor, user: int) -> dict[str, Any]:
        """A user's left-padded history rows and times (T,) and seen rows (M,) as the item keys
        of a resolved input's ``"events"`` (`_events_of` reads them back)."""
        real, keys = items != PAD, self.run.ids.keys
        return {"items": [keys[r] for r in items[real].tolist()], "times": times[real].tolist(),
                "seen": [keys[r] for r in seen[seen != PAD].tolist()], "user": user}  # fmt: skip

    def max_k(self) -> int:
        """The items the run ranks (`rankable_items`)."""
        return rankable_items(self.run)

    def _check_trained_items(self, history: list[str]) -> None:
        """A scorer (sasrec) reads only the items it was trained on: a history whose items it reads
        (the last max_history) were all added to the index since would be answered as no history
        at all, so it is refused; one with some of them is answered from the others, with a note
        on stderr (once per predictor) and in the answer (`rank_with_notes`)."""
        first_added = self._first_added_row()
        if first_added is None:
            return
        read = history[-self.spec.max_history :]
        rows = self.run.ids.rows_of_keys(read).tolist()
        untrained = [key for key, row in zip(read, rows, strict=True) if row >= first_added]
        if len(untrained) == len(read):
            which = (f"the last {len(read)} items of the history, which the model reads, were"
                     if len(read) < len(history) else "every item of the history was")  # fmt: skip
            raise SemidError(
                f"{which} added to the index after {self.run.path} was trained, and a "
                f"{self.run.spec['model']} run reads only the items it was trained on; retrain it "
                "with the added items' events, or end the history with items it was trained on"
            )
        if untrained and not self._told_untrained:
            self._told_untrained = True
            notes.note(f"{self.run.path}: a {self.run.spec['model']} run reads only the items it "
                       f"was trained on, so the history items added to its index since (such as "
                       f"{untrained[0]!r}) are left out of its histories; a run trained on its "
                       f"index (--index {self.run.index_path}) reads them")  # fmt: skip

    def _first_added_row(self) -> int | None:
        """The first index row added after a scorer (sasrec) was trained: it reads no item from
        there on. None for a generator, which reads every item of its index, or when no item was
        added."""
        if self.codes is not None or not getattr(self.run.model, "reads_histories", True):
            return None
        trained = self.run.state.get("trained_items", len(self.run.ids))
        return trained if trained < len(self.run.ids) else None

    def _left_out_notes(self, items: Tensor) -> list[str | None]:
        """Per row of a batch's history items (B, T), the items added since a scorer (sasrec) was
        trained that it left out, and why (None: none left out, or a generator)."""
        first_added = self._first_added_row()
        if first_added is None:
            return [None] * len(items)
        keys = self.run.ids.keys
        said: list[str | None] = []
        for rows in items.tolist():  # PAD (-1) is never an added row
            added = list(dict.fromkeys(keys[row] for row in rows if row >= first_added))
            read = [row for row in rows if row != PAD]
            said.append(
                self._left_out_note(added, every=len(added) == len(set(read))) if added else None
            )
        return said

    def _left_out_note(self, added: list[str], every: bool) -> str:
        shown = ", ".join(repr(key) for key in added[:3])
        more = f" and {len(added) - 3:,} more" if len(added) > 3 else ""
        one = len(added) == 1
        nothing = ", so it was answered as no history" if every else ""
        return (f"history {'item' if one else 'items'} {shown}{more} {'was' if one else 'were'} "
                f"added to the index after training and left out{nothing}: a "
                f"{self.run.spec['model']} run reads only the items it was trained on")  # fmt: skip

    def _item_titled(self, given: str) -> str | None:
        """``'1' ('Toy Story (1995). Genres: ...')``: the key and text of the first item whose text
        begins with ``given`` (case aside), for a history that names an item by its title; None
        when none does or the run has no texts."""
        wanted, keys = given.strip().lower(), self.run.ids.keys
        texts = self.item_texts(keys) if wanted else None
        found = next((i for i, t in enumerate(texts or ()) if t.lower().startswith(wanted)), None)
        return None if found is None else f"{keys[found]!r} ({texts[found][:60]!r})"

    def _check_user(self, user: str, split: str | None, histories: UserHistories) -> None:
        if user not in histories.user_of_key:  # (a user left out at training is read apart)
            example = example_key(user, histories.user_of_key)
            raise SemidError(f"unknown user {shown_key(user)}; pass a user of the run's data"
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
        resolved = []
        for i, item in enumerate(checked):
            if "user" in item and "events" not in item:
                events = self._as_events(batch["items"][i], batch["times"][i], seen[i],
                                         int(batch["users"][i]))  # fmt: skip
                item = {**item, "events": events}
            resolved.append(item)
        return resolved

    def check_resolved(self, item: dict[str, Any]) -> dict[str, Any]:
        """A user input resolved by another copy of the run, whose items must be in this copy's
        index; any other input as `check_input` checks it, without the stderr note the copy that
        resolved it gave (a model process would repeat the server's)."""
        if "events" not in item:
            self._told_untrained = True
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
        return self.rank_with_notes(inputs, k, num_beams)[0]

    def rank_with_notes(
        self, inputs: list[dict[str, Any]], k: int, num_beams: int | None
    ) -> tuple[Ranking, list[str | None]]:
        """`rank`, and per input the items added since a scorer was trained that the histories
        it ranked held and it left out (`_left_out_notes`)."""
        batch, seen = self._batch(inputs)
        said = self._left_out_notes(batch["items"])
        if self.codes is not None:
            batch = CodeCollator(lambda b: b, self.codes)(batch)
        return self.ranker(num_beams).rank(move(batch, self.device), k, seen), said

    def make_ranker(self, num_beams: int | None) -> Ranker:
        """Beam search (generators) or full scoring over the run's index."""
        return get_task("recommend").ranker(
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
        if "history" in item:  # the model reads the last max_history items; all count as seen
            every = ids.rows_of_keys(item["history"])
            rows = every[-self.spec.max_history :]
            return {"items": rows, "times": torch.zeros(len(rows), dtype=torch.long),
                    "seen": every.unique(), "users": -1}  # fmt: skip
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
