"""Figures of a sweep: median cosine against layer, a column per model (from the cells.parquet table)."""
from __future__ import annotations

import math
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


def budgets_by_layer(df, path: str | os.PathLike, converged_ok: float = 0.9) -> Path:
    """Token-scale depth: median cosine w/o position 0 against layer at each finite input-norm budget, a panel per
    experiment (a row per model); the copy baseline dashed and the random-token floor dotted grey; a hollow marker
    where fewer than `converged_ok` of the cell's problems converged (that point is a lower bound)."""
    from matplotlib.figure import Figure

    from ..report.load import split_budget

    sub = df[df["norm_budget"].map(lambda b: math.isfinite(float(b)))].copy()
    sub["base"] = sub["condition"].map(lambda c: split_budget(c)[0])
    models, bases = list(dict.fromkeys(sub["model"])), list(dict.fromkeys(sub["base"]))
    budgets = sorted(set(sub["norm_budget"]))
    fig = Figure(figsize=(4.6 * len(bases) + 1.8, 4.2 * len(models)), layout="constrained")
    axes = fig.subplots(len(models), len(bases), squeeze=False)
    for i, model in enumerate(models):
        for j, base in enumerate(bases):
            ax, values = axes[i][j], []
            for k, budget in enumerate(budgets):
                g = sub[(sub["model"] == model) & (sub["base"] == base) & (sub["norm_budget"] == budget)]
                g = g.sort_values("layer")
                if g.empty:
                    continue
                color, x = f"C{k % 10}", g["layer"].to_numpy()
                y, done = g["median_cos_no_pos0"].to_numpy(), g["share_converged"].to_numpy() >= converged_ok
                ax.plot(x, y, color=color, linewidth=1.8, label=f"budget {budget:g}")
                ax.scatter(x[done], y[done], color=color, s=26, zorder=3)
                ax.scatter(x[~done], y[~done], facecolors="white", edgecolors=color, s=26, zorder=3)
                ax.plot(x, g["copy_cos_no_pos0"], color=color, linestyle="--", linewidth=1, alpha=0.8)
                values += list(y) + list(g["copy_cos_no_pos0"])
                if k == 0:
                    ax.plot(x, g["floor_cos_no_pos0"], color="0.6", linestyle=":", linewidth=1)
                    values += list(g["floor_cos_no_pos0"])
            _cosine_axis(ax, values, label="median cos w/o position 0")
            ax.set_title(f"{CONDITIONS[base].legend if base in CONDITIONS else base} ({model_label(model)})",
                         fontsize=9)
            ax.set_xlabel("layer L")
            ax.set_xticks(sorted(set(sub[sub["model"] == model]["layer"])))
            ax.grid(alpha=0.3)
    handles = axes[0][-1]
    handles.plot([], [], color="black", linestyle="--", linewidth=1, label="copy baseline (same colour)")
    handles.plot([], [], color="0.6", linestyle=":", label="random-token floor")
    handles.scatter([], [], facecolors="white", edgecolors="black", s=26, label=f"< {converged_ok:.0%} converged")
    handles.legend(loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize=8)
    fig.suptitle("Reachability against depth at token-scale input norms")
    return _save(fig, path)
