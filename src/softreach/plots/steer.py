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
