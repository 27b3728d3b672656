"""The figures of the report's "Norm budgets" section: fidelity against the input-norm budget, and the share of
targets reached at or below each budget (the reachability radius's cumulative distribution)."""
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
    finite, x_free, xpos = _budget_positions(series)
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
    _budget_axis(ax, finite, x_free)
    _label_axes(ax, "Fidelity against the input-norm budget\nmedians over targets, without position 0",
                "input-norm budget (× mean token-embedding norm, log scale)",
                loc="center left", bbox_to_anchor=(1.01, 0.5))
    _cosine_axis(ax, np.concatenate(shown) if shown else np.array([]), "y", "median cosine w/o position 0")
    return _save(fig, path)


def _budget_positions(series: dict[str, dict]):
    """The finite budgets of every series (ascending), where the free input is drawn (one step to the right of the
    largest budget), and a function mapping budgets [B] (math.inf = free) to x positions."""
    finite = sorted({float(b) for s in series.values() for b in s["budget"] if np.isfinite(b)})
    lo, hi = (finite[0], finite[-1]) if finite else (1.0, 1.0)
    x_free = hi * 10 ** max(0.5, 0.25 * np.log10(hi / lo)) if finite else 1.0

    def xpos(budgets):
        return np.array([x_free if not np.isfinite(b) else float(b) for b in budgets], dtype=np.float64)

    return finite, x_free, xpos


def _budget_axis(ax, finite: list[float], x_free: float) -> None:
    """A logarithmic budget axis ticked at each budget run, "free" at x_free behind a thin separator."""
    from matplotlib.ticker import FixedFormatter, FixedLocator, NullLocator

    ax.set_xscale("log")
    if finite:
        ax.axvline(np.sqrt(finite[-1] * x_free), color="0.8", linewidth=0.8)
    ax.xaxis.set_major_locator(FixedLocator(finite + [x_free]))
    ax.xaxis.set_major_formatter(FixedFormatter([f"{b:g}" for b in finite] + ["free"]))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim((finite[0] if finite else x_free) / 10 ** 0.15, x_free * 10 ** 0.15)


def radius_curves(series: dict[str, dict], thresholds: tuple, path, converged_ok: float = 0.9) -> Path:
    """Cumulative share of targets reached against the input-norm budget, one panel per threshold, one line per
    experiment (each shifted up or down by up to 0.02 so that equal lines stay visible); a hollow marker where fewer
    than `converged_ok` of that budget's problems converged (the share reached there may still grow).

    series: label -> {"budget": [B] (ascending, math.inf = free), "reached": {threshold: [B] shares in [0, 1]},
    "converged": [B] shares of problems converged (NaN where not recorded)}.
    """
    finite, x_free, xpos = _budget_positions(series)
    fig, axes = _new_figure(len(thresholds), width=5.6, height=4.6)
    for ax, threshold in zip(axes, thresholds):
        for i, (label, s) in enumerate(series.items()):
            color = f"C{i % 10}"
            x = xpos(s["budget"])
            # equal lines would hide each other: each is shifted by up to ±0.02 (the tables carry the counts)
            y = np.asarray(s["reached"][threshold], dtype=np.float64) + (0.04 * i / max(len(series) - 1, 1) - 0.02)
            done = np.asarray(s["converged"], dtype=np.float64) >= converged_ok
            ax.step(x, y, where="post", color=color, linewidth=1.8, label=label)
            ax.scatter(x[done], y[done], color=color, s=28, zorder=3)
            ax.scatter(x[~done], y[~done], facecolors="white", edgecolors=color, s=28, zorder=3)
        _budget_axis(ax, finite, x_free)
        ax.set_ylim(-0.05, 1.05)
        ax.set_ylabel("share of targets reached (lines offset ±0.02)")
        ax.set_title(f"cos w/o position 0 ≥ {threshold:g}")
        ax.set_xlabel("input-norm budget (× mean token-embedding norm, log scale)")
        ax.grid(alpha=0.3)
    axes[-1].scatter([], [], facecolors="white", edgecolors="black", s=28,
                     label=f"< {converged_ok:.0%} of problems converged")
    axes[-1].legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.suptitle("Reachability radius: share of targets reached at or below each budget")
    return _save(fig, path)
