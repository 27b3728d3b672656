"""The figure of the report's "Norm budgets" section: fidelity against the input-norm budget."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .axes import _cosine_axis, _label_axes, _new_figure, _save


def budget_curves(series: dict[str, dict], path) -> Path:
    """Fidelity against the input-norm budget: one colour per experiment, its copy baseline dashed in the
    same colour, its random-token floor grey.

    series: label -> {"budget": [B] (relative budgets, math.inf = free), "cos": [B], "copy": [B], "floor": [B]},
    medians over targets (NaN where absent). The budget axis is logarithmic; the free input is drawn one
    step to the right of the largest budget and labelled "free".
    """
    from matplotlib.ticker import FixedLocator, FixedFormatter, NullLocator

    finite = sorted({float(b) for s in series.values() for b in s["budget"] if np.isfinite(b)})
    if finite:
        lo, hi = finite[0], finite[-1]
        x_free = hi * 10 ** max(0.5, 0.25 * np.log10(hi / lo))
    else:
        lo = hi = x_free = 1.0

    def xpos(budgets):
        return np.array([x_free if not np.isfinite(b) else float(b) for b in budgets], dtype=np.float64)

    fig, (ax,) = _new_figure(1, width=7.6, height=4.8)
    shown = []
    for i, (label, s) in enumerate(series.items()):
        color = f"C{i % 10}"
        x = xpos(s["budget"])
        order = np.argsort(x)
        x = x[order]
        for key, style in (("cos", {"color": color, "marker": "o", "linewidth": 2, "label": label}),
                           ("copy", {"color": color, "linestyle": "--", "marker": "x", "linewidth": 1.2,
                                     "alpha": 0.85}),
                           ("floor", {"color": "0.6", "linestyle": ":", "marker": ".", "linewidth": 1.0})):
            y = np.asarray(s.get(key, [np.nan] * len(x)), dtype=np.float64)[order]
            m = np.isfinite(y)
            if m.any():
                ax.plot(x[m], y[m], **style)
                shown.append(y[m])
    ax.plot([], [], color="black", linestyle="--", marker="x", linewidth=1.2,
            label="copy baseline (dashed, same colour)")
    ax.plot([], [], color="0.6", linestyle=":", marker=".", label="random-token floor (grey)")
    ax.set_xscale("log")
    if finite:
        ax.axvline(np.sqrt(hi * x_free), color="0.8", linewidth=0.8)  # separates the budgets from "free"
    ticks = finite + [x_free]
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(FixedFormatter([f"{b:g}" for b in finite] + ["free"]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(lo / 10 ** 0.15, x_free * 10 ** 0.15)
    _label_axes(ax, "Fidelity against the input-norm budget\nmedians over targets, without position 0",
                "input-norm budget (× mean token-embedding norm, log scale)",
                loc="center left", bbox_to_anchor=(1.01, 0.5))
    _cosine_axis(ax, np.concatenate(shown) if shown else np.array([]), "y", "median cosine w/o position 0")
    return _save(fig, path)
