"""`softreach collect`: one table row per (cell, condition) of a sweep folder, as DIR/cells.parquet.

The report (DIR/sweep_report.md and its figures) is written beside it by softreach.report.sweep.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from ..errors import UserError

COLUMNS = ["cell", "model", "n_layers", "layer", "depth", "experiment", "condition", "ablation", "norm_budget",
           "overrides", "median_cos", "mean_cos", "median_cos_no_pos0", "median_mse", "floor_cos",
           "floor_cos_no_pos0", "copy_cos_no_pos0", "share_converged", "cos_minus_floor", "cos_minus_floor_no_pos0",
           "n_targets", "seconds", "problem_steps_per_second"]
"""The table's columns; one more per extra axis of the grid (named as the axis)."""


def read_sweep_record(out: str | Path) -> dict:
    """DIR/sweep.json; a one-line UserError when DIR is not a sweep folder."""
    marker = Path(out) / "sweep.json"
    if not marker.is_file():
        raise UserError(f"{out} is not a sweep folder (no sweep.json)")
    try:
        return json.loads(marker.read_text())
    except ValueError:
        raise UserError(f"{marker} is unreadable") from None


def import_pandas():
    """pandas, with pyarrow (the parquet engine) present; a one-line UserError otherwise."""
    import importlib

    try:
        import pandas as pd

        importlib.import_module("pyarrow")  # the parquet engine
    except ImportError:
        raise UserError("collect needs pandas and pyarrow: pip install 'softreach[ray]'") from None
    return pd


def _row(cell: dict, name: str, cond) -> dict:
    import numpy as np

    cfg, s = cond.config, cond.summary
    cos = cond.column("cos")
    n_layers = cfg.get("model", {}).get("n_layers")
    row = {"cell": cell["slug"], "model": cell["model"], "n_layers": n_layers, "layer": cell["layer"],
           "depth": cell["layer"] / n_layers if n_layers else math.nan,
           "experiment": cfg.get("experiment", name), "condition": name,
           "ablation": cfg.get("ablation", "none"), "norm_budget": cond.budget,
           "overrides": ",".join(f"{k}={json.dumps(v)}" for k, v in cell["combo"].items()),
           "median_cos": cond.median("cos"),
           "mean_cos": float(np.mean(cos[np.isfinite(cos)])) if np.isfinite(cos).any() else math.nan,
           "median_cos_no_pos0": cond.median("cos_no_pos0"), "median_mse": cond.median("mse"),
           "floor_cos": cond.median("floor_cos"), "floor_cos_no_pos0": cond.median("floor_cos_no_pos0"),
           "copy_cos_no_pos0": cond.median("copy_cos_no_pos0"),
           "share_converged": s.get("share_converged", math.nan),
           "n_targets": len(cond.rows), "seconds": s.get("seconds", math.nan),
           "problem_steps_per_second": s.get("problem_steps_per_second", math.nan)}
    row["cos_minus_floor"] = row["median_cos"] - row["floor_cos"]
    row["cos_minus_floor_no_pos0"] = row["median_cos_no_pos0"] - row["floor_cos_no_pos0"]
    return row


def collect_rows(out: str | Path) -> tuple[list[dict], dict, list[str]]:
    """Rows of the table (one per cell and condition), the sweep record, and the cells not finished."""
    from ..report import is_result_folder, load_run

    out = Path(out)
    record = read_sweep_record(out)
    axes = list(record["grid"].get("grid") or {})
    rows, missing = [], []
    for cell in record["cells"]:
        folder = out / "cells" / cell["slug"]
        if not (folder.is_dir() and any(is_result_folder(p) for p in folder.iterdir())):
            missing.append(cell["slug"])
            continue
        for name, cond in load_run(folder).conditions.items():
            row = _row(cell, name, cond)
            for key in axes:
                row[key] = cell["combo"].get(key)
            rows.append(row)
    return rows, record, missing


def collect(out: str | Path, figures: bool = True):
    """Write DIR/cells.parquet and DIR/sweep_report.md; return the table as a pandas DataFrame."""
    from ..report.sweep import write_sweep_report
    from ..results.folder import atomic_file

    pd = import_pandas()
    out = Path(out)
    rows, record, missing = collect_rows(out)
    df = pd.DataFrame(rows, columns=COLUMNS + list(record["grid"].get("grid") or {}))
    with atomic_file(out / "cells.parquet") as tmp:
        df.to_parquet(tmp, index=False)
    write_sweep_report(out, df, record, missing, figures)
    return df
