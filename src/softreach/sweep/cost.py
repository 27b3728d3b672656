"""The cost of a sweep on paper: optimiser problem-steps per cell and, given a measured rate, seconds.

A problem-step is one Adam step of one (target, restart) problem; each experiment's problem count comes
from the registry (`Experiment.targets`).
"""
from __future__ import annotations

import dataclasses

from ..config import SuiteConfig
from ..experiments.registry import EXPERIMENTS
from .grid import Sweep


def problem_steps(cfg: SuiteConfig) -> int:
    """Optimiser problem-steps (targets x restarts x steps, restart pruning included) of one cell's suite."""
    names = set(cfg.experiments) | ({"exp1"} if "exp1b" in cfg.experiments else set())  # exp1b runs a missing exp1
    return sum(dataclasses.replace(cfg.run.optim, steps=cfg.steps_for(name))
               .problem_steps(EXPERIMENTS[name].targets(cfg), cfg.restarts_for(name))
               for name in names if EXPERIMENTS[name].optimised)


def plan(sweep: Sweep, rate: float | None = None) -> list[dict]:
    """Per cell: {"cell", "problem_steps", "seconds"}; seconds (None without `rate`) estimated from `rate`,
    the problem-steps/s measured at full depth.

    Cost model: a step runs the model up to layer L only, so a cell at layer L of an n-layer model
    costs problem_steps * (L / n) / rate seconds.
    """
    n_layers = sweep.grid["n_layers"]
    rows = []
    for c in sweep.cells:
        ps = problem_steps(c.config)
        rows.append({"cell": c.slug, "problem_steps": ps,
                     "seconds": ps * c.layer / n_layers[c.model] / rate if rate else None})
    return rows
