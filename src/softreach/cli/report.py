"""`softreach report DIR`: (re)write report.md and its figures for a suite, ladder, steer or result folder."""
from __future__ import annotations

import argparse
from pathlib import Path

from .args import refuse_settings


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("report", help="write report.md and figures for a suite, ladder, steer or result folder, or for a folder of such "
                       "runs (a contents list, and steer folders' sweeps side by side)")
    p.add_argument("run_dir")
    refuse_settings(p, "report")
    return p


def main(a) -> int:
    from ..report.collection import is_collection, run_kind, write_collection_report, write_run_report

    path = Path(a.run_dir)
    kind = run_kind(path) if path.is_dir() else None
    if path.is_dir() and (kind is None or is_collection(path)):  # several runs side by side
        print(write_collection_report(path))
    elif kind in ("steer", "ladder"):  # a steer folder (sweeps, rungs) or a constraint-ladder folder
        print(write_run_report(path, kind))
    else:  # a suite or one result folder (load_run says in one line why a path is neither)
        from ..report import write_report

        print(write_report(path))
    return 0
