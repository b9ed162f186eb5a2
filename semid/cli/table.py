"""Plain-text tables for the terminal."""

from __future__ import annotations

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


def format_table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Left-aligned text, right-aligned numbers, a rule under the header."""
    cells = [[_cell(v) for v in row] for row in rows]
    widths = [
        max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)
    ]
    numeric = [all(isinstance(row[i], (int, float)) for row in rows) for i in range(len(headers))]

    def line(values: Sequence[str]) -> str:
        parts = [
            v.rjust(w) if num else v.ljust(w)
            for v, w, num in zip(values, widths, numeric, strict=True)
        ]
        return "  ".join(parts).rstrip()

    return "\n".join([line(headers), "  ".join("-" * w for w in widths), *(line(r) for r in cells)])
