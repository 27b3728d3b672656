"""`softreach ladder`: the same real-text targets under a ladder of constraints, frontier table and figure."""
from __future__ import annotations

import argparse

from ..ladder.config import LadderConfig
from .args import add_config_flags, add_output_options, add_settings_options, settings


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("ladder", help="constrained reachability: the same targets under a ladder of constraints")
    add_config_flags(p, LadderConfig)
    add_settings_options(p)
    add_output_options(p, "ladder folder (an identical earlier run is resumed)")
    return p


def main(a) -> int:
    cfg = settings(a, LadderConfig)
    from ..ladder import run_ladder_config
    from ..report.ladder import frontier_table

    done = run_ladder_config(cfg, a.out, overwrite=a.overwrite, show_progress=not a.no_progress)
    lm, s = done["lm"], cfg.settings
    print(f"\nconstraint ladder on {lm.source}" + (f" ({lm.gguf_file})" if lm.gguf_file else "")
          + f", layer {done['layer']}, {cfg.targets} targets x {cfg.seq_len} positions, {s.steps} steps, "
          f"GCG budget {s.gcg_budget}\n")
    print(frontier_table(done["out"]))
    print(f"\n{done['seconds']:.0f} s in all; results in {done['out']}, report {done['report']}")
    return 0
