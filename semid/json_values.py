"""Type checks of values read from JSON (HTTP bodies, JSON Lines, model configs), where Python's
`True` and `False` pass for the integers 1 and 0 unless a check says otherwise."""

from __future__ import annotations

import json
import numbers
from collections.abc import Container
from typing import Any


def as_json(value: Any) -> str:
    """``value`` as a client wrote it in JSON (null, true, ...), cut to 60 characters; repr for
    what JSON cannot write."""
    try:
        return json.dumps(value)[:60]
    except (TypeError, ValueError):
        return repr(value)[:60]


def shown_key(key: str, limit: int = 60) -> str:
    """``key`` quoted for a message, its first ``limit`` characters and "..." when longer: an
    error echoing a client's 10 MB id would be 10 MB."""
    return repr(key) if len(key) <= limit else f"{key[:limit]!r}..."


def is_integer(value: Any) -> bool:
    """Whether `value` is an integer (Python's, or numpy's from a caller's array) and not `true`
    or `false`."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_key(value: Any) -> bool:
    """Whether `value` can name a user, an item, a document or an input: a string, or an integer
    standing for its digits (not `true` or `false`)."""
    return isinstance(value, str) or is_integer(value)


def known_key(key: str, known: Container[str]) -> str:
    """``key``, or ``key`` without the spaces around it when only that is in ``known``: ids are
    read from data files without them, and a typed or pasted id may carry them."""
    if key in known:
        return key
    stripped = key.strip()
    return stripped if stripped in known else key
