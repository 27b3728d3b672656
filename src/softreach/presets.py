"""Suite presets: `quick` (the README's main job, minutes on 2 CPU cores) and `seed` (the log's protocol)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from .config import RunConfig
from .errors import UserError
from .optimize import LOG_OPTIM, OptimConfig

ORDER = ("exp1", "exp1b", "exp4", "exp2a", "exp2b", "exp3", "exp5")  # the log's order
OPTIMISED = ("exp1", "exp4", "exp2a", "exp2b", "exp3", "exp5")


@dataclass
class SuiteConfig:
    """Every experiment of the log on one model and layer."""

    run: RunConfig = field(default_factory=RunConfig)
    """Model, layer, targets, seed and optimiser shared by all experiments."""
    experiments: tuple = ORDER
    """Which experiments to run (always in the log's order)."""
    steps: dict = field(default_factory=dict)
    """Adam steps per experiment (missing ones use run.optim.steps)."""
    restarts: dict = field(default_factory=dict)
    """Restarts per experiment (missing ones use run.restarts)."""
    exp3_pairs: int = 10
    """Pairs of real targets interpolated in Exp 3."""
    exp5_targets: int = 10
    """Real targets corrupted at each fraction in Exp 5."""
    moment_windows: int = 1000
    """Real windows used for Exp 2a's mean and covariance (and 2b's norms, 5's statistics)."""
    checkpoint_every: int = 50
    """Steps between checkpoints inside an experiment."""
    trajectory_problems: int = 4
    """Exp 1 problems whose all-layer residual trajectories are saved."""

    def __post_init__(self):
        if isinstance(self.run, dict):
            self.run = RunConfig(**self.run)
        self.experiments = tuple(self.experiments)
        unknown = [e for e in self.experiments if e not in ORDER]
        if unknown:
            raise UserError(f"unknown experiment {unknown[0]!r}: choose from {', '.join(ORDER)}")
        self.experiments = tuple(e for e in ORDER if e in self.experiments)
        for name in list(self.steps) + list(self.restarts):
            if name not in OPTIMISED:
                raise UserError(f"per-experiment override for {name!r}: only {', '.join(OPTIMISED)} optimise")
        if self.moment_windows < 2 or self.exp3_pairs < 1 or self.exp5_targets < 1 or self.checkpoint_every < 1:
            raise UserError("--moment-windows must be >= 2; --exp3-pairs, --exp5-targets, --checkpoint-every >= 1")

    def steps_for(self, experiment: str) -> int:
        return int(self.steps.get(experiment, self.run.optim.steps))

    def restarts_for(self, experiment: str) -> int:
        return int(self.restarts.get(experiment, self.run.restarts))

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["run"] = self.run.to_dict()
        out["experiments"] = list(self.experiments)
        return out


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

PRESETS = {"quick": QUICK, "seed": SEED}


def preset(name: str) -> dict:
    if name not in PRESETS:
        raise UserError(f"unknown preset {name!r}: choose from {', '.join(PRESETS)}")
    import copy

    return copy.deepcopy(PRESETS[name])


def build_suite_config(preset_name: str | None, run_overrides: dict, optim_overrides: dict,
                       suite_overrides: dict) -> SuiteConfig:
    """A preset (None: the dataclass defaults) with any setting overridden (run, optimiser and suite level)."""
    base = preset(preset_name) if preset_name is not None else {"run": {}}
    run = base.pop("run")
    optim = dict(run.pop("optim", {}))
    optim.update(optim_overrides)
    run.update(run_overrides)
    suite_fields = {f.name for f in fields(SuiteConfig)} - {"run"}
    unknown = set(suite_overrides) - suite_fields
    if unknown:
        raise UserError(f"unknown suite setting {sorted(unknown)[0]!r}: choose from {', '.join(sorted(suite_fields))}")
    for key in ("steps", "restarts"):
        base[key] = {**base.get(key, {}), **suite_overrides.pop(key, {})}
    base.update(suite_overrides)
    valid = {f.name for f in fields(OptimConfig)}
    bad = set(optim) - valid
    if bad:
        raise UserError(f"unknown optimiser setting {sorted(bad)[0]!r}")
    return SuiteConfig(run=RunConfig(**run, optim=OptimConfig(**optim)), **base)
