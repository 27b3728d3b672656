"""Summary statistics over targets, computed in one place (numpy; scipy imported when correlating)."""
from __future__ import annotations

import numpy as np


def describe(values) -> dict[str, float]:
    """Median, mean, sample std (ddof=1; 0.0 for a single value), min and max of `values` [N], N >= 1."""
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def field_mean(rows: list[dict], key: str) -> float:
    """Mean of the finite numbers rows[i][key] (booleans count as 0/1); NaN when there are none."""
    values = [float(r[key]) for r in rows if isinstance(r.get(key), (int, float)) and np.isfinite(r[key])]
    return float(np.mean(values)) if values else float("nan")


def correlations(x, y) -> dict[str, float | int]:
    """Spearman and Pearson correlation of two paired series [N] with their p-values.

    NaN for all four numbers when N < 3 or either series is constant (or holds a NaN).
    """
    from scipy import stats

    x, y = np.asarray(x), np.asarray(y)
    if len(x) >= 3 and x.std() > 0 and y.std() > 0:
        rho, p = stats.spearmanr(x, y)
        r, pr = stats.pearsonr(x, y)
    else:
        rho = p = r = pr = float("nan")
    return {"spearman_rho": float(rho), "p_value": float(p), "pearson_r": float(r), "pearson_p": float(pr),
            "n": int(len(x))}
