"""A user's own interaction log (and optional item texts) from plain table files, as a RecDataset.

Interactions file: one row per event with a user, an item and optionally a timestamp column (names
in USER_COLUMNS, ITEM_COLUMNS, TIME_COLUMNS, or given with ``columns``). Ids are kept as strings,
without the spaces around them.
Timestamps may be integers, decimals, ISO 8601 datetimes or the named forms of
NAMED_DATETIME_FORMATS, in seconds (int64 when every value is
a whole second, else float64, so events within one second keep their order). Without a column of
a time name, a column ``date`` whose dates have a time of day, or else the one other column of ISO
8601 datetimes with a time of day, is the time (with a note; see `_guessed_times` for when the
latter is not); without any, file order is time order.

Items file (optional): the item column (same names, plus ``id``) and a ``text`` column. Without a
``text`` column every other column makes the text, in file order, as ``"column: value"`` pairs
joined by ``"; "`` (empty values skipped; list values joined by ``", "``), e.g.
``"title: Heat; year: 1995; genres: Action|Crime"``. Without an items file there are no texts:
``RecDataset.item_texts`` is None and embeddings must come from elsewhere.

Loading, in order: events whose item has no text (absent from the items file, or empty) raise, or
are dropped with ``missing_text="drop"``, or kept with ``missing_text="keep"`` (the items file then
only resolves ``columns``, and the dataset has no texts: for reading histories, not for embedding); exact repeats of a row (same user, item and time) are
dropped, as double-logged events; users with fewer than ``min_interactions`` events are
dropped (once, as RecBole's ``user_inter_num_interval`` does); items of the items file left
without events are dropped. Each drop adds a line to ``RecDataset.notes``.

Integer ids, independent of row order: events are sorted by (timestamp, user key, item key);
users are numbered by first appearance in that order; items follow the items file's order when
one is given, else first appearance in that order. The log is stored in that order too.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import torch

from semid.data.logs import InteractionLog, RecDataset
from semid.data.tables import (
    USER_COLUMNS,
    column_name,
    factorized_keys,
    file_stem,
    find_column,
    header_hint,
    key_strings,
    matching_columns,
    parse_columns,
    plain_text,
    read_table,
    row_label,
)
from semid.errors import SemidError
from semid.wording import counted

# with the names of public logs: Amazon reviews (asin, parent_asin: a log with both is asked
# which), Yelp (business_id), Goodreads (book_id), retail (product_id, article_id)
ITEM_COLUMNS = ("item", "item_id", "itemId", "itemid", "iid", "movieId", "movie_id", "MovieID", "asin",
                "parent_asin", "business_id", "book_id", "product_id", "article_id")  # fmt: skip
ITEM_KEY_COLUMNS = (*ITEM_COLUMNS, "id")  # an items file may also call it id
# not "date": day-level dates tie within a day, and ties are broken by key, not file order; a
# log with only a date column keeps file order and the note names the column (unless its dates
# have a time of day, as Yelp's, or a column of ISO datetimes: `_datetime_column`)
TIME_COLUMNS = (
    "timestamp",
    "ts",
    "time",
    "datetime",
    "event_time",
    "created_at",
    "unixReviewTime",  # Amazon reviews
)
# datetimes that public logs write other than as ISO 8601, each unambiguous (month by name)
NAMED_DATETIME_FORMATS = (
    "%a %b %d %H:%M:%S %z %Y",  # Goodreads, Twitter: Mon Aug 01 13:41:57 -0700 2011
    "%a %b %d %H:%M:%S %Y",  # C's and Python's ctime (taken as UTC): Mon Aug  1 13:41:57 2011
    "%a, %d %b %Y %H:%M:%S %z",  # RFC 2822 (e-mail, RSS): Mon, 01 Aug 2011 13:41:57 -0700
    "%a, %d %b %Y %H:%M:%S GMT",  # RFC 2822 and HTTP dates in UTC
)
ROLES = ("user", "item", "timestamp", "text")
MISSING_TEXT = ("error", "drop", "keep")


@dataclass(frozen=True)
class _Events:
    """The log as integer codes (E,): users and items index their distinct keys; times in seconds
    (or file positions)."""

    user: np.ndarray
    item: np.ndarray
    times: np.ndarray

    def kept(self, mask: np.ndarray) -> _Events:
        """The events where ``mask`` (E,) is true, or in the order of an index array."""
        return _Events(self.user[mask], self.item[mask], self.times[mask])


@dataclass(frozen=True)
class _ItemTexts:
    """An items file read for the log: its keys in file order, their texts, and its path as given."""

    keys: pd.Index
    texts: list[str]
    path: str | os.PathLike


def load_interaction_files(
    interactions: str | os.PathLike,
    items: str | os.PathLike | None = None,
    columns: dict[str, str] | str | None = None,
    missing_text: str = "error",
    min_interactions: int = 3,
    name: str | None = None,
) -> RecDataset:
    """A RecDataset from an interactions file and an optional items file (see the module docstring).

    `columns` maps roles (user, item, timestamp, text) to column names, as a dict or as
    ``"user=a,item=b"``; roles left out are found by their usual names."""
    if isinstance(columns, str) or columns is None:
        columns = parse_columns(columns)
    _check_options(columns, missing_text, min_interactions)
    path = Path(interactions)
    what = "interactions file"
    table = read_table(path, what)
    catalog = None
    items_table = None if items is None else read_table(Path(items), "items file")
    log_columns = dict(columns)
    named = columns.get("item")
    if (items_table is not None and named in map(column_name, items_table.column_names)
            and named not in map(column_name, table.column_names)):  # fmt: skip
        del log_columns["item"]  # the mapping named the items file's column: --columns item=sku
    _check_key_columns(table, log_columns, path, items_table, items, named)
    if items is not None:
        keys, texts, _ = _read_items(Path(items), columns, table=items_table)
        catalog = _ItemTexts(pd.Index(keys), texts, items)
    user_col = find_column(table, "user", USER_COLUMNS, path, what, log_columns.get("user"))
    item_col = find_column(table, "item", ITEM_COLUMNS, path, what, log_columns.get("item"))
    time_col = find_column(
        table, "timestamp", TIME_COLUMNS, path, what, columns.get("timestamp"), required=False
    )
    guessed = False
    if time_col is None:
        time_col, guessed = _datetime_column(table, (user_col, item_col))
    # one hash pass per key column, in arrow; every step below works on the integer codes (E,)
    # and the distinct keys, not on millions of Python strings
    user_code, user_uniques = factorized_keys(table[user_col], path, "user id", trim=True)
    item_code, item_uniques = factorized_keys(table[item_col], path, "item id", trim=True)
    time_notes: list[str] = []
    times = None
    if guessed:  # taken only when it orders the events better than file order would
        times, said = _guessed_times(table[time_col], time_col, user_code, path)
        time_notes.append(said)
        time_col = time_col if times is not None else None
    elif time_col is not None:
        times = _timestamps(table[time_col], path)
        _check_one_unit(times, path)
    if times is None:
        times = np.arange(len(user_code), dtype=np.int64)
        time_notes.insert(0, _no_time_note(table, (user_col, item_col)))
    events = _Events(user_code, item_code, times)
    notes = time_notes
    if items is None and "text" in columns:
        notes.append(f"--columns text={columns['text']} names columns of the items file; without "
                     "--items it has no effect")  # fmt: skip
    dates_only = time_col is not None and _dates_only(times)
    if dates_only:
        notes.append(f"every timestamp in column {time_col!r} is at midnight (dates without a time "
                     "of day): a user's events of one day are ordered by item id as text, so which "
                     "is the last (the test target) is arbitrary; give times of day if the data "
                     "has them")  # fmt: skip
    for uniques, role in ((user_uniques, "user"), (item_uniques, "item")):
        notes += twin_key_notes(uniques, role)

    if missing_text == "keep":
        catalog = None  # every event stays; items are numbered from the log
    if catalog is not None:
        events = _without_textless_items(events, item_uniques, catalog, missing_text, path, notes)
    # in content order first: exact repeats then sit side by side, and the drops keep the order
    events = _without_repeats(
        _in_content_order(events, user_uniques, item_uniques), notes, dates_only
    )
    events, few = _without_short_histories(events, user_uniques, min_interactions, notes)
    if time_col is not None and (note := _one_time_note(events, time_col)) is not None:
        notes.append(note)
    if len(events.user) == 0:
        raise SemidError(
            f"{path}: no interactions left after the drops above ({'; '.join(notes)}); "
            f"lower min_interactions (CLI --min-interactions) or fix the files"
        )
    user_ids, first_users = pd.factorize(events.user, sort=False)
    user_keys = user_uniques[first_users]
    item_ids, item_keys, item_texts = _numbered_items(events, item_uniques, catalog, notes)
    log = InteractionLog(
        users=torch.from_numpy(user_ids.astype(np.int64)),
        items=torch.from_numpy(np.asarray(item_ids, dtype=np.int64)),
        timestamps=torch.from_numpy(events.times),
        num_users=len(user_keys),
        num_items=len(item_keys),
        item_keys=item_keys,
    )
    label = name or file_stem(path)
    left_out = frozenset(str(u) for u in few)
    return RecDataset(
        label, [str(u) for u in user_keys], item_keys, item_texts, log, notes, left_out
    )


def _check_options(columns: dict[str, str], missing_text: str, min_interactions: int) -> None:
    unknown = sorted(set(columns) - set(ROLES))
    if unknown:
        raise SemidError(
            f"--columns names unknown role(s) {', '.join(unknown)}; roles: {', '.join(ROLES)}"
        )
    if missing_text not in MISSING_TEXT:
        raise SemidError(f"missing_text must be 'error', 'drop' or 'keep', got {missing_text!r}")
    if min_interactions < 1:
        raise SemidError(
            f"min_interactions (CLI --min-interactions) must be >= 1, got {min_interactions}"
        )


def _without_textless_items(events: _Events, item_uniques: np.ndarray, catalog: _ItemTexts,
                            missing_text: str, path: Path, notes: list[str]) -> _Events:  # fmt: skip
    """The events whose item has a text in the items file; the others raise, or are dropped with
    a note when ``missing_text`` is 'drop'."""
    has_text = catalog.keys[[bool(t.strip()) for t in catalog.texts]]
    missing = ~pd.Index(item_uniques).isin(has_text)[events.item]
    if not missing.any():
        return events
    n, k = int(missing.sum()), len(pd.unique(events.item[missing]))
    first = item_uniques[events.item[missing][0]]
    # (items file's key, log's key): one id written two ways, '28.0' beside '28', say
    twins = look_alike_across(item_uniques[pd.unique(events.item[missing])], catalog.keys)
    why = "" if twins is None else (f"the items file writes {twins[0]!r} where the log writes "
                                    f"{twins[1]!r}: ids are compared as text")  # fmt: skip
    textless = (f"{counted(n, 'interaction')} {'names' if n == 1 else 'name'} "
                f"{counted(k, 'item')} without text in {catalog.path} (first: {first!r})")  # fmt: skip
    if missing_text == "error" and twins is not None:
        raise SemidError(f"{path}: {textless}; {why}, so write each id one way in both files (or "
                         "drop items without text: --missing-text drop)")  # fmt: skip
    if missing_text == "error":
        listed = bool(pd.Index(catalog.keys).isin([first]).any())  # there, with an empty text
        fix = "give them a text in the items file" if listed else "add them to the items file"
        raise SemidError(f"{path}: {textless}; {fix} or drop them (--missing-text drop; in "
                         "Python missing_text='drop')")  # fmt: skip
    notes.append(
        f"dropped {counted(n, 'interaction')} with {counted(k, 'item')} without text in "
        f"{catalog.path}{f' ({why})' if why else ''}"
    )
    return events.kept(~missing)


def _without_repeats(events: _Events, notes: list[str], dates_only: bool = False) -> _Events:
    """The events less exact repeats (same user, item and time: double-logged), with a note
    (``dates_only``: the times are days, so the note says why repeats of a day tie);
    ``events`` in `_in_content_order`, where a repeat follows the event it repeats."""
    repeated = np.zeros(len(events.user), dtype=bool)
    repeated[1:] = ((events.times[1:] == events.times[:-1]) & (events.user[1:] == events.user[:-1])
                    & (events.item[1:] == events.item[:-1]))  # fmt: skip
    if not repeated.any():
        return events
    same = ("same user, item and day: the times are dates, so events of one item on one day "
            "look alike; give times of day to keep them" if dates_only else "same user, item and time")  # fmt: skip
    notes.append(f"dropped {counted(int(repeated.sum()), 'repeated row')} ({same})")
    return events.kept(~repeated)


def _without_short_histories(events: _Events, user_uniques: np.ndarray, min_interactions: int,
                             notes: list[str]) -> tuple[_Events, np.ndarray]:  # fmt: skip
    """The events of users with at least ``min_interactions``, and the keys of the users dropped."""
    user_counts = np.bincount(events.user, minlength=len(user_uniques))
    few = user_uniques[(user_counts > 0) & (user_counts < min_interactions)]
    if not len(few):
        return events, few
    keep = user_counts[events.user] >= min_interactions
    notes.append(
        f"dropped {counted(len(few), 'user')} with fewer than {min_interactions} interactions "
        f"({counted(int((~keep).sum()), 'interaction')})"
    )
    return events.kept(keep), few


def _in_content_order(
    events: _Events, user_uniques: np.ndarray, item_uniques: np.ndarray
) -> _Events:
    """The events by time, then user key, then item key: an order independent of the file's rows
    (but for exact repeats, which are alike)."""
    # ranks of the keys in string order, one int64 per (user, item) pair: a two-key lexsort is
    # 1.6x faster than three; it overflows only past 2**31 distinct users and items each, far
    # beyond what fits in memory here
    pairs = len(user_uniques) * len(item_uniques)
    pair_rank = (_string_ranks(user_uniques)[events.user] * len(item_uniques)
                 + _string_ranks(item_uniques)[events.item])  # fmt: skip
    times = events.times
    if times.dtype.kind == "i" and len(times):  # one int64 key when it fits: a sort 5x faster
        span = int(times.max()) - int(times.min())
        if span < (np.iinfo(np.int64).max - pairs) // max(pairs, 1):
            return events.kept(np.argsort((times - times.min()) * pairs + pair_rank))
    return events.kept(np.lexsort((pair_rank, times)))


# the hint of the note on items no interaction names, which an index of vectors (no texts) leaves out
ADD_BY_TEXT_HINT = " (add them to a trained run with "


def without_add_by_text_hint(note: str) -> str:
    """A data note without its hint to add items by text (`ADD_BY_TEXT_HINT`), for a run whose
    index takes new items' vectors, not their texts."""
    return note.split(ADD_BY_TEXT_HINT, 1)[0]


