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
    if (Path(a.run_dir) / "steer.json").is_file():  # a steer folder (sweeps, rungs)
        from ..report.steer import write_steer_report

        print(write_steer_report(Path(a.run_dir)))
        return 0
    if (Path(a.run_dir) / "frontier.json").is_file():  # a constraint-ladder folder
        from ..report.ladder import write_ladder_report

        print(write_ladder_report(Path(a.run_dir)))
        return 0
    from ..report.collection import is_collection, run_kind, write_collection_report

    path = Path(a.run_dir)
    if path.is_dir() and (is_collection(path) or run_kind(path) is None):  # several runs side by side
        print(write_collection_report(a.run_dir))
        return 0
    from ..report import write_report

    print(write_report(a.run_dir))
    return 0
