"""Every setting of softreach, in one place: dataclasses with a docstring per field, validated on creation.

The command line is derived from these classes (cli/args.py): one flag per field, its help the field's
docstring, choices from its `Literal`. This module imports no torch, so `softreach --help` stays fast.
"""
from __future__ import annotations

import math
import typing
from dataclasses import dataclass, field, fields
from typing import Literal, Optional

from .budget import budget_label, parse_budgets
from .errors import UserError
from .overrides import parse_list

DEFAULT_MODEL = "smollm2-135m"
DEFAULT_CORPUS = "default"
Ablation = Literal["none", "no_attn", "no_mlp"]


def check_choices(obj) -> None:
    """Refuse a value outside its field's Literal choices, naming the flag."""
    hints = typing.get_type_hints(type(obj))
    for f in fields(obj):
        hint = hints[f.name]
        if typing.get_origin(hint) is Literal and getattr(obj, f.name) not in typing.get_args(hint):
            choices = ", ".join(map(str, typing.get_args(hint)))
            raise UserError(f"--{f.name.replace('_', '-')} must be one of {choices}, got {getattr(obj, f.name)!r}")


def as_dict(obj) -> dict:
    """A config as JSON-ready nested dicts (tuples become lists; a nested config's own to_dict is used)."""
    out = {}
    for f in fields(obj):
        v = getattr(obj, f.name)
        if hasattr(v, "__dataclass_fields__"):
            out[f.name] = v.to_dict() if hasattr(v, "to_dict") else as_dict(v)
        else:
            out[f.name] = list(v) if isinstance(v, tuple) else v
    return out


def _positive(name: str, value: float, zero_ok: bool = False) -> None:
    if not (math.isfinite(value) and (value >= 0 if zero_ok else value > 0)):
        raise UserError(f"--{name} must be a {'' if zero_ok else 'positive '}finite number"
                        f"{' >= 0' if zero_ok else ''}, got {value}")


# The research log's optimiser, kept for replication (`--preset seed`): N(0,1) starts, no early stop.
LOG_OPTIM = dict(steps=1000, lr=0.01, init_scale=1.0, mse_weight=0.01, skip_pos0=False, mse_norm="none",
                 schedule="constant", prune_after=0, start="random", early_stop=False)
VERDICTS = ("converged", "improving")  # a problem's `verdict`; folders written before them also say "norm_limited"