def _numbered_items(events: _Events, item_uniques: np.ndarray, catalog: _ItemTexts | None,
                    notes: list[str]) -> tuple[np.ndarray, list[str], list[str] | None]:  # fmt: skip
    """Each event's item number, the item keys and their texts: in the items file's order (its
    items without events dropped, with a note), else by first appearance in the events."""
    if catalog is None:
        item_ids, first_items = pd.factorize(events.item, sort=False)
        return item_ids, [str(k) for k in item_uniques[first_items]], None
    used = catalog.keys.isin(item_uniques[np.unique(events.item)])
    if not used.all():
        # `index add` refuses an item without text: those must get one before the file is added
        textless = sum(not t.strip() for t, u in zip(catalog.texts, used, strict=True) if not u)
        has = "has" if textless == 1 else "have"
        once = f" once the {counted(textless, 'item')} without text {has} one" if textless else ""
        notes.append(
            f"dropped {counted(int((~used).sum()), 'item')} of {catalog.path} that no kept interaction "
            f"names{ADD_BY_TEXT_HINT}`semid index add RUN --items {catalog.path} --skip-indexed`{once})"
        )
    item_keys = [str(k) for k in catalog.keys[used]]
    item_texts = [t for t, u in zip(catalog.texts, used, strict=True) if u]
    item_ids = pd.Index(item_keys).get_indexer(item_uniques)[events.item]
    return item_ids, item_keys, item_texts


