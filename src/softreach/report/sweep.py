"""DIR/sweep_report.md of a sweep folder: what ran, figures against layer, a table of median cosines."""
from __future__ import annotations

import json
import math
import time
from pathlib import Path

from ..results.folder import atomic_write_text
from .format import fmt, table

FIGURES = [  # file, conditions drawn (None: all), title, dashed floor; drawn where the sweep has the conditions
    ("sweep_cos_by_layer.png", None, "Median cosine against layer, every condition", True),
    ("sweep_ablation_by_layer.png", ["exp1", "exp4_no_attn", "exp4_no_mlp"],
     "Ablations against layer: full model, attention zeroed, MLP zeroed", False),
    ("sweep_projection_by_layer.png", ["exp1", "exp1b"],
     "Token constraint against layer: soft prompts (exp1) and their nearest tokens (exp1b)", True),
]


def _figures(present: set[str]) -> list[tuple]:
    """The figures worth drawing: every condition; the ablations with exp4; the projection with exp1b."""
    out = [FIGURES[0]]
    if present & {"exp4_no_attn", "exp4_no_mlp"}:
        out.append(FIGURES[1])
    if "exp1b" in present:
        out.append(FIGURES[2])
    return out


def write_sweep_report(out: str | Path, df, record: dict, missing: list[str], figures: bool = True) -> Path:
    """DIR/sweep_report.md from the table `df` (softreach.sweep.collect), the sweep.json `record` and the cells
    without results; with `figures`, DIR/figures/sweep_*.png too. Returns the report's path."""
    from .. import __version__
    from ..plots.sweep import model_label

    out = Path(out)
    grid = record["grid"]
    lines = ["# Sweep report", "",
             f"Sweep folder `{out}`; written {time.strftime('%Y-%m-%d %H:%M')} by softreach {__version__}.", "",
             "- models: " + ", ".join(f"`{m}` (layers {grid['layers_by_model'][m]})" for m in grid["models"]),
             f"- preset `{grid['preset']}`; experiments {grid['experiments'] or 'all of the preset'}; "
             f"extra axes {grid['grid'] or 'none'}; overrides `{json.dumps(grid['overrides'])}`",
             f"- {len(record['cells']) - len(missing)} of {len(record['cells'])} cells have results; "
             f"{len(df)} rows in `cells.parquet` (one per cell and condition)", ""]
    if missing:
        lines += [f"**Cells without results yet:** {', '.join(f'`{m}`' for m in missing)}.", ""]
    if not df.empty:
        if figures:
            lines += _figure_lines(out, df)
        lines += _budget_lines(out, df, figures, model_label) + _table_lines(df, model_label)
    path = out / "sweep_report.md"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def _figure_lines(out: Path, df) -> list[str]:
    from ..plots.sweep import plot_by_layer

    lines = ["## Against layer", "",
             "Top: median cosine over targets (nines axis); bottom: median cosine minus the median "
             "random-token floor of the same targets.", ""]
    for name, conditions, title, floor in _figures(set(df["condition"])):
        try:
            plot_by_layer(df, conditions, out / "figures" / name, title, floor)
            lines += [f"![{title}](figures/{name})", ""]
        except Exception as e:  # a figure must never cost the table
            lines += [f"_Figure `{name}` could not be drawn ({type(e).__name__}: {e})._", ""]
    return lines


def _table_lines(df, model_label) -> list[str]:
    conditions = list(dict.fromkeys(df["condition"]))
    rows = []
    for _, g in df.groupby("cell", sort=False):
        by = {r["condition"]: r for _, r in g.iterrows()}
        first = g.iloc[0]
        rows.append([f"`{model_label(first['model'])}`", str(first["layer"]), first["overrides"] or "—"]
                    + [f"{fmt(by[c]['median_cos'])} ({fmt(by[c]['floor_cos'])})" if c in by else "—"
                       for c in conditions])
    return (["## Median cosine per cell", "", "Median over targets, random-token floor in brackets.", ""]
            + table(["model", "layer", "overrides"] + conditions, rows) + [""])


def _budget_lines(out: Path, df, figures: bool, model_label) -> list[str]:
    """Cells at finite input-norm budgets: a figure against layer and a table of cos w/o position 0 beside the
    copy baseline, the floor and the share converged ([] when every cell is free)."""
    from .blocks import CONVERGED_OK, share_cell

    sub = df[df["norm_budget"].map(lambda b: math.isfinite(float(b)))]
    if sub.empty:
        return []
    lines = ["## At token-scale input norms", "",
             "Median cosine without position 0 per cell at each finite budget (× the mean token-embedding norm), "
             "then (copy baseline, random-token floor, share of problems converged; ⚠ under "
             f"{CONVERGED_OK:.0%}: the median is a lower bound).", ""]
    if figures:
        from ..plots.sweep import budgets_by_layer

        name = "sweep_budgets_by_layer.png"
        try:
            budgets_by_layer(sub, out / "figures" / name, CONVERGED_OK)
            lines += [f"![cosine against layer at each budget](figures/{name})", ""]
        except Exception as e:  # a figure must never cost the table
            lines += [f"_Figure `{name}` could not be drawn ({type(e).__name__}: {e})._", ""]
    def cell(r) -> str:
        return (f"{fmt(r['median_cos_no_pos0'])} ({fmt(r['copy_cos_no_pos0'])}, {fmt(r['floor_cos_no_pos0'])}, "
                f"{share_cell(r['share_converged'])})")

    conditions = list(dict.fromkeys(sub["condition"]))
    rows = []
    for _, g in sub.groupby("cell", sort=False):
        by = {r["condition"]: r for _, r in g.iterrows()}
        first = g.iloc[0]
        rows.append([f"`{model_label(first['model'])}`", str(first["layer"])]
                    + [cell(by[c]) if c in by else "—" for c in conditions])
    return lines + table(["model", "layer"] + conditions, rows) + [""]
