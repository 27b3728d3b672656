"""Running a sweep: the sweep folder, the cells still to run, and the local backend.

Sweep folder layout:
    sweep.json              the resolved grid and the cell list; a folder made by another grid is refused
    cells/<slug>/           one suite folder per cell, written by SuiteRunner (resumable, docs/result-folders.md)
    cells.parquet           `softreach collect`: one row per (cell, condition)
    sweep_report.md, figures/sweep_*.png

Every cell is deterministic given its SuiteConfig, so the local and Ray backends write the same tensors.
The Ray backend is imported only when asked for, so the local path never imports ray.
"""
from __future__ import annotations

import sys
from pathlib import Path

from ..errors import UserError
from ..results.markers import open_marked_folder
from .cell import cell_complete, cell_dir, check_suite_folder, run_cell
from .grid import Cell, Sweep

BACKENDS = ("local", "ray")


def prepare_sweep_folder(out: str | Path, sweep: Sweep, overwrite: bool = False) -> bool:
    """Create DIR/sweep.json, or check that DIR was made by this grid. Returns True when resuming."""
    return open_marked_folder(out, "sweep.json", sweep.record(), "sweep", overwrite, made_by="grid")


def pending_cells(out: str | Path, sweep: Sweep) -> list[Cell]:
    """Cells still to run; finished ones are only checked against their suite.json."""
    todo = []
    for cell in sweep.cells:
        if cell_complete(out, cell):
            check_suite_folder(cell_dir(out, cell), cell.config)  # refuses a foreign config
        else:
            todo.append(cell)
    return todo


def run_local(out: str | Path, cells: list[Cell], show_progress: bool = True) -> None:
    """Run cells in order in this process, loading each model once for its consecutive cells."""
    from tqdm.auto import tqdm

    from .. import models

    lm, key = None, None
    with tqdm(total=len(cells), desc="sweep", unit="cell", disable=not show_progress, file=sys.stderr) as bar:
        for cell in cells:
            if cell.model_key != key:
                lm = None  # free the previous model before loading the next
                lm, key = models.load_model(*cell.model_key), cell.model_key
            bar.set_postfix_str(cell.slug, refresh=True)
            run_cell(cell.config, cell_dir(out, cell), lm, show_progress)
            bar.update(1)


def run_sweep(sweep: Sweep, out: str | Path, backend: str = "local", address: str | None = None,
              workers: int | None = None, show_progress: bool = True, overwrite: bool = False,
              **backend_options) -> dict:
    """Run every unfinished cell into `out`. Returns counts: cells, skipped, ran.

    `overwrite` deletes an existing sweep folder first; `backend_options` go to the Ray backend."""
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}: choose local or ray")
    if backend == "local" and (address is not None or workers is not None):
        raise UserError("--address and --workers apply to --backend ray only")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    out = Path(out).resolve()
    prepare_sweep_folder(out, sweep, overwrite)
    todo = pending_cells(out, sweep)
    if todo and backend == "local":
        run_local(out, todo, show_progress)
    elif todo:
        from .ray_backend import run_ray

        run_ray(out, todo, address=address, workers=workers, show_progress=show_progress, **backend_options)
    return {"cells": len(sweep.cells), "skipped": len(sweep.cells) - len(todo), "ran": len(todo)}