def _string_ranks(keys: np.ndarray) -> np.ndarray:
    """(K,) int64: each distinct key's rank in string (code-point) order."""
    ranks = np.empty(len(keys), dtype=np.int64)
    ranks[np.argsort(keys, kind="stable")] = np.arange(len(keys))
    return ranks


_A_ROLE = {"user": "a user", "item": "an item"}


def _check_key_columns(
    table: pa.Table,
    columns: dict[str, str],
    path: Path,
    items_table: pa.Table | None = None,
    items: str | os.PathLike | None = None,
    item_named: str | None = None,
) -> None:
    """One error naming every key column that the interactions file (user, item: ``columns``
    names its own) and the items file (item: ``item_named``, --columns item=) lack, when more
    than one is missing, so that one run tells them all (`find_column` names a single missing
    one, and a header that explains it)."""
    lacking = [("interactions file", path, table.column_names,
                [role for role, aliases in (("user", USER_COLUMNS), ("item", ITEM_COLUMNS))
                 if role not in columns and not matching_columns(table.column_names, aliases)])]  # fmt: skip
    if items_table is not None:
        headers = items_table.column_names
        named = item_named in map(column_name, headers)
        missing = [] if named or matching_columns(headers, ITEM_KEY_COLUMNS) else ["item"]
        lacking.insert(0, ("items file", Path(items), headers, missing))
    lacking = [entry for entry in lacking if entry[3]]
    if sum(len(roles) for *_, roles in lacking) < 2 or any(
        header_hint(h) for _, _, h, _ in lacking
    ):
        return
    accepted = {"user": "user, user_id, ...", "item": "item, item_id, ..."}
    said = [f"{what} {where} lacks {' and '.join(_A_ROLE[r] for r in roles)} column (accepted "
            f"names: {' and '.join(accepted[r] for r in roles)}; found: {', '.join(headers)})"
            for what, where, headers, roles in lacking]  # fmt: skip
    missing_roles = {r for *_, roles in lacking for r in roles}
    flag = ",".join(f"{r}=NAME" for r in ("user", "item") if r in missing_roles)
    both = sum("item" in roles for *_, roles in lacking) == 2
    same_name = (
        " (item= names the item column of both files: if they call it differently, rename one)"
    )
    raise SemidError(f"{', and '.join(said)}; rename them or pass --columns {flag}"
                     f"{same_name if both else ''}")  # fmt: skip


