"""The figure of one steering sweep: cosine against K, M or distance, with the random-token floor and the
text's own tokens, one thin line per text."""
from __future__ import annotations

import os
from pathlib import Path

from ..stats import field_mean
from .axes import _cosine_axis, _new_figure, _save


def plot_sweep(points: list[tuple[str, dict, list[dict]]], path: str | os.PathLike, title: str, xlabel: str) -> Path:
    """points: (name, config, problems) of one sweep in order; x is the sweep value ("all" at the end)."""
    fig, (ax,) = _new_figure()
    labels = [str(c["sweep_value"]) for _, c, _ in points]
    x = list(range(len(points)))
    values = []
    n = len(points[0][2]) if points else 0
    for i in range(n):
        ys = [rows[i]["cos"] for _, _, rows in points]
        ax.plot(x, ys, color="C0", alpha=0.25, linewidth=0.8)
        values += ys
    series = [("optimised soft slots (mean)", "cos", "C0", "-"), ("the text's own tokens", "own_cos", "C2", "--"),
              ("random tokens (floor)", "floor_cos", "C3", ":")]
    for label, key, color, style in series:
        if all(any(key in r for r in rows) for _, _, rows in points):
            ys = [field_mean(rows, key) for _, _, rows in points]
            ax.plot(x, ys, color=color, linestyle=style, marker="o", label=label)
            values += ys
    _cosine_axis(ax, values, label="cosine at the steered positions")
    ax.set_xticks(x, labels)
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title(title, fontsize=10)
    return _save(fig, path)


def plot_vocab(by: dict[tuple[str, float], list[dict]], soft_rows: list[dict], path: str | os.PathLike) -> Path:
    """Cosine of each discrete rung against the vocabulary percent, beside the continuous solution and the
    random-token floor. by: (rung, percent) -> problems."""
    fig, (ax,) = _new_figure()
    values = []
    for j, rung in enumerate(sorted({r for r, _ in by})):
        xs = sorted(p for r, p in by if r == rung)
        ys = [field_mean(by[(rung, p)], "cos") for p in xs]
        ax.plot(xs, ys, marker="o", color=f"C{j + 1}", label=rung)
        values += ys
    for label, key, style in (("soft vectors (continuous)", "cos", "-"), ("the text's own tokens", "own_cos", "--"),
                              ("random tokens (floor)", "floor_cos", ":")):
        if any(key in r for r in soft_rows):
            y = field_mean(soft_rows, key)
            ax.axhline(y, color="gray", linestyle=style, linewidth=1, label=label)
            values.append(y)
    _cosine_axis(ax, values, label="cosine at the steered positions")
    ax.set_xscale("log")
    ax.set_xlabel("vocabulary: % most frequent corpus tokens")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("Real tokens in the slots against vocabulary density", fontsize=10)
    return _save(fig, path)


def plot_series(series: list[tuple[str, dict]], labels: list[str], path: str | os.PathLike, title: str,
                xlabel: str) -> Path:
    """One sweep across several steer folders: per series (label, {sweep value: problems}) the optimised slots'
    mean cosine (a solid line; hollow markers where under 90% of the problems converged: lower bounds), the
    text's own tokens (dashed) and random tokens (dotted), in the series' colour. labels: the x values in order."""
    fig, (ax,) = _new_figure(width=8.6, height=5.6)
    x = {v: i for i, v in enumerate(labels)}
    values = []
    for j, (name, points) in enumerate(series):
        keys = [v for v in labels if v in points]
        xs = [x[v] for v in keys]
        ys = [field_mean(points[v], "cos") for v in keys]
        ax.plot(xs, ys, color=f"C{j}", marker="o", label=f"{name}: soft slots")
        loose = [(xi, yi) for xi, yi, v in zip(xs, ys, keys) if field_mean(points[v], "converged") < 0.9]
        if loose:
            ax.plot(*zip(*loose), linestyle="none", marker="o", color="white", markeredgecolor=f"C{j}", zorder=3)
        values += ys
        for key, style, what in (("own_cos", "--", "own tokens"), ("floor_cos", ":", "random tokens")):
            if all(any(key in r for r in points[v]) for v in keys):
                base = [field_mean(points[v], key) for v in keys]
                ax.plot(xs, base, color=f"C{j}", linestyle=style, linewidth=1, alpha=0.8, label=f"{name}: {what}")
                values += base
    _cosine_axis(ax, values, label="cosine at the steered positions (mean over texts)")
    ax.set_xticks(range(len(labels)), [str(v) for v in labels])
    ax.set_xlabel(xlabel)
    ax.grid(alpha=0.3)
    fig.legend(*ax.get_legend_handles_labels(), loc="outside lower center", fontsize=7, ncol=3)
    ax.set_title(f"{title}\n(hollow: under 90% of the problems converged, a lower bound)", fontsize=9)
    return _save(fig, path)
