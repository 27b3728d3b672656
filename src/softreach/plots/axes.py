"""Shared pieces of the figures: standalone figures, atomic PNG writes and the "nines" cosine axis.

Cosine axes use a "nines" spacing, -log10(1 - cos): 0.5, 0.9, 0.99 and 0.999 sit evenly apart, so the
random-token floor (~0.5) and reached cosines (~0.99x) are readable on one axis. matplotlib is imported
inside the functions, and pyplot is never used, so a notebook's backend and global state are left alone.
"""
from __future__ import annotations

import os
from pathlib import Path

import numpy as np

from ..results.folder import atomic_file

DPI = 110
MAIN_TICKS = [-1, 0, 0.5, 0.9, 0.99, 0.999, 0.9999, 0.99999, 0.999999]
FILL_TICKS = [0.8, 0.95, 0.98, 0.995, 0.998, 0.9995, 0.9998, 0.99995, 0.99998]
NINES_LABEL = "(spaced by −log₁₀(1 − cos))"


def to_nines(c):
    """cosine -> -log10(1 - cos), finite for every cos < 1 (1 - cos clipped at 1e-6)."""
    return -np.log10(np.clip(1.0 - np.asarray(c, dtype=np.float64), 1e-6, None))


def from_nines(z):
    """Inverse of to_nines: -log10(1 - cos) -> cosine."""
    return 1.0 - 10.0 ** (-np.asarray(z, dtype=np.float64))


def _finite(x) -> np.ndarray:
    """The finite values of x, flattened [M]."""
    x = np.asarray(x, dtype=np.float64).ravel()
    return x[np.isfinite(x)]


def _new_figure(ncols: int = 1, width: float = 6.4, height: float = 4.3):
    """A standalone Figure (no pyplot) with `ncols` axes side by side."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width * ncols, height), layout="constrained")
    return fig, list(fig.subplots(1, ncols, squeeze=False)[0])


def _save(fig, path: str | os.PathLike) -> Path:
    """Write fig to path as PNG, atomically (a temporary file in the same folder, then os.replace)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_file(path) as tmp:
        fig.savefig(tmp, dpi=DPI, format="png")
    return path


def _cosine_axis(ax, values, which: str = "y", label: str = "cosine") -> None:
    """Put a cosine axis on the nines spacing, with limits fitted to `values` (everything plotted on it)."""
    from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator, ScalarFormatter

    axis, set_scale, set_lim, set_label = (
        (ax.yaxis, ax.set_yscale, ax.set_ylim, ax.set_ylabel) if which == "y"
        else (ax.xaxis, ax.set_xscale, ax.set_xlim, ax.set_xlabel))
    z = to_nines(_finite(values))
    zlo, zhi = (float(z.min()), float(z.max())) if z.size else (0.0, 3.0)
    pad = 0.05 * (zhi - zlo) if zhi > zlo else 0.05
    zlo, zhi = zlo - pad, zhi + pad
    set_scale("function", functions=(to_nines, from_nines))
    set_lim(from_nines(zlo), from_nines(zhi))
    ticks = [t for t in MAIN_TICKS if zlo <= to_nines(t) <= zhi]
    for t in FILL_TICKS:  # in-between ticks where they keep a tenth of the axis from every other tick
        zt = to_nines(t)
        if zlo <= zt <= zhi and all(abs(zt - to_nines(u)) >= (zhi - zlo) / 10 for u in ticks):
            ticks.append(t)
    if len(ticks) >= 3:
        axis.set_major_locator(FixedLocator(ticks))
        axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
    else:  # a narrow range: ordinary ticks read better
        axis.set_major_formatter(ScalarFormatter(useOffset=False))
    axis.set_minor_locator(NullLocator())
    set_label(f"{label}\n{NINES_LABEL}")


def _quartiles(a: np.ndarray, axis: int = 0):
    """25th, 50th and 75th percentiles ignoring NaN: three arrays."""
    return np.nanpercentile(a, [25, 50, 75], axis=axis)


def _by_group(x, y):
    """Group y by the distinct values of x: (xs, q25, q50, q75), each [G]."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    xs = np.unique(x[np.isfinite(x)])
    q = np.array([np.nanpercentile(y[x == v], [25, 50, 75]) if np.isfinite(y[x == v]).any()
                  else [np.nan] * 3 for v in xs])  # [G, 3]
    return xs, q[:, 0], q[:, 1], q[:, 2]


def _carry_forward(c: np.ndarray) -> np.ndarray:
    """[N, S] curves with NaN after early stops -> each NaN replaced by its row's last finite value, cut
    after the last step with any finite value: [N, S'] (S' = 0 when nothing is finite)."""
    finite = np.isfinite(c)
    if not finite.any():
        return c[:, :0]
    c = c[:, : int(np.nonzero(finite.any(0))[0].max()) + 1]
    finite = np.isfinite(c)
    idx = np.maximum.accumulate(np.where(finite, np.arange(c.shape[1]), 0), axis=1)  # last finite step so far
    return np.take_along_axis(c, idx, axis=1)


def _floor_line(ax, value, which: str = "h", color: str = "black", label: str | None = "random-token floor (median)",
                **kw) -> None:
    if value is None or not np.isfinite(value):
        return
    line = ax.axhline if which == "h" else ax.axvline
    line(value, linestyle="--", color=color, linewidth=1.3, label=label, **kw)


def _label_axes(ax, title: str, xlabel: str, ylabel: str | None = None, **legend) -> None:
    """Title, axis labels, a light grid and the legend (fontsize 8 unless legend says otherwise)."""
    ax.set_xlabel(xlabel)
    if ylabel is not None:
        ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend(**{"fontsize": 8, **legend})