# a date with a time of day: 2016-03-07 17:58:53, 2016-03-07T17:58Z
_TIME_OF_DAY = re.compile(r"\d[T ]\d{1,2}:\d{2}")


# an ISO 8601 datetime with a time of day, as a whole value: 2016-03-07T17:58:53Z, 2016-03-07 17:58
_ISO_DATETIME = re.compile(
    r"^\s*\d{4}-\d{2}-\d{2}[T ]\d{1,2}:\d{2}(:\d{2}(\.\d+)?)?(Z|[+-]\d{2}:?\d{2})?\s*$"
)


def _datetime_column(table: pa.Table, used: tuple[str, ...]) -> tuple[str | None, bool]:
    """The time column of a log that has none of an accepted name, and whether it is a guess: a
    column named ``date`` whose first value has a time of day (Yelp's reviews: not a guess), else
    the one other column whose first values are datetimes (``when``, ``purchased``: a guess,
    which `_guessed_times` may still turn down). (None, False) when none or several are; a
    day-level date would tie every event of a day, so such a column is not the time unless named
    with --columns."""
    found = matching_columns(table.column_names, ("date",))  # Date, DATE, date:token as well
    if len(found) == 1:
        first = _first_values(table[found[0]], 1)
        if first and _TIME_OF_DAY.search(str(first[0])):
            return found[0], False
    candidates = [name for name in table.column_names
                  if name not in used and _holds_datetimes(table[name])]  # fmt: skip
    return (candidates[0], True) if len(candidates) == 1 else (None, False)


