"""Words in messages: ``counted(1, "row")`` is "1 row", ``counted(2000, "row")`` "2,000 rows";
``json_kind([1])`` is "a list"; ``example_key("196", ["c1", "c196"])`` is "'c196'";
``did_you_mean("mmgrc", ["mmgrec", "pop"])`` is " (did you mean 'mmgrec'?)"."""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Sequence
from typing import Any


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with thousands separators and ``noun``, pluralized (``plural``, else noun + "s")."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


# JSON's names for the Python values json.loads gives
_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a number",
               float: "a number", bool: "true or false", type(None): "null"}  # fmt: skip


def json_kind(value: object) -> str:
    """What a parsed JSON value is, in JSON's words ("a list", "a string", "null")."""
    return _JSON_KINDS.get(type(value), type(value).__name__)


def did_you_mean(given: object, known: Iterable[object]) -> str:
    """`` (did you mean 'X'?)`` for the one of ``known`` nearest a misspelt ``given`` (``mmgrc``:
    ``mmgrec``), to follow the word it corrects; "" when none is near."""
    close = difflib.get_close_matches(str(given), [str(k) for k in known], n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def example_key(given: str, keys: Iterable[str]) -> str | None:
    """A key to show beside an unknown ``given`` one, quoted: the first of ``keys`` that contains
    it (``196`` -> ``'c196'``), else the first key; None when there are none. One linear scan, no
    fuzzy matching, so that a server answers a bad request at once."""
    first = None
    for key in keys:
        if given and given in key:
            return repr(key)
        first = first or repr(key)
    return first


def short_answers_note(
    answers: Sequence[dict[str, Any]], k: int, catalogue: int, task: str, beams_option: str
) -> str | None:
    """A one-line note when some answers hold fewer than ``k`` keys, saying why (a user's history
    is never recommended back; else a wider ``beams_option`` may find more); None when none do."""
    short = [len(a["keys"]) for a in answers if len(a["keys"]) < k]
    if not short:
        return None
    why = ("a user's history is never recommended back" if task == "recommend"
           else f"a wider {beams_option} may find more")  # fmt: skip
    return (f"{counted(len(short), 'input')} of {len(answers)} got fewer than {k} answers (as "
            f"few as {min(short)}): the catalogue has {catalogue} items, and {why}")  # fmt: skip
