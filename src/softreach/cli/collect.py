"""`softreach collect DIR`: a sweep folder's cells.parquet and sweep_report.md."""
from __future__ import annotations

import argparse
from pathlib import Path

from .args import refuse_settings


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("collect", help="write cells.parquet and sweep_report.md for a sweep folder")
    p.add_argument("sweep_dir")
    refuse_settings(p, "collect")
    return p


def main(a) -> int:
    from ..sweep import collect

    df = collect(a.sweep_dir)
    print(f"{Path(a.sweep_dir) / 'cells.parquet'} ({len(df)} rows); {Path(a.sweep_dir) / 'sweep_report.md'}")
    return 0
