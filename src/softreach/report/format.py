"""Formatting of numbers and markdown tables, shared by every report of the package."""
from __future__ import annotations

import math
from numbers import Real

DASH = "—"
"""What a missing number prints as in the reports."""


def fmt(x, digits: int = 4, missing: str | None = DASH) -> str:
    """A number for a table: `digits` decimals, 3 significant figures when tiny (< 1e-3) or huge (>= 1e4).

    A missing value (None, not a real number, NaN or infinite) prints as `missing`; with missing=None, NaN
    and infinities print as Python writes them ("nan", "inf") instead, as summary.md always has.
    """
    if missing is None:
        if x != x:
            return "nan"
    elif not isinstance(x, Real) or not math.isfinite(x):
        return missing
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def pct(share: float, missing: str = DASH) -> str:
    """A share in [0, 1] as a whole percentage ("83%"); `missing` when None, NaN or infinite."""
    if share is None or not math.isfinite(share):
        return missing
    return f"{100 * share:.0f}%"


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    """A markdown table as lines: header, separator, one line per row."""
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]
