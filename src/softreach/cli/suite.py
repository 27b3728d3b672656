"""`softreach suite`: every experiment of the log into one resumable folder, then its report."""
from __future__ import annotations

import argparse

from ..config import SuiteConfig
from ..presets import PRESETS, preset
from .args import SUITE_ALIASES, add_config_flags, add_output_options, add_settings_options, settings


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("suite", help="run every experiment of the log, resumably, and write the report")
    p.add_argument("--preset", default="quick", metavar="{" + ",".join(PRESETS) + "}",
                   help="quick (default, minutes on CPU) or seed (the log's protocol)")
    add_config_flags(p, SuiteConfig)
    add_settings_options(p)
    add_output_options(p, "suite folder")
    return p


def main(a) -> int:
    from ..experiments.suite import run_and_report

    return run_and_report(settings(a, SuiteConfig, preset(a.preset), SUITE_ALIASES), a.out, a.overwrite,
                          not a.no_progress)
