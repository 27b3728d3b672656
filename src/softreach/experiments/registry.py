"""Every experiment of the research log, named once: titles, labels, its conditions, its target count.

The command line, the presets, the suite, the sweep's cost model and the report all read this module.
It imports nothing heavy (no torch), so the CLI can build its help from it.
"""
from __future__ import annotations

from dataclasses import dataclass

EXP3_ALPHAS = (-0.5, 0.0, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0)
"""Interpolation weights of Exp 3: target = (1 - alpha) a + alpha b."""
EXP5_FRACTIONS = (0.0, 0.1, 0.2, 0.3, 0.5, 0.7, 1.0)
"""Fractions of dimensions (Exp 5A) or top PCA directions (Exp 5B) corrupted."""


@dataclass(frozen=True)
class Condition:
    """One result folder of an experiment (at the free budget; budgeted copies get a `_bB` suffix)."""

    name: str
    """Folder name, e.g. exp4_no_mlp."""
    title: str
    """Heading of its summary.md and report section."""
    label: str
    """Label in tables, e.g. "Exp 4 no MLP"."""
    legend: str
    """Label in figure legends."""
    targets: str
    """What its targets are, in words."""
    ablation: str = "none"
    """Ablation the condition runs under (none, no_attn, no_mlp)."""
    pooled: bool = False
    """Rows mix several settings (alpha or fraction), pooled in the summary statistics."""


@dataclass(frozen=True)
class Experiment:
    """One experiment of the log: its conditions and how many problems it optimises."""

    name: str
    conditions: tuple[Condition, ...]
    heading: str = ""
    """Heading of its section in the suite's report."""
    optimised: bool = True
    """Whether it runs the optimiser (exp1b only evaluates exp1's projected solutions)."""
    needs: tuple[str, ...] = ()
    """Experiments whose folders it reads (run first when asked for alone)."""

    def targets(self, cfg) -> int:
        """Problems per restart this experiment optimises under a SuiteConfig (0 if not optimised)."""
        return _TARGETS[self.name](cfg) if self.optimised else 0


def _c(name, title, label, legend, targets, **kw) -> Condition:
    return Condition(name, title, label, legend, targets, **kw)


_REAL = "real activations"
EXPERIMENTS: dict[str, Experiment] = {e.name: e for e in (  # in the log's order
    Experiment("exp1", (_c("exp1", "Experiment 1: reachability of real activations", "Exp 1", "Exp 1 real", _REAL),),
               heading="Exp 1: reachability of real activations"),
    Experiment("exp1b", (_c("exp1b", "Experiment 1b: Exp 1 solutions projected to their nearest tokens", "Exp 1b",
                            "Exp 1b nearest tokens",
                            "real activations, reached by the nearest tokens of the Exp 1 solutions"),),
               optimised=False, needs=("exp1",),
               heading="Exp 1b: distance of the optimised inputs to the token embeddings"),
    Experiment("exp4", (
        _c("exp4_no_attn", "Experiment 4: every attention output zeroed (FFN only)", "Exp 4 no attention",
           "Exp 4 no attention", "real activations; attention zeroed (FFN only)", ablation="no_attn"),
        _c("exp4_no_mlp", "Experiment 4: every MLP output zeroed (attention only)", "Exp 4 no MLP", "Exp 4 no MLP",
           "real activations; MLP zeroed (attention only)", ablation="no_mlp")), needs=("exp1",),
               heading="Exp 4: attention and FFN ablations"),
    Experiment("exp2a", (_c("exp2a", "Experiment 2a: distribution-matched random targets", "Exp 2a",
                            "Exp 2a matched random", "distribution-matched random"),),
               heading="Exp 2a: distribution-matched random targets"),
    Experiment("exp2b", (_c("exp2b", "Experiment 2b: raw random targets (norm-matched)", "Exp 2b",
                            "Exp 2b raw random", "raw random (norm-matched)"),),
               heading="Exp 2b: raw random targets"),
    Experiment("exp3", (_c("exp3", "Experiment 3: interpolation and extrapolation between real targets", "Exp 3",
                           "Exp 3 interpolation", "interpolations of real pairs (all α pooled)", pooled=True),),
               heading="Exp 3: interpolation and extrapolation between real targets"),
    Experiment("exp5", (
        _c("exp5_raw", "Experiment 5A: corruption of raw dimensions", "Exp 5A raw", "Exp 5A raw corruption",
           "real activations, raw dimensions corrupted (all fractions pooled)", pooled=True),
        _c("exp5_pca", "Experiment 5B: corruption of top PCA directions", "Exp 5B PCA", "Exp 5B PCA corruption",
           "real activations, top PCA directions corrupted (all fractions pooled)", pooled=True)),
               heading="Exp 5: target corruption sweep"),
)}

_TARGETS = {
    "exp1": lambda cfg: cfg.run.targets,
    "exp4": lambda cfg: 2 * cfg.run.targets,
    "exp2a": lambda cfg: cfg.run.targets,
    "exp2b": lambda cfg: cfg.run.targets,
    "exp3": lambda cfg: cfg.exp3_pairs * len(EXP3_ALPHAS),
    "exp5": lambda cfg: 2 * cfg.exp5_targets * len(EXP5_FRACTIONS),
}

ORDER = tuple(EXPERIMENTS)
"""Experiment names in the log's order (the order a suite runs them)."""
OPTIMISED = tuple(e.name for e in EXPERIMENTS.values() if e.optimised)
CONDITIONS: dict[str, Condition] = {c.name: c for e in EXPERIMENTS.values() for c in e.conditions}
"""Every condition (free-budget folder name) of every experiment, in the log's order."""


def experiment(name: str) -> Experiment:
    from ..errors import UserError

    if name not in EXPERIMENTS:
        raise UserError(f"unknown experiment {name!r}: choose from {', '.join(ORDER)}")
    return EXPERIMENTS[name]


def with_needs(names) -> tuple[str, ...]:
    """The experiments asked for plus those they read, in the log's order."""
    wanted = set(names)
    for n in list(wanted):
        wanted |= set(experiment(n).needs)
    return tuple(n for n in ORDER if n in wanted)


def condition_names(names) -> list[str]:
    """Free-budget folder names of the given experiments, in the log's order."""
    return [c.name for n in ORDER if n in set(names) for c in EXPERIMENTS[n].conditions]
