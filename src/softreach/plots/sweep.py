"""Figures of a sweep: median cosine against layer, a column per model (from the cells.parquet table)."""
from __future__ import annotations

import os
from pathlib import Path

from ..experiments.registry import CONDITIONS
from .axes import _cosine_axis, _save


def model_label(model: str) -> str:
    """A model as shown in figures and tables: a local folder's name, a hub id as given."""
    return Path(model).name if Path(model).is_absolute() else model


def _series(df, model: str, column: str) -> dict[str, tuple[list, list]]:
    """label -> (layers, values) for one model: one line per condition and override combination."""
    out = {}
    sub = df[df["model"] == model]
    for (cond, combo), g in sub.groupby(["condition", "overrides"], sort=False):
        g = g.sort_values("layer")
        label = (CONDITIONS[cond].legend if cond in CONDITIONS else cond) + (f" [{combo}]" if combo else "")
        out[label] = (g["layer"].tolist(), g[column].tolist())
    return out


def plot_by_layer(df, conditions: list[str] | None, path: str | os.PathLike, title: str, floor: bool = True) -> Path:
    """Median cosine (top row) and median cosine minus the floor (bottom row) against layer, a column per model.

    `df`: the sweep table (softreach.sweep.collect); `conditions`: the conditions drawn (None: all)."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    models = list(dict.fromkeys(df["model"]))
    sub = df if conditions is None else df[df["condition"].isin(conditions)]
    fig = Figure(figsize=(5.2 * len(models), 7.6), layout="constrained")
    axes = fig.subplots(2, len(models), squeeze=False)
    for j, model in enumerate(models):
        top, bottom = axes[0][j], axes[1][j]
        cos = _series(sub, model, "median_cos")
        floors = _series(sub, model, "floor_cos")
        corrected = _series(sub, model, "cos_minus_floor")
        values = []
        for k, (label, (x, y)) in enumerate(cos.items()):
            color = f"C{k % 10}"
            top.plot(x, y, marker="o", color=color, label=label)
            values += y
            if floor and label in floors:
                fx, fy = floors[label]
                top.plot(fx, fy, linestyle="--", color=color, linewidth=1, alpha=0.7)
                values += fy
            bottom.plot(*corrected[label], marker="o", color=color, label=label)
        _cosine_axis(top, values, label="median cosine")
        top.set_title(model_label(model) + (" (dashed: random-token floor)" if floor else ""), fontsize=9)
        bottom.axhline(0, color="black", linewidth=0.8)
        bottom.set_ylabel("median cos − floor")
        layers = sorted(set(sub[sub["model"] == model]["layer"]))
        for ax in (top, bottom):
            ax.set_xlabel("layer L")
            if len(layers) <= 16:  # tick exactly the layers that were run
                ax.set_xticks(layers)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        top.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)