def _guessed_times(
    column: pa.ChunkedArray, name: str, users: np.ndarray, path: Path
) -> tuple[np.ndarray | None, str]:
    """Seconds from a column taken as the time by its values, and a note saying so; or None, and
    why it is not the time, when it would order the events no better than file order: a value
    on some row that is no datetime or is empty (an optional date, such as ``returned_at``), dates
    without a time of day (a day's events would tie), or one time for most users' events (a date
    of the user, such as ``signup``, not of the event)."""
    not_taken = f"column {name!r} holds datetimes, but is not taken as the time of the events: "
    try:
        times = _timestamps(column, path)
        _check_one_unit(times, path)
    except SemidError:
        return None, not_taken + ("some rows hold none (empty, or other text); pass --columns "
                                  f"timestamp={name} once every row has one")  # fmt: skip
    if _dates_only(times):
        return (
            None,
            not_taken + "its values are dates without a time of day, which tie a day's events",
        )
    one_time, users_count = _one_time_users(users, times)
    if one_time * 2 > users_count:
        return None, not_taken + (f"{one_time:,} of {users_count:,} users have every event at one "
                                  "time in it (a date of the user, not of each event?)")  # fmt: skip
    return times, (f"column {name!r} holds datetimes, so it is taken as the time of the events (no "
                   f"column has an accepted time name: {', '.join(TIME_COLUMNS)}); if it is not, "
                   "pass --columns timestamp=NAME for the time column, or remove it to keep file order")  # fmt: skip


def _holds_datetimes(column: pa.ChunkedArray) -> bool:
    """Whether ``column`` is of a datetime type, or its first values are ISO 8601 datetimes with a
    time of day written as text."""
    if pa.types.is_timestamp(column.type):
        return True
    values = _first_values(column, 20)
    return bool(values) and all(isinstance(v, str) and _ISO_DATETIME.match(v) for v in values)


def _first_values(column: pa.ChunkedArray, count: int) -> list[Any]:
    """The first ``count`` values of ``column`` that are not null."""
    return column.drop_null().slice(0, count).to_pylist()


def _no_time_note(table: pa.Table, used: tuple[str, ...]) -> str:
    """What a log without a timestamp column means, naming the columns that could hold the time."""
    others = [h for h in table.column_names if h not in used]
    which = f"column {others[0]}" if len(others) == 1 else f"one of {', '.join(others)}"
    hint = f"; if {which} is the time, pass --columns timestamp=NAME" if others else ""
    return (f"no timestamp column (accepted names: {', '.join(TIME_COLUMNS)}, or date when its "
            f"values have a time of day): file order is time order{hint}")  # fmt: skip


