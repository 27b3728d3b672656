"""The settings of a steering run (torch-free, like ../config.py; the CLI follows from them)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from ..budget import budget_label, parse_budget
from ..config import DEFAULT_CORPUS, DEFAULT_MODEL, OptimConfig, as_dict, check_choices, vocab_percents
from ..errors import UserError
from ..overrides import parse_list

SWEEPS = ("k", "m", "distance")
SLOT_RUNGS = ("projection", "projected", "gcg", "causal")
# A layout's fixed text (before, after the slots) when --before/--after are not given.
LAYOUT_LENGTHS = {"prefix": (0, 100), "infix": (50, 50), "suffix": (100, 4)}
# Steering: Adam lr 0.1 under the plateau schedule, at most 1000 steps (session 15, SmolLM2 layer 15, suffix layout,
# 8 texts: steered targets 0.9990 with 6 of 8 converged, where lr 0.01 reached 0.9935 in 300 steps and 0.9989 in
# 3000; noise targets 0.9924 against 0.9869 after 3000 steps at lr 0.01). Before: 300 steps at lr 0.01.
STEER_OPTIM = dict(steps=1000, lr=0.1, start="random", prune_after=0, skip_pos0=False)


@dataclass
class SteerConfig:
    """Soft vectors in K slots around fixed corpus text, optimised so the layer-L residuals of chosen text
    positions after the slots reach a target. The copy route is closed there: only attention carries the
    soft vectors' influence."""

    model: str = DEFAULT_MODEL
    """Hub id, local model folder, .gguf file, or smollm2-135m (the embedded default)."""
    layer: Optional[int] = None
    """Layer L = hidden_states[L], the output of block L-1; default n_layers // 2."""
    layout: Literal["prefix", "infix", "suffix"] = "prefix"
    """Where the soft slots sit: prefix (before all the text), infix (inside it) or suffix (after it, followed
    by a short fixed tail whose residuals are steered, like a chat template's turn marker)."""
    soft: int = 20
    """K: soft vectors (slots)."""
    before: Optional[int] = None
    """Fixed tokens before the slots (default by layout: prefix 0, infix 50, suffix 100)."""
    after: Optional[int] = None
    """Fixed tokens after the slots, where the steered positions are (default by layout: prefix 100, infix
    50, suffix 4)."""
    steer: str = "last"
    """Steered positions among the text after the slots: last, last:M (M positions) or all."""
    distance: Optional[int] = None
    """Distance from the last slot to the first steered position (1 = the next token); default: the steered
    positions end at the text's last token."""
    kind: Literal["steered", "real", "random"] = "steered"
    """Targets: steered (the clean residual plus c * |clean| * a unit direction), real (the residuals when the
    slots hold another text's tokens: reachable by tokens, which are saved), random (norm-matched noise)."""
    coefficients: tuple = (0.5,)
    """steered: the coefficients c (each text is a problem at every c)."""
    direction: Literal["random", "mean_diff"] = "random"
    """steered: a random unit direction per text, or the mean residual of --direction-a minus --direction-b."""
    direction_a: Optional[str] = None
    """mean_diff: text file of the class the direction points to."""
    direction_b: Optional[str] = None
    """mean_diff: text file of the class it points away from."""
    targets: int = 8
    """Texts (templates) drawn from the corpus."""
    restarts: int = 1
    """Starts per problem: the text's own tokens first, then random vectors; the best is kept."""
    norm_budget: float = field(default=1.0, metadata={"flag": "--norm-budget"})
    """Cap on each soft vector's norm in units of the mean token-embedding norm (inf = free)."""
    fidelity: float = 0.95
    """The cosine a problem must reach to count as steered (smallest K reaching it: the text-target distance)."""
    sweep: tuple = ()
    """Sweeps to run in one folder, comma-separated: k, m, distance (empty: one result folder)."""
    k_values: tuple = (1, 2, 4, 8, 16, 32)
    """K sweep: the numbers of soft slots."""
    m_values: tuple = ("1", "5", "10", "20", "all")
    """M sweep: the numbers of steered positions (last M; all = every position after the slots)."""
    distances: tuple = (1, 2, 5, 10, 20, 50, 100)
    """Distance sweep: distances of one steered position from the last slot (those beyond the text are dropped)."""
    rungs: tuple = ()
    """Discrete rungs in the slots, run on the base condition (--soft, --steer, --distance), comma-separated:
    projection (nearest tokens of the soft solution), projected (PEZ), gcg, causal (slot by slot, in order)."""
    vocab_percent: tuple = (100.0,)
    """The discrete rungs may use only the p% most frequent corpus tokens; each rung runs once per p."""
    gcg_budget: int = 256
    """gcg: forward passes per problem."""
    causal_candidates: int = 256
    """causal: most candidates per slot and pass (passes over the slots while one improves, at most 4; each
    candidate is one forward)."""
    downstream: bool = True
    """Also compare the next-token distributions at the steered positions (KL, top-1) with the target's."""
    seed: int = 0
    """Seed for texts, directions, starts and random-token draws."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to compute."""
    corpus: str = DEFAULT_CORPUS
    """default (CPython's pydoc topics), wikitext2, or a path to a UTF-8 text file."""
    floor_draws: int = 4
    """Random-token draws in the slots per problem for the floor."""
    optim: OptimConfig = field(default_factory=lambda: OptimConfig(**STEER_OPTIM))

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**{**STEER_OPTIM, **self.optim})
        check_choices(self)
        self.norm_budget = parse_budget(self.norm_budget)
        self.coefficients = parse_list(self.coefficients, "coefficients")
        self.k_values = tuple(sorted(set(parse_list(self.k_values, "k-values", int))))
        self.m_values = parse_list(self.m_values, "m-values", str)
        self.distances = tuple(sorted(set(parse_list(self.distances, "distances", int))))
        self.sweep = _subset(self.sweep, SWEEPS, "sweep")
        self.rungs = _subset(self.rungs, SLOT_RUNGS, "rung")
        self.vocab_percent = vocab_percents(self.vocab_percent)
        if self.gcg_budget < 2:
            raise UserError(f"--gcg-budget must be at least 2 forward passes, got {self.gcg_budget}")
        if self.causal_candidates < 1:
            raise UserError(f"--causal-candidates must be at least 1, got {self.causal_candidates}")
        if self.soft < 1 or any(k < 1 for k in self.k_values):
            raise UserError("--soft and every --k-values must be at least 1")
        for m in self.m_values:
            if m != "all" and not (m.isdigit() and int(m) >= 1):
                raise UserError(f"--m-values takes positive integers or all, got {m!r}")
        if any(d < 1 for d in self.distances) or (self.distance is not None and self.distance < 1):
            raise UserError("distances must be at least 1 (1 = the token right after the slots)")
        if self.before is not None and self.before < 0 or self.after is not None and self.after < 1:
            raise UserError("--before must be >= 0 and --after >= 1 (the steered positions are after the slots)")
        steered_count(self.steer, 10**9)  # refuses a malformed --steer
        if self.kind == "steered" and self.direction == "mean_diff" and not (self.direction_a and self.direction_b):
            raise UserError("--direction mean_diff needs --direction-a and --direction-b (two text files)")
        if self.targets < 1 or self.restarts < 1 or self.floor_draws < 0:
            raise UserError("--targets and --restarts must be at least 1, --floor-draws >= 0")
        if not 0 < self.fidelity <= 1:
            raise UserError(f"--fidelity must be in (0, 1], got {self.fidelity}")
        if any(not math.isfinite(c) for c in self.coefficients):
            raise UserError("--coefficients must be finite")

    @property
    def lengths(self) -> tuple[int, int]:
        """(fixed tokens before the slots, after them)."""
        before, after = LAYOUT_LENGTHS[self.layout]
        return (before if self.before is None else self.before, after if self.after is None else self.after)

    def to_dict(self) -> dict:
        out = as_dict(self)
        out["norm_budget"] = budget_label(self.norm_budget)
        return out


def steered_count(steer: str, after: int) -> int:
    """How many positions `steer` picks among `after` positions: last -> 1, last:M -> M, all -> after."""
    if steer == "all":
        return after
    if steer == "last":
        return 1
    head, _, m = steer.partition(":")
    if head != "last" or not m.isdigit() or int(m) < 1:
        raise UserError(f"--steer must be last, last:M (M >= 1) or all, got {steer!r}")
    return int(m)


def _subset(values, allowed: tuple, what: str) -> tuple:
    """Comma-separated names (or a sequence) -> those of `allowed`, in its order; unknown names refused."""
    names = [str(v).strip() for v in (values.split(",") if isinstance(values, str) else values) if str(v).strip()]
    unknown = [v for v in names if v not in allowed]
    if unknown:
        raise UserError(f"unknown {what} {unknown[0]!r}: choose from {', '.join(allowed)}")
    return tuple(v for v in allowed if v in names)
