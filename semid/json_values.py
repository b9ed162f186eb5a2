"""Type checks of values read from JSON (HTTP bodies, JSON Lines, model configs), where Python's
`True` and `False` pass for the integers 1 and 0 unless a check says otherwise."""

from __future__ import annotations

import numbers
from collections.abc import Container
from typing import Any


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
