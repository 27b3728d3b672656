"""`softreach bench`: the engine against the log's method on this machine."""
from __future__ import annotations

import argparse
import sys

from ..config import BenchConfig
from .args import add_config_flags, add_settings_options, settings


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("bench", help="measure the engine against the log's method on this machine")
    add_config_flags(p, BenchConfig)
    add_settings_options(p)
    return p


def main(a) -> int:
    cfg = settings(a, BenchConfig)
    from ..bench import format_table, run_bench

    result = run_bench(list(cfg.workloads), cfg.device, cfg.problems, cfg.steps, cfg.baseline_steps, cfg.batch_size,
                       cfg.json, log=lambda m: print(m, file=sys.stderr, flush=True),
                       convergence_targets=cfg.convergence_targets, convergence_steps=cfg.convergence_steps,
                       reference_runs=cfg.reference_runs, study_conditions=cfg.study_conditions,
                       references=cfg.references)
    print(format_table(result))
    if cfg.json:
        print(f"written {cfg.json}")
    return 0
