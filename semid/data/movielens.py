"""MovieLens loaders: RecBole atomic files and the public GroupLens formats, to integer-id logs.

Integer ids, independent of the ratings file's row order and the same as for the ratings exported
as an interactions file (:mod:`semid.data.interaction_files`): users are numbered by first appearance
in (timestamp, user key, item key) order; items follow the order of the item file (movies.dat,
u.item, NAME.item). Items listed in the item file that nobody rated are dropped, so every item id
has at least one interaction (ml-1m lists 3,883 movies, 3,706 of them rated). Every rating counts
as one implicit interaction; the rating value is not kept.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import torch

from semid.data.logs import InteractionLog, RecDataset
from semid.data.tables import data_files_hint
from semid.errors import SemidError

# Column order of the 19 genre flags in ml-100k's u.item (the same as its u.genre).
ML100K_GENRES = [
    "unknown", "Action", "Adventure", "Animation", "Children's", "Comedy", "Crime", "Documentary",
    "Drama", "Fantasy", "Film-Noir", "Horror", "Musical", "Mystery", "Romance", "Sci-Fi",
    "Thriller", "War", "Western",
]  # fmt: skip

FORMATS_HELP = (
    "a RecBole folder (NAME.inter + NAME.item), or a GroupLens folder "
    "(ratings.dat + movies.dat, ratings.csv + movies.csv, or u.data + u.item)"
)


def is_movielens_folder(folder: Path) -> bool:
    """Whether `folder` holds a RecBole ``.inter`` file or a GroupLens ratings file."""
    return any(folder.glob("*.inter")) or any((folder / r).exists() for r, _, _ in _GROUPLENS)


def item_text(title: str, year: str | None, genres: list[str]) -> str:
    """The text embedded for one movie: 'Toy Story (1995). Genres: Animation, Comedy'."""
    text = title.strip()
    if year and not text.endswith(f"({year})"):
        text = f"{text} ({year})"
    genres = [g for g in genres if g and g != "(no genres listed)"]
    return f"{text}. Genres: {', '.join(genres)}" if genres else text


def load_movielens(path: str | Path) -> RecDataset:
    """Load a MovieLens folder in RecBole atomic or GroupLens format into a RecDataset."""
    folder = Path(path)
    if not folder.is_dir():
        raise SemidError(f"dataset folder {folder} not found; pass {FORMATS_HELP}")
    if list(folder.glob("*.inter")):
        return _load_recbole(folder)
    for ratings, movies, reader in _GROUPLENS:
        if (folder / ratings).exists():
            if not (folder / movies).exists():
                raise SemidError(f"{folder / ratings} has no {movies} beside it; add the movie "
                                 f"file, or make an interactions file of it: "
                                 f"{as_csv_hint(folder / ratings)}")  # fmt: skip
            log, items = reader(folder / ratings, folder / movies)
            return _build(folder.name, log, items, source=folder / ratings)
    raise SemidError(
        f"no MovieLens files found in {folder}{data_files_hint(folder)}; pass {FORMATS_HELP}"
    )


def _read_text(path: Path) -> str:
    # GroupLens ml-1m files are latin-1; newer releases and RecBole files are UTF-8.
    data = path.read_bytes()
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        return data.decode("latin-1")


def _read_table(path: Path, sep: str, header: int | None = 0) -> pd.DataFrame:
    """Every cell as a string: ids such as '007' or 'Toy Story (1995)' must not be reinterpreted."""
    table = _read_table_fast(path, sep, header)
    if table is not None:
        return table
    try:
        return pd.read_csv(
            path, sep=sep, header=header, dtype=str, keep_default_na=False,
            quoting=csv.QUOTE_NONE, encoding="utf-8", encoding_errors="replace",
        )  # fmt: skip
    except (pd.errors.ParserError, pd.errors.EmptyDataError) as e:
        raise SemidError(
            f"cannot parse {path}: {' '.join(str(e).split())}; check the file format ({FORMATS_HELP})"
        ) from None


def _read_table_fast(path: Path, sep: str, header: int | None) -> pd.DataFrame | None:
    """The table as pandas reads it, read by pyarrow (3x faster on ml-1m); None for a file that
    pyarrow refuses (ragged rows, invalid UTF-8, no rows) or whose header repeats or lacks a name:
    pandas then reads it, and names what is wrong."""
    read = pacsv.ReadOptions(autogenerate_column_names=header is None, block_size=1 << 24)
    parse = pacsv.ParseOptions(delimiter=sep, quote_char=False)
    try:
        names = pacsv.open_csv(path, read, parse).schema.names
        if len(set(names)) != len(names) or "" in names:
            return None
        convert = pacsv.ConvertOptions(column_types=dict.fromkeys(names, pa.string()))
        table = pacsv.read_csv(path, read, parse, convert)
    except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, UnicodeDecodeError):
        return None
    frame = table.to_pandas()
    # pandas numbers headerless columns 0..n-1
    return frame if header is not None else frame.set_axis(range(table.num_columns), axis=1)


def _load_recbole(folder: Path) -> RecDataset:
    inter_files = sorted(folder.glob("*.inter"))
    if len(inter_files) > 1:
        names = ", ".join(p.name for p in inter_files)
        raise SemidError(f"{folder} holds several .inter files ({names}); pass a folder with one")
    inter_path = inter_files[0]
    inter = _strip_types(_read_table(inter_path, "\t"), inter_path)
    _require(inter, ["user_id", "item_id", "timestamp"], inter_path)
    log = inter[["user_id", "item_id", "timestamp"]].set_axis(["user", "item", "timestamp"], axis=1)

    item_path = inter_path.with_suffix(".item")
    items = None
    if item_path.exists():
        table = _strip_types(_read_table(item_path, "\t"), item_path)
        _require(table, ["item_id"], item_path)
        title = _first_column(table, ["movie_title", "title"])
        year = _first_column(table, ["release_year", "year"])
        genre = _first_column(table, ["genre", "genres", "class"])
        texts = [
            item_text(t or k, _year(y), g.split() if g else [])
            for k, t, y, g in zip(table["item_id"], title, year, genre, strict=True)
        ]
        items = pd.DataFrame({"key": table["item_id"], "text": texts})
    return _build(inter_path.stem, log, items, source=inter_path)


def _strip_types(table: pd.DataFrame, path: Path) -> pd.DataFrame:
    """RecBole headers are 'name:type'; keep the names."""
    return table.rename(columns=lambda c: str(c).strip().split(":")[0])


def _require(table: pd.DataFrame, columns: list[str], path: Path) -> None:
    missing = [c for c in columns if c not in table.columns]
    if missing:
        found = ", ".join(map(str, table.columns))
        raise SemidError(
            f"{path} lacks column(s) {', '.join(missing)} (found: {found}); fix the header"
        )


def _first_column(table: pd.DataFrame, names: list[str]) -> list[str | None]:
    for name in names:
        if name in table.columns:
            return table[name].tolist()
    return [None] * len(table)


def _year(value: str | None) -> str | None:
    # RecBole types years as float ('1995.0') in some files; ml-100k has junk such as 'unkonwn'.
    try:
        return str(int(float(value))) if value else None
    except ValueError:
        return None


def _read_grouplens_dat(ratings: Path, movies: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    # 'UserID::MovieID::Rating::Timestamp': splitting on ':' keeps pandas' fast C parser; the
    # empty fields between the two colons are skipped by usecols.
    log = _read_table(ratings, ":", header=None)
    if log.shape[1] != 7:
        raise SemidError(f"{ratings} is not 'UserID::MovieID::Rating::Timestamp'; check the file")
    log = log[[0, 2, 6]].set_axis(["user", "item", "timestamp"], axis=1)
    rows = []
    for n, line in enumerate(_read_text(movies).splitlines(), start=1):
        if line.strip():
            parts = line.split("::")
            if len(parts) < 3:
                raise SemidError(f"{movies} line {n} is not 'MovieID::Title::Genres'; fix the line")
            key, genres = parts[0], parts[-1]
            rows.append((key, item_text("::".join(parts[1:-1]), None, genres.split("|"))))
    return log, pd.DataFrame(rows, columns=["key", "text"])


def _read_grouplens_csv(ratings: Path, movies: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    # ml-latest / ml-20m style: quoted CSV with 'userId,movieId,rating,timestamp' headers.
    log = pd.read_csv(ratings, dtype=str, keep_default_na=False)
    _require(log, ["userId", "movieId", "timestamp"], ratings)
    log = log[["userId", "movieId", "timestamp"]].set_axis(["user", "item", "timestamp"], axis=1)
    table = pd.read_csv(movies, dtype=str, keep_default_na=False)
    _require(table, ["movieId", "title", "genres"], movies)
    texts = [
        item_text(t, None, g.split("|"))
        for t, g in zip(table["title"], table["genres"], strict=True)
    ]
    return log, pd.DataFrame({"key": table["movieId"], "text": texts})


def _read_ml100k(ratings: Path, movies: Path) -> tuple[pd.DataFrame, pd.DataFrame]:
    # u.data: 'user item rating timestamp' tab-separated; u.item: 'id|title|date|video|url|19 flags'.
    log = _read_table(ratings, "\t", header=None)
    if log.shape[1] != 4:
        raise SemidError(
            f"{ratings} is not 'user<TAB>item<TAB>rating<TAB>timestamp'; check the file"
        )
    log = log.set_axis(["user", "item", "rating", "timestamp"], axis=1)
    rows = []
    for n, line in enumerate(_read_text(movies).splitlines(), start=1):
        if line.strip():
            parts = line.split("|")
            if len(parts) != 5 + len(ML100K_GENRES):
                raise SemidError(f"{movies} line {n} does not have 24 '|' fields; fix the line")
            genres = [
                g for g, flag in zip(ML100K_GENRES, parts[5:], strict=True) if flag.strip() == "1"
            ]
            rows.append((parts[0], item_text(parts[1], None, genres)))
    return log, pd.DataFrame(rows, columns=["key", "text"])


_GROUPLENS = [  # ratings file, movies file, reader
    ("ratings.dat", "movies.dat", _read_grouplens_dat),
    ("ratings.csv", "movies.csv", _read_grouplens_csv),
    ("u.data", "u.item", _read_ml100k),
]
# the files of a MovieLens folder (ratings.csv aside: it reads as an interactions file)
MOVIELENS_FILES = frozenset({"ratings.dat", "movies.dat", "u.data", "u.item"})


def as_csv_hint(ratings: Path) -> str:
    """How to turn a GroupLens ratings file (``user::item::rating::time`` lines, or u.data's
    tabs) into an interactions CSV, which takes any items file (--items) or none."""
    sep = "\\t" if ratings.name == "u.data" else "::"
    return (
        f"(echo user,item,rating,timestamp; sed 's/{sep}/,/g' {ratings}) > ratings.csv, then "
        "pass ratings.csv (with --items FILE for item texts)"
    )


def _timestamps(values: pd.Series, source: Path) -> np.ndarray:
    array = pa.array(values)
    if array.null_count == 0:  # a missing value is refused below, by its row
        try:  # integers written as such (almost every file): exact, and 10x faster than to_numeric
            return pc.cast(array, pa.int64()).to_numpy(zero_copy_only=False)
        except (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError):
            pass
    ts = pd.to_numeric(values, errors="coerce").to_numpy()
    bad = np.flatnonzero(~np.isfinite(ts) | (ts != np.round(ts)))
    if bad.size:
        raise SemidError(
            f"{source}: {bad.size} timestamp(s) are not whole numbers (first: row {bad[0] + 1}, "
            f"{values.iloc[bad[0]]!r}); timestamps must be integer seconds"
        )
    return ts.astype(np.int64)


def _build(name: str, log: pd.DataFrame, items: pd.DataFrame | None, source: Path) -> RecDataset:
    """Map string keys to integer ids (see the module docstring for the order)."""
    if len(log) == 0:
        raise SemidError(f"{source} holds no interactions; pass a non-empty ratings file")
    timestamps = _timestamps(log["timestamp"], source)
    # content order, as for interaction files: `--users N` then keeps the same users for both;
    # keys are sorted once and rows handled by their codes (reordering the text columns is slow)
    user_by_key, user_uniques = pd.factorize(log["user"].astype(str), sort=True)
    item_by_key, item_uniques = pd.factorize(log["item"].astype(str), sort=True)
    order = np.lexsort((item_by_key, user_by_key, timestamps))
    timestamps, item_by_key = timestamps[order], item_by_key[order]
    user_codes, first_users = pd.factorize(user_by_key[order], sort=False)
    user_keys = np.asarray(user_uniques)[first_users]
    if items is None:  # no item file: items in order of first appearance, the key as text
        item_codes, first_items = pd.factorize(item_by_key, sort=False)
        item_keys = np.asarray(item_uniques)[first_items].tolist()
        texts = list(item_keys)
    else:
        dup = items["key"].duplicated()
        if dup.any():
            raise SemidError(
                f"item file beside {source} lists {items['key'][dup].iloc[0]!r} twice; keys must be unique"
            )
        rated = items[items["key"].isin(item_uniques)]
        item_codes = pd.Index(rated["key"]).get_indexer(item_uniques)[item_by_key]
        unknown = np.flatnonzero(item_codes < 0)
        if unknown.size:
            raise SemidError(
                f"{source}: {unknown.size} rating(s) name items missing from the item file "
                f"(first: {item_uniques[item_by_key[unknown[0]]]!r}); use the item file of the same release"
            )
        item_keys, texts = rated["key"].tolist(), rated["text"].tolist()
    interactions = InteractionLog(
        users=torch.from_numpy(user_codes.astype(np.int64)),
        items=torch.from_numpy(item_codes.astype(np.int64)),
        timestamps=torch.from_numpy(timestamps),
        num_users=len(user_keys),
        num_items=len(item_keys),
        item_keys=item_keys,
    )
    return RecDataset(name, list(map(str, user_keys)), item_keys, texts, interactions)
