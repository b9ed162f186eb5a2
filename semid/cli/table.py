"""Plain-text tables for the terminal."""

from __future__ import annotations

import unicodedata
from collections.abc import Sequence
from typing import Any

from semid.json_values import is_integer


def _cell(value: Any) -> str:
    """Floats below 100 (metrics, scores) with 4 decimals, below 1,000 (speeds) with 1, larger ones
    as whole numbers with thousands separators; integers with thousands separators."""
    if is_integer(value):
        return f"{value:,}"
    if isinstance(value, float):
        if abs(value) < 100:
            return f"{value:.4f}"
        return f"{value:.1f}" if abs(value) < 1000 else f"{value:,.0f}"
    return str(value)


def metric_rows(metrics: dict[str, Any]) -> list[list[Any]]:
    """[name, value] rows of a metrics dict; counts (``num_*`` or ``split/num_*``, which earlier
    runs saved as floats) as whole numbers."""
    return [
        [k, int(v) if _is_count(k) and float(v).is_integer() else v] for k, v in metrics.items()
    ]


def _is_count(name: str) -> bool:
    return name.rpartition("/")[2].startswith("num_")


def display_width(text: str) -> int:
    """Terminal columns of ``text``: two for wide characters (CJK), none for combining marks."""
    return sum(
        0 if unicodedata.combining(c) else 2 if unicodedata.east_asian_width(c) in "WF" else 1
        for c in text
    )


def shorten_to_width(text: str, width: int, placeholder: str = " ...") -> str:
    """``text`` cut to at most ``width`` terminal columns with ``placeholder`` after the cut: at the
    last space that keeps over half of the room, else between characters (text without spaces,
    such as Chinese or Japanese, or a long word). A width too small for the placeholder and a
    character of the text gets the text's first columns alone."""
    if display_width(text) <= width:
        return text
    if width <= display_width(placeholder):
        return text[: _fitting_characters(text, width)]
    end = _fitting_characters(text, width - display_width(placeholder))
    if end == 0:  # no character fits beside the placeholder (a wide one in one column)
        return text[: _fitting_characters(text, width)]
    space = text.rfind(" ", 0, end + 1)
    if space > end // 2:
        end = space
    if not text[:end].strip():  # only spaces would be kept: the first columns, unmarked
        return text[: _fitting_characters(text, width)]
    return text[:end].rstrip() + placeholder


def _fitting_characters(text: str, room: int) -> int:
    """How many of ``text``'s first characters fit in ``room`` terminal columns."""
    used, end = 0, 0
    while end < len(text) and used + display_width(text[end]) <= room:
        used += display_width(text[end])
        end += 1
    return end


def _pad(text: str, width: int, right: bool) -> str:
    fill = " " * max(0, width - display_width(text))
    return fill + text if right else text + fill


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned text, right-aligned numbers, a rule under the header; columns as wide as
    their cells' terminal columns (:func:`display_width`)."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [max(map(display_width, [h, *(r[i] for r in cells)])) for i, h in enumerate(headers)]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [_pad(v, w, num) for v, w, num in zip(values, widths, numeric, strict=True)]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in cells)])
