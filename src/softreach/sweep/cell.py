"""One cell of a sweep: its suite folder, whether it is finished, and running it.

Both backends run cells through `run_cell` (the Ray actors import only this module and the models).
"""
from __future__ import annotations

import time
from pathlib import Path

from ..config import SuiteConfig
from ..experiments.registry import condition_names


def cell_dir(out: str | Path, cell) -> Path:
    """DIR/cells/<slug>: the cell's suite folder."""
    return Path(out) / "cells" / cell.slug


def expected_files(cfg: SuiteConfig) -> list[str]:
    """Files a finished suite of this config holds: each result folder's problems.jsonl (written last)."""
    files = ["suite.json"] + [f"{name}/problems.jsonl" for name in condition_names(cfg.experiments)]
    if "exp4" in cfg.experiments and {"exp1", "exp1b"} & set(cfg.experiments):  # exp1 exists when exp4 ends
        files.append("exp4_analysis.json")
    return files


def cell_complete(out: str | Path, cell) -> bool:
    folder = cell_dir(out, cell)
    return all((folder / f).is_file() for f in expected_files(cell.config))


def check_suite_folder(folder: str | Path, cfg: SuiteConfig) -> None:
    """Refuse a finished cell whose suite.json holds another config (as SuiteRunner would, writing nothing)."""
    from ..experiments.suite import open_suite_folder

    open_suite_folder(folder, cfg)


def run_cell(cfg: SuiteConfig, folder: str | Path, lm, show_progress: bool = False) -> float:
    """Run (or resume) one cell's suite with an already-loaded model. Returns seconds spent."""
    from ..experiments.suite import SuiteRunner

    start = time.perf_counter()
    SuiteRunner(cfg, folder, lm=lm, show_progress=show_progress).run()
    return time.perf_counter() - start