@dataclass
class OptimConfig:
    """How each soft prompt is optimised. The defaults are the fastest settings measured on SmolLM2
    (README, "Design and speed"); LOG_OPTIM holds the research log's settings."""

    steps: int = 600
    """Maximum Adam steps per problem (problems that converge stop earlier)."""
    lr: float = 0.2
    """Adam learning rate (the peak, or the start of the plateau schedule)."""
    init_scale: float = 1.0
    """Random starts are init_scale * N(0, 1)."""
    start: Literal["copy", "random"] = "copy"
    """copy: restart 0 starts from the better of the best scaled copy of the target and the smaller norm
    budget's solution; other restarts from random. random: every restart random, as the log."""
    mse_weight: float = 0.0
    """Weight of the MSE term beside the mean (1 - cos); the log used 0.01."""
    skip_pos0: bool = True
    """Leave position 0 out of the loss (metrics still report it both ways); the seed preset: off."""
    mse_norm: Literal["none", "target"] = "none"
    """none: raw MSE; target: squared error divided by the target's mean square per position."""
    batch_size: int = 64
    """Problems per batched step; larger batches use the hardware better but need more memory."""
    prune_after: int = 40
    """After this many steps only the best restart of each target goes on (0: all restarts run to the end)."""
    memory_budget_mb: Optional[float] = None
    """Memory a batched step may use, in MiB; the batch is split to fit. None: half of what is free."""
    schedule: Literal["plateau", "constant", "cosine", "plateau_cosine"] = "plateau"
    """Learning-rate schedule: plateau (halved per problem when its loss stalls), constant, cosine (from
    lr down to lr * final_lr_frac over the steps), or plateau_cosine (the plateau schedule's halvings under the
    cosine envelope)."""
    final_lr_frac: float = 0.0
    """End of the cosine schedule, as a fraction of lr."""
    tol: float = 1e-3
    """Convergence tolerance in loss units (1 - cos for the default loss): converged once the best loss is
    below tol, or the second half of the run gained less than tol at a stationary point (grad_tol)."""
    grad_tol: float = 0.05
    """Stationary: the best iterate's feasible gradient (its outward part removed at vectors on the cap) is
    below grad_tol x the start's."""
    window: int = 20
    """Steps between convergence checks (and the plateau schedule's look-back)."""
    plateau_decays: int = 12
    """Plateau schedule: at most this many lr halvings, each when a window gains < tol / 100 (6 before issue 17:
    too few for Adam to settle on a stationary point at a small cap)."""
    early_stop: bool = True
    """Converged problems leave the batch (their results are identical to running on); the seed preset: off."""
    solver: Literal["adam", "lbfgs"] = "adam"
    """adam: Adam with a learning rate per problem (step_rule picks its variant); lbfgs: L-BFGS with each
    problem's own history and backtracking line search, its first step Adam-sized (lr per coordinate); slower
    than Adam on SmolLM2 at budget 1 (the README's solver study)."""
    step_rule: Literal["tangent", "projected", "relative"] = "tangent"
    """At a norm cap, Adam steps on the feasible gradient (tangent: its fixed points are stationary points) or on
    the raw gradient (projected, before issue 17: it can stall elsewhere); both then clip to the cap. relative: as
    tangent, with each vector's step also scaled by its own RMS (lr a fraction of its size, as Adafactor's)."""
    dtype: Literal["float32", "bfloat16"] = "float32"
    """Compute dtype of the forward and backward (soft prompts, Adam and every metric stay float32)."""

    def __post_init__(self):
        check_choices(self)
        if self.steps < 1:
            raise UserError(f"--steps must be at least 1, got {self.steps}")
        _positive("init-scale", self.init_scale)
        _positive("mse-weight", self.mse_weight, zero_ok=True)
        _positive("lr", self.lr)
        _positive("tol", self.tol, zero_ok=True)
        _positive("grad-tol", self.grad_tol, zero_ok=True)
        if self.prune_after < 0:
            raise UserError(f"--prune-after must be >= 0, got {self.prune_after}")
        if self.memory_budget_mb is not None and not self.memory_budget_mb > 0:
            raise UserError(f"--memory-budget-mb must be positive, got {self.memory_budget_mb}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.solver == "lbfgs" and self.step_rule == "relative":
            raise UserError("--step-rule relative is Adam's; --solver lbfgs takes tangent or projected")
        if self.window < 1 or self.plateau_decays < 0:
            raise UserError("--window must be >= 1 and --plateau-decays >= 0")

    def to_dict(self) -> dict:  # the default solver is left out, so folders made before the choice resume
        out = as_dict(self)
        if self.solver == "adam":
            del out["solver"]
        return out

    def problem_steps(self, targets: int, restarts: int) -> int:
        """Most problem-steps `targets` x `restarts` problems can take, restart pruning included."""
        if restarts > 1 and 0 < self.prune_after < self.steps:
            return targets * (restarts * self.prune_after + self.steps - self.prune_after)
        return targets * restarts * self.steps

    def lr_at(self, step: int) -> float:
        """Base learning rate for step `step` (0-based); a pure function of the step, so resume is exact."""
        if self.schedule not in ("cosine", "plateau_cosine") or self.steps == 1:
            return self.lr
        frac = step / (self.steps - 1)
        return self.lr * (self.final_lr_frac + (1 - self.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass
class RunConfig:
    """One experiment condition: which model, layer and targets, and how to optimise."""

    model: str = DEFAULT_MODEL
    """Hub id, local model folder, .gguf file, or smollm2-135m (the embedded default)."""
    layer: Optional[int] = None
    """Layer L = hidden_states[L], the output of block L-1; default n_layers // 2."""
    targets: int = 50
    """Number of targets."""
    restarts: int = 3
    """Random restarts per target; the best (highest cosine) is kept."""
    seq_len: int = 20
    """Positions T per soft prompt."""
    seed: int = 0
    """Seed for target windows, initial prompts and random-token draws."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to compute."""
    corpus: str = DEFAULT_CORPUS
    """default (CPython's pydoc topics), wikitext2, or a path to a UTF-8 text file."""
    ablation: Ablation = "none"
    """none, no_attn (every attention output zeroed) or no_mlp (every MLP output zeroed)."""
    floor_draws: int = 4
    """Random-token draws per target for the floor."""
    mean_windows: int = 256
    """Corpus windows averaged for the per-position mean residual (centred cosine, FVU)."""
    norm_budgets: tuple = field(default=(math.inf,), metadata={"flag": "--norm-budget"})
    """Input-norm budgets in units of the mean token-embedding norm, e.g. 1 inf (inf = free); each condition
    runs at every budget, smallest first, each warm-started from the one before."""
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        self.norm_budgets = parse_budgets(self.norm_budgets)
        check_choices(self)
        if self.targets < 1:
            raise UserError(f"--targets must be at least 1, got {self.targets}")
        if self.restarts < 1:
            raise UserError(f"--restarts must be at least 1, got {self.restarts}")
        if self.seq_len < 1:
            raise UserError(f"--seq-len must be at least 1, got {self.seq_len}")
        if self.floor_draws < 0 or self.mean_windows < 1:
            raise UserError("--floor-draws must be >= 0 and --mean-windows >= 1")

    def to_dict(self) -> dict:
        out = as_dict(self)
        out["norm_budgets"] = [budget_label(b) for b in self.norm_budgets]
        return out


@dataclass
class SuiteConfig:
    """Every experiment of the log on one model and layer."""

    run: RunConfig = field(default_factory=RunConfig)
    """Model, layer, targets, seed and optimiser shared by all experiments."""
    experiments: tuple = ()
    """Which experiments to run, comma-separated (always in the log's order; default: all)."""
    steps: dict = field(default_factory=dict)
    """Adam steps per experiment, e.g. steps.exp2b=3000 (missing ones use optim.steps)."""
    restarts: dict = field(default_factory=dict)
    """Restarts per experiment, e.g. restarts.exp4=1 (missing ones use run.restarts)."""
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
        from .experiments.registry import OPTIMISED, ORDER, experiment

        if isinstance(self.run, dict):
            self.run = RunConfig(**self.run)
        if isinstance(self.experiments, str):
            self.experiments = [e.strip() for e in self.experiments.split(",") if e.strip()]
        names = tuple(self.experiments) or ORDER
        for name in names:
            experiment(name)  # refuses unknown names
        self.experiments = tuple(e for e in ORDER if e in names)
        for name in list(self.steps) + list(self.restarts):
            if name not in OPTIMISED:
                raise UserError(f"per-experiment override for {name!r}: only {', '.join(OPTIMISED)} optimise")
        self.steps = {k: int(v) for k, v in self.steps.items()}
        self.restarts = {k: int(v) for k, v in self.restarts.items()}
        if self.moment_windows < 2 or self.exp3_pairs < 1 or self.exp5_targets < 1 or self.checkpoint_every < 1:
            raise UserError("--moment-windows must be >= 2; --exp3-pairs, --exp5-targets, --checkpoint-every >= 1")

    def steps_for(self, experiment: str) -> int:
        return int(self.steps.get(experiment, self.run.optim.steps))

    def restarts_for(self, experiment: str) -> int:
        return int(self.restarts.get(experiment, self.run.restarts))

    def to_dict(self) -> dict:
        out = as_dict(self)
        out["run"] = self.run.to_dict()
        return out


def vocab_percents(values, flag: str = "vocab-percent") -> tuple[float, ...]:
    """Vocabulary percents (the p% most frequent corpus tokens), deduplicated, each in (0, 100]."""
    out = tuple(dict.fromkeys(parse_list(values, flag)))
    if any(not (math.isfinite(p) and 0 < p <= 100) for p in out):
        raise UserError(f"vocabulary percents must be in (0, 100], got {list(out)}")
    return out


STUDY_CONDITION_KEYS = {"exp1": "Exp 1 real", "exp2a": "Exp 2a distribution-matched", "exp2b": "Exp 2b raw random",
                        "exp4_no_mlp": "Exp 4 no MLP", "exp5a": "Exp 5A raw corruption 0.5"}
"""The budget-1 solver study's conditions (solver_study.solver_conditions) by their command-line names."""
STUDY_RUN_KEYS = {"plateau": "tangent Adam, copy start, plateau lr 0.2", "cosine": "Adam, random start, cosine lr 0.1"}
"""The study's long reference runs (solver_study.REFERENCE_RUNS) by their command-line names."""


def check_study_parts(reference_runs, study_conditions) -> None:
    """Refuse an unknown or empty choice of reference runs or study conditions, naming the flag."""
    for flag, chosen, keys in (("reference-runs", reference_runs, STUDY_RUN_KEYS),
                               ("study-conditions", study_conditions, STUDY_CONDITION_KEYS)):
        bad = [k for k in chosen if k not in keys] or ([] if chosen else ["(none)"])
        if bad:
            raise UserError(f"--{flag}: unknown {', '.join(bad)}; choose from {', '.join(keys)}")


@dataclass
class BenchConfig:
    """The benchmark: the engine against the log's method, on this machine."""

    workloads: tuple = ("pythia", "smollm2")
    """Comma-separated: pythia (Pythia-160M shape, random weights, L=6), smollm2 (embedded model, middle layer),
    steer (SmolLM2, 20 soft slots after 100 fixed tokens: cached prefix vs full input), references (budget-1
    reference values: --convergence-targets per condition, --convergence-steps per run; slow), nanogcg (our GCG
    against nanoGCG on its objective, 3 seeds x 10 steps x 64 candidates; needs `pip install nanogcg --no-deps`)."""
    problems: int = 150
    """Problems per workload."""
    steps: int = 10
    """Engine steps timed."""
    baseline_steps: int = 5
    """Baseline steps timed per problem."""
    batch_size: int = 64
    """Engine batch."""
    convergence_targets: int = 0
    """Also compare the solvers on this many SmolLM2 targets per condition (Exp 1, 2a, 2b, 4 no MLP, 5A) at
    budget 1: evaluations to the best fidelity found (0: skip; slow)."""
    convergence_steps: int = 600
    """Most steps per solver in that comparison."""
    reference_runs: tuple = tuple(STUDY_RUN_KEYS)
    """Comma-separated: which long runs the references workload takes the best of, plateau (the default solver
    from the copy start) and cosine (Adam from a random start, cosine schedule over the whole run)."""
    study_conditions: tuple = tuple(STUDY_CONDITION_KEYS)
    """Comma-separated: the conditions the solver comparison and the references workload run (e.g. a part per
    process, each with its own --json)."""
    references: tuple = ()
    """JSON files written by `--workloads references --json` (or their .partial files): the solver comparison
    measures each solver against these reference values (else against the best any solver reached)."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to compute."""
    json: Optional[str] = None
    """Also write the figures as JSON here."""

    def __post_init__(self):
        for name in ("workloads", "reference_runs", "study_conditions", "references"):
            value = getattr(self, name)
            if isinstance(value, str):
                value = [w.strip() for w in value.split(",") if w.strip()]
            setattr(self, name, tuple(value))
        check_study_parts(self.reference_runs, self.study_conditions)
        for w in self.workloads:
            if w not in ("pythia", "smollm2", "steer", "references", "nanogcg"):
                raise UserError(f"unknown workload {w!r}: choose from pythia, smollm2, steer, references, nanogcg")
        check_choices(self)
        if self.problems < 1 or self.steps < 1 or self.baseline_steps < 1 or self.batch_size < 1:
            raise UserError("--problems, --steps, --baseline-steps and --batch-size must be at least 1")
        if self.convergence_targets < 0 or self.convergence_steps < 1:
            raise UserError("--convergence-targets must be >= 0 and --convergence-steps >= 1")
