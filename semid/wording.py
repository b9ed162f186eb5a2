"""Words in messages: ``counted(1, "row")`` is "1 row", ``counted(2000, "row")`` "2,000 rows";
``json_kind([1])`` is "a list"."""

from __future__ import annotations


def counted(n: int, noun: str, plural: str | None = None) -> str:
    """``n`` with thousands separators and ``noun``, pluralized (``plural``, else noun + "s")."""
    return f"{n:,} {noun if n == 1 else plural or noun + 's'}"


# JSON's names for the Python values json.loads gives
_JSON_KINDS = {dict: "an object", list: "a list", str: "a string", int: "a number",
               float: "a number", bool: "true or false", type(None): "null"}  # fmt: skip


def json_kind(value: object) -> str:
    """What a parsed JSON value is, in JSON's words ("a list", "a string", "null")."""
    return _JSON_KINDS.get(type(value), type(value).__name__)
