"""Presets: `quick` (the README's main job, minutes on 2 CPU cores), `seed` (the log's protocol) and `radius`
(the budget ladder: per-target reachability radii).

A preset is a nested mapping of SuiteConfig settings; it sits between the defaults and any YAML file or
command-line setting (see overrides.py).
"""
from __future__ import annotations

import copy
import math

from .config import LOG_OPTIM
from .errors import UserError

# The log's protocol: 50 targets, 3 restarts, 1000 / 2000 / 3000 steps, T=20, Adam lr 0.01, N(0,1).
SEED = dict(
    run=dict(targets=50, restarts=3, seq_len=20, optim=dict(LOG_OPTIM)),
    steps={"exp2a": 2000, "exp2b": 3000},
    exp3_pairs=10, exp5_targets=10, moment_windows=1000, checkpoint_every=100,
)

# All experiments at reduced size, at norm budgets 1 and inf, with the default solver (copy start,
# plateau schedule, early stopping), ~15 minutes on 2 CPU cores.
QUICK = dict(
    run=dict(targets=6, restarts=1, seq_len=20, norm_budgets=(1.0, math.inf), optim=dict(steps=600)),
    restarts={"exp1": 2},
    exp3_pairs=2, exp5_targets=1, moment_windows=1000, checkpoint_every=25, trajectory_problems=3,
)

# The budget ladder (issue 20): the experiments whose targets have a reachability radius (real, matched random,
# raw random, the two ablations on Exp 1's targets) at budgets 0.25 to 8 and free, each budget warm-started
# from the one below; the report's radius section reads it.
RADIUS = dict(
    experiments=("exp1", "exp2a", "exp2b", "exp4"),
    run=dict(targets=4, restarts=1, seq_len=20, norm_budgets=(0.25, 0.5, 1.0, 2.0, 4.0, 8.0, math.inf),
             optim=dict(steps=600)),
    moment_windows=1000, checkpoint_every=25, trajectory_problems=2,
)

PRESETS = {"quick": QUICK, "seed": SEED, "radius": RADIUS}


def preset(name: str | None) -> dict:
    """The preset's nested settings (a copy); {} for None (the dataclass defaults)."""
    if name is None:
        return {}
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    return copy.deepcopy(PRESETS[name])
