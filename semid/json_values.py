"""Type checks of values read from JSON (HTTP bodies, JSON Lines, model configs), where Python's
`True` and `False` pass for the integers 1 and 0 unless a check says otherwise."""

from __future__ import annotations

from typing import Any


def is_integer(value: Any) -> bool:
    """Whether `value` is an integer and not `true` or `false`."""
    return isinstance(value, int) and not isinstance(value, bool)


def is_key(value: Any) -> bool:
    """Whether `value` can name a user, an item, a document or an input: a string, or an integer
    standing for its digits (not `true` or `false`)."""
    return isinstance(value, str) or is_integer(value)