def _timestamps(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    """Seconds from integers, decimals or ISO 8601 datetimes: int64 when all are whole, else float64."""
    if column.null_count:
        row = int(np.flatnonzero(pc.is_null(column).to_numpy(zero_copy_only=False))[0])
        raise SemidError(
            f"{path} {row_label(path, row)}: empty timestamp; give every row one or drop the column"
        )
    kind = column.type
    if pa.types.is_string(kind) or pa.types.is_large_string(kind):
        empty = np.flatnonzero(
            pc.equal(pc.utf8_trim_whitespace(column), "").to_numpy(zero_copy_only=False)
        )
        if empty.size:
            raise SemidError(
                f"{path} {row_label(path, int(empty[0]))}: empty timestamp; give every row one or drop the column"
            )
        column = pc.utf8_trim_whitespace(column)  # ' 883603013' (a comma-space export)
        for target in (pa.int64(), pa.float64(), pa.timestamp("ns"), pa.timestamp("ns", "UTC")):
            try:
                return _timestamps(pc.cast(column, target), path)
            except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
                continue
        return _mixed_datetimes(column, path)
    if pa.types.is_integer(kind):
        return column.to_numpy().astype(np.int64)
    if pa.types.is_floating(kind):
        values = column.to_numpy()
        infinite = np.flatnonzero(~np.isfinite(values))
        if infinite.size:
            raise SemidError(f"{path} {row_label(path, int(infinite[0]))}: timestamp "
                             f"{values[infinite[0]]} is not a finite number; fix the timestamp column")  # fmt: skip
        return _whole_if_possible(values.astype(np.float64))
    if pa.types.is_timestamp(kind) or pa.types.is_date(kind):
        nanos = pc.cast(pc.cast(column, pa.timestamp("ns")), pa.int64()).to_numpy()
        if (nanos % 10**9 == 0).all():
            return np.floor_divide(nanos, 10**9).astype(np.int64)
        return nanos / 10**9
    raise SemidError(f"{path}: cannot read timestamps of type {kind}; use integer seconds")


def _check_one_unit(seconds: np.ndarray, path: Path) -> None:
    """SemidError when numeric timestamps mix seconds and milliseconds since 1970 (two logs merged),
    which would order the merged events by unit, not by time: dates from 1990 to 2100 in seconds
    (6.3e8 to 4.1e9) beside dates of those years in milliseconds (6.3e11 to 4.1e12). A count from
    another start (milliseconds since a first event) reaches both ranges only over 20 years."""
    in_seconds = np.flatnonzero((seconds >= 6.3e8) & (seconds < 4.1e9))
    in_millis = np.flatnonzero((seconds >= 6.3e11) & (seconds < 4.1e12))
    if in_seconds.size and in_millis.size:
        raise SemidError(
            f"{path}: the timestamp column mixes seconds ({row_label(path, int(in_seconds[0]))}: "
            f"{seconds[in_seconds[0]]}) and milliseconds ({row_label(path, int(in_millis[0]))}: "
            f"{seconds[in_millis[0]]}); write every timestamp in one unit"
        )


def _mixed_datetimes(column: pa.ChunkedArray, path: Path) -> np.ndarray:
    """Seconds from datetime strings that mix UTC offsets (ISO 8601 without one is taken as UTC)
    or forms (ISO 8601 and NAMED_DATETIME_FORMATS); the first value that is no datetime raises,
    naming its row."""
    values = pd.Series(column.to_pylist())
    parsed = pd.to_datetime(values, utc=True, format="ISO8601", errors="coerce")
    for named in NAMED_DATETIME_FORMATS:
        if not parsed.isna().any():
            break
        parsed = parsed.fillna(pd.to_datetime(values, utc=True, format=named, errors="coerce"))
    numbers = pd.to_numeric(values, errors="coerce")
    bad = np.flatnonzero((parsed.isna() & numbers.isna()).to_numpy())
    if bad.size:  # neither form: the row to fix (not the first number of a column of numbers)
        raise SemidError(
            f"{path} {row_label(path, int(bad[0]))}: timestamp {values[bad[0]]!r} is not integer "
            "seconds, a decimal, an ISO 8601 datetime or a dated form such as 'Mon Aug 01 13:41:57 "
            "-0700 2011'; fix the timestamp column"
        )
    number = np.flatnonzero(parsed.isna().to_numpy())
    if number.size:  # every value reads one way or the other, but not all the same way
        date = int(np.flatnonzero(parsed.notna().to_numpy())[0])
        raise SemidError(
            f"{path}: the timestamp column mixes numbers ({row_label(path, int(number[0]))}: "
            f"{values[number[0]]!r}) and datetimes ({row_label(path, date)}: {values[date]!r}); "
            "write every timestamp one way"
        )
    return _timestamps(pa.chunked_array([pa.array(parsed)]), path)


def _dates_only(seconds: np.ndarray) -> bool:
    """Whether several events all fall at midnight (UTC): day-level dates read as times."""
    return len(seconds) > 1 and bool((np.asarray(seconds) % 86400 == 0).all())


def _one_time_users(users: np.ndarray, times: np.ndarray) -> tuple[int, int]:
    """(users with several events, all at one time; users) of events by ``users`` at ``times``."""
    grouped = pd.DataFrame({"user": users, "time": times}).groupby("user")["time"]
    return int(((grouped.min() == grouped.max()) & (grouped.size() > 1)).sum()), grouped.ngroups


def _one_time_note(events: _Events, time_col: str) -> str | None:
    """A note when most users have every event at one time (an export time, say), which then
    orders none of their events; None otherwise."""
    one_time, users = _one_time_users(events.user, events.times)
    if one_time * 2 <= users:
        return None
    return (f"{one_time:,} of {users:,} users have every event at one time in column "
            f"{time_col!r} (an export or batch time?): their events are ordered by item id as "
            "text, so their test targets are arbitrary; if the file's order is the time order, "
            "remove the column (without a timestamp, file order is time order)")  # fmt: skip


def _look_alike(keys: np.ndarray) -> tuple[str, str] | None:
    """Two distinct keys that are one number written two ways, with leading zeros or a '.0'
    (``'007'`` and ``'7'``, ``'07'`` and ``'7.0'``): likely one id; None when there are none.
    Only such odd forms can have a twin, so the rest of the keys are only looked up."""
    strings = pa.array(keys, pa.string())
    odd, plain = _odd_and_plain_forms(strings)
    if len(odd) == 0:
        return None
    with_plain = pc.is_in(plain, value_set=strings).to_numpy(zero_copy_only=False)
    if with_plain.any():  # '007' beside '7'
        first = int(np.flatnonzero(with_plain)[0])
        return str(plain[first]), str(odd[first])
    forms = pd.Series(plain.to_numpy(zero_copy_only=False))
    twins = np.flatnonzero(forms.duplicated(keep=False).to_numpy())  # '07' beside '7.0'
    if not twins.size:
        return None
    same = np.flatnonzero((forms == forms[twins[0]]).to_numpy())
    return str(odd[int(same[0])]), str(odd[int(same[1])])


def twin_key_notes(keys: np.ndarray, role: str) -> list[str]:
    """Notes on distinct ``keys`` (ids of ``role``: user, item, document) that look like one id:
    differing only by leading zeros or a ``.0``, or only by Unicode form; read as two."""
    notes = []
    twins = _look_alike(keys)
    if twins is not None:
        notes.append(f"{role} ids {twins[0]!r} and {twins[1]!r} differ only by leading zeros "
                     f"or a '.0', and are read as two {role}s (ids are compared as text); "
                     f"write one id one way if they are one {role}")  # fmt: skip
    forms = _unicode_twins(keys)
    if forms is not None:
        notes.append(f"{role} ids {forms[0]!r} and {forms[1]!r} are one text in two Unicode "
                     f"forms (composed and decomposed accents, as Windows and macOS write "
                     f"them), and are read as two {role}s; save the file in one form (NFC)")  # fmt: skip
    return notes


def _unicode_twins(keys: np.ndarray) -> tuple[str, str] | None:
    """Two distinct keys that are equal once Unicode-normalised (NFC): ``'café'`` composed and
    decomposed; None when there are none. Only keys beyond ASCII can have such a twin."""
    strings = pa.array(keys, pa.string())
    wide = pc.filter(strings, pc.invert(pc.string_is_ascii(strings)))
    forms = pd.Series(pc.utf8_normalize(wide, form="NFC").to_numpy(zero_copy_only=False))
    twins = np.flatnonzero(forms.duplicated(keep=False).to_numpy())
    if not twins.size:
        return None
    same = np.flatnonzero((forms == forms[twins[0]]).to_numpy())
    return str(wide[int(same[0])]), str(wide[int(same[1])])


def _odd_and_plain_forms(strings: pa.Array) -> tuple[pa.Array, pa.Array]:
    """The keys written as a number with leading zeros or a '.0' (``'007'``, ``'7.0'``), and each
    of them written plainly (``'7'``)."""
    odd = pc.filter(strings, pc.match_substring_regex(strings, r"^(0+\d+(\.0+)?|\d+\.0+)$"))
    plain = pc.replace_substring_regex(
        pc.replace_substring_regex(odd, r"\.0+$", ""), r"^0+(\d)", r"\1"
    )
    return odd, plain


def look_alike_across(new: Sequence[str], known: Sequence[str]) -> tuple[str, str] | None:
    """A known key and a new one that are one number written two ways (an indexed ``'7'`` and a
    new ``'7.0'`` or ``'007'``, or the other way round), as (known, new); None when none is."""
    new_keys, known_keys = pa.array(list(new), pa.string()), pa.array(list(known), pa.string())
    for odd_side, other, odd_is_new in (
        (new_keys, known_keys, True),
        (known_keys, new_keys, False),
    ):
        odd, plain = _odd_and_plain_forms(odd_side)
        found = np.flatnonzero(pc.is_in(plain, value_set=other).to_numpy(zero_copy_only=False))
        if found.size:
            pair = (str(plain[int(found[0])]), str(odd[int(found[0])]))
            return pair if odd_is_new else pair[::-1]
    return None


def _whole_if_possible(seconds: np.ndarray) -> np.ndarray:
    """int64 seconds when every value is whole, else the float64 values unchanged."""
    whole = np.floor(seconds)
    return whole.astype(np.int64) if (whole == seconds).all() else seconds


def read_item_texts(
    path: str | os.PathLike, columns: dict[str, str] | None = None
) -> tuple[list[str], list[str]]:
    """Keys and texts of an items file, read as ``--items`` is at training (an item column, and a
    text column or other columns joined as ``"column: value"``; ``columns`` as the run was given
    them); an item without text raises."""
    path = Path(path)
    keys, texts, _ = _read_items(path, columns or {}, columns_option=False)  # `index add` has none
    empty = [i for i, text in enumerate(texts) if not text.strip()]
    if empty:
        raise SemidError(
            f"{path} {row_label(path, empty[0])}: item {keys[empty[0]]!r} has no text; give every item one"
        )
    return [str(k) for k in keys], texts


def item_text_table(
    path: str | os.PathLike, columns: dict[str, str] | None = None
) -> dict[str, str]:
    """Each item's text in an items file read as ``--items`` is (items without text left out)."""
    keys, texts, _ = _read_items(Path(path), columns or {}, columns_option=False)
    return {str(k): t for k, t in zip(keys, texts, strict=True) if t.strip()}


def _read_items(path: Path, columns: dict[str, str], columns_option: bool = True,
                table: pa.Table | None = None) -> tuple[np.ndarray, list[str], str]:  # fmt: skip
    """Item keys (object array, file order), one text per item and the key column's name;
    duplicate keys raise. An explicit item column the file lacks names the interactions file's.
    ``columns_option``: whether the command takes ``--columns`` (see `find_column`); ``table``:
    the file, when already read."""
    what = "items file"
    if table is None:
        table = read_table(path, what)
    explicit = columns.get("item")
    if explicit is not None and explicit not in map(column_name, table.column_names):
        explicit = None  # the mapping named the interactions file's column
    key_col = find_column(table, "item", ITEM_KEY_COLUMNS, path, what, explicit,
                          columns_option=columns_option)  # fmt: skip
    keys = key_strings(table[key_col], path, "item id", trim=True)
    dup = pd.Index(keys).duplicated()
    if dup.any():
        row = int(np.flatnonzero(dup)[0])
        first = int(np.flatnonzero(keys == keys[row])[0])
        raise SemidError(
            f"{path} {row_label(path, row)} repeats item {keys[row]!r} (first at "
            f"{row_label(path, first)}); give each item one row"
        )
    explicit = columns.get("text")
    if explicit is not None and "+" in explicit:  # text=title+brand: those columns, joined
        names = [name.strip() for name in explicit.split("+")]
        if not all(names):
            raise SemidError(f"--columns text={explicit}: an empty column name; write e.g. "
                             "text=title+categories")  # fmt: skip
        chosen = [
            find_column(table, "text", (), path, what, name, True, columns_option) for name in names
        ]
        return keys, _joined_texts(table, chosen), column_name(key_col)
    text_col = find_column(table, "text", ("text",), path, what, explicit, False, columns_option)
    if text_col is not None:
        values = table[text_col].to_pylist()
        return keys, [plain_text(v) for v in values], column_name(key_col)
    others = [c for c in table.column_names if c != key_col]
    if not others:
        raise SemidError(
            f"{path} has only the item column; add a text column (or title, genres, ...)"
        )
    return keys, _joined_texts(table, others), column_name(key_col)


def _joined_texts(table: pa.Table, columns: list[str]) -> list[str]:
    """One text per row: the non-empty cells of ``columns`` as ``"column: value"``, joined by "; "."""
    cells = {c: [plain_text(v) for v in table[c].to_pylist()] for c in columns}
    return [
        "; ".join(f"{column_name(c)}: {cells[c][row]}" for c in columns if cells[c][row])
        for row in range(table.num_rows)
    ]
