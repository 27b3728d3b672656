"""Sweeps: models x layers x setting combinations, one suite folder per cell, run locally or on Ray.

Modules: grid (the grid file, its validation and its cells), cell (one cell: folder, finished, run),
runner (the sweep folder and the local backend), ray_backend (the Ray backend, imported only when used),
cost (problem-steps on paper), collect (cells.parquet). The report and its figures live in
softreach.report.sweep and softreach.plots.sweep. Usage and folder layout: docs/sweeps.md.
"""
from .cell import cell_complete, cell_dir, expected_files, run_cell
from .collect import COLUMNS, collect, collect_rows, import_pandas, read_sweep_record
from .cost import plan, problem_steps
from .grid import Cell, Sweep, load_grid, load_sweep, model_n_layers, parse_grid, resolve_layers
from .runner import pending_cells, prepare_sweep_folder, run_local, run_sweep

__all__ = ["COLUMNS", "Cell", "Sweep", "cell_complete", "cell_dir", "collect", "collect_rows", "expected_files",
           "import_pandas", "load_grid", "load_sweep", "model_n_layers", "parse_grid", "pending_cells", "plan",
           "prepare_sweep_folder", "problem_steps", "read_sweep_record", "resolve_layers", "run_cell", "run_local",
           "run_sweep"]
