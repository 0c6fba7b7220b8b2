"""Plain-text tables of metrics, as ``knet test`` prints them (every task)."""
from __future__ import annotations

from typing import List, Optional, Sequence


def text_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> List[str]:
    """Lines of a plain-text table: the first column left-aligned, the others right-aligned::

        +-------+-------+
        | Class | PQ    |
        +-------+-------+
        | cat   | 41.20 |
        +-------+-------+
    """
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    rule = "+" + "+".join("-" * (w + 2) for w in widths) + "+"

    def line(cells: Sequence[str]) -> str:
        first = f" {cells[0]:<{widths[0]}} "
        rest = [f" {c:>{w}} " for c, w in zip(cells[1:], widths[1:])]
        return "|" + "|".join([first] + rest) + "|"

    return [rule, line(header), rule] + [line(r) for r in rows] + [rule]


def percent_cell(value: Optional[float]) -> str:
    """A table cell of a percentage: 2 decimals, ``nan`` where undefined."""
    return "nan" if value is None else f"{value:.2f}"


def round_percent(value: Optional[float]) -> Optional[float]:
    """A percentage rounded to 2 decimals, as the metrics files hold them (None stays None)."""
    return None if value is None else float(round(value, 2))
