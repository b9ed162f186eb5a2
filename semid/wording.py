"""Counts in messages: ``counted(1, "row")`` is "1 row", ``counted(2000, "row")`` "2,000 rows"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with thousands separators and ``noun``, pluralized (``plural``, else noun + "s")."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"
