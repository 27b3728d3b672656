"""`softreach run steer`: soft slots around fixed corpus text, optimised to steer the residuals of the text
after them; one result folder, or K / M / distance sweeps (and discrete rungs) into a steer folder."""
from __future__ import annotations

import argparse

from ..steer.config import SteerConfig
from .args import add_config_flags, add_output_options, add_settings_options, settings


def add_parser(sub) -> argparse.ArgumentParser:
    p = sub.add_parser("steer", help="steer fixed text's residuals from K soft slots before, inside or after it")
    add_config_flags(p, SteerConfig)
    add_settings_options(p)
    add_output_options(p, "result folder (a steer folder with --sweep; an identical earlier sweep is resumed)")
    return p


def main(a) -> int:
    cfg = settings(a, SteerConfig)
    from ..steer.run import run_steer

    done = run_steer(cfg, a.out, show_progress=not a.no_progress, overwrite=a.overwrite)
    lm = done["lm"]
    n_before, n_after = cfg.lengths
    print(f"\nsteer on {lm.source}" + (f" ({lm.gguf_file})" if lm.gguf_file else "")
          + f", layer {done['layer']}, {cfg.layout}: {n_before} fixed tokens, K soft slots, {n_after} fixed tokens; "
          f"{cfg.kind} targets, norm budget {cfg.to_dict()['norm_budget']}\n")
    from ..report.steer import points_table

    many = bool(cfg.sweep or cfg.rungs)
    print(points_table(done["out"], single=not many))
    print(f"\nresults in {done['out']}" + (f", report {done['out'] / 'report.md'}" if many else ""))
    return 0
