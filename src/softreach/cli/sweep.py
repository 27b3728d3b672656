"""`softreach sweep GRID.yaml`: models x layers x settings, one suite folder per cell, locally or on Ray."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from ..config import SuiteConfig
from ..errors import UserError
from ..overrides import parse_assignments
from .args import SUITE_ALIASES


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("sweep", help="run a grid of models x layers x settings, one suite folder per cell")
    p.add_argument("grid", help="grid file (YAML): models, layers, preset, experiments, overrides, grid")
    p.add_argument("--out", default=None, help="sweep folder to create or resume")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default: in this process) or ray (one actor per GPU, or per CPU without GPUs)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per GPU, else per CPU)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing sweep folder")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their problem-steps; run nothing")
    p.add_argument("--rate", type=float, default=None,
                   help="with --dry-run: measured problem-steps/s at full depth, for a time estimate")
    p.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                   help="a setting for every cell, over the grid's overrides (not one of its axes), e.g. optim.lr=0.05")
    return p


def main(a) -> int:
    overrides = parse_assignments(a.set, SUITE_ALIASES, SuiteConfig)
    from ..sweep import collect, import_pandas, load_sweep, plan, run_sweep

    sweep = load_sweep(a.grid, overrides)
    if a.dry_run:
        rows = plan(sweep, rate=a.rate)
        for r in rows:
            est = f"  ~{r['seconds'] / 3600:.2f} h" if r["seconds"] is not None else ""
            print(f"{r['cell']}  {r['problem_steps']:,} problem-steps{est}")
        total = sum(r["problem_steps"] for r in rows)
        hours = sum(r["seconds"] for r in rows) / 3600 if a.rate else None
        print(f"{len(rows)} cells, {total:,} problem-steps" + (f", ~{hours:.1f} device-hours" if hours else ""))
        return 0
    if a.out is None:
        raise UserError("sweep needs --out DIR (or --dry-run)")
    counts = run_sweep(sweep, a.out, backend=a.backend, address=a.address, workers=a.workers,
                       show_progress=not a.no_progress, overwrite=a.overwrite)
    print(f"{counts['cells']} cells: {counts['ran']} run, {counts['skipped']} already complete; results in "
          f"{Path(a.out) / 'cells'}")
    try:
        import_pandas()
    except UserError as e:
        print(f"softreach: not collecting the table: {e}", file=sys.stderr)
        return 0
    df = collect(a.out)
    print(f"table: {Path(a.out) / 'cells.parquet'} ({len(df)} rows); report: {Path(a.out) / 'sweep_report.md'}")
    return 0
