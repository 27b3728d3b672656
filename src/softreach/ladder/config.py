"""The settings of the constraint ladder (torch-free, like ../config.py; the CLI follows from them)."""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Literal, Optional

from ..config import (DEFAULT_CORPUS, DEFAULT_MODEL, OptimConfig, _positive, as_dict, check_choices,
                      vocab_percents)
from ..errors import UserError
from ..overrides import parse_list

CONTINUOUS_RUNGS = ("free", "norm_bound", "nearest_penalty", "mixture")
DISCRETE_RUNGS = ("projected", "gcg", "causal")
BASELINE_RUNGS = ("projection", "random_tokens", "own_tokens")
RUNGS = CONTINUOUS_RUNGS + DISCRETE_RUNGS + BASELINE_RUNGS

_ENGINE = OptimConfig()  # the ladder's loss follows the engine's defaults


@dataclass
class LadderSettings:
    """How each rung of the constraint ladder is run (defaults: a few minutes on SmolLM2, 4 targets, CPU)."""

    steps: int = 150
    """Steps (forward+backward evaluations) of every optimised rung (free, norm_bound, nearest_penalty, mixture, projected)."""
    lr: float = 0.03
    """Peak lr of the free, norm_bound and nearest_penalty rungs (best of 0.01/0.03/0.1 on SmolLM2 L15)."""
    mixture_lr: float = 1.0
    """Peak lr of the mixture logits (best of 0.3/1/3 on SmolLM2 L15)."""
    projected_lr: float = 0.1
    """Peak lr of the projected (PEZ) rung's continuous vectors (best of 0.01/0.1/0.3)."""
    init: Literal["tokens", "normal"] = "tokens"
    """Start of the vector rungs: tokens (one random ordinary-token sequence per target, shared by every
    rung: the random_tokens baseline and GCG's random start) or normal (init_scale * N(0, 1), the log's)."""
    init_scale: float = 1.0
    """Scale of the normal start, and of the mixture logits' start init_scale * N(0, 1)."""
    schedule: Literal["cosine", "constant"] = "cosine"
    """Learning-rate schedule of the optimised rungs (every rung runs all its steps: equal cost, no early stop)."""
    solver: Literal["adam", "lbfgs"] = "adam"
    """Solver of the optimised rungs: adam, or lbfgs (each problem its own history and line search; the lr then
    sizes its first step, as Adam's)."""
    mse_weight: float = _ENGINE.mse_weight
    """Weight of the MSE term of the loss (every rung, GCG included); the engine's default."""
    skip_pos0: bool = _ENGINE.skip_pos0
    """Leave position 0 out of every rung's loss (metrics report it both ways); the engine's default."""
    mse_norm: Literal["none", "target"] = _ENGINE.mse_norm
    """none, or target (squared error over the target's mean square per position)."""
    norm_bounds: tuple = (1.0, 2.0)
    """norm_bound: maximum norm per position, in multiples of the mean ordinary-token embedding norm."""
    penalty_weights: tuple = (0.01, 1.0)
    """nearest_penalty: weights w of the distance-to-nearest-token term."""
    penalty_kind: Literal["l2", "cos"] = "l2"
    """nearest_penalty distance: l2 (squared distance / mean squared token norm) or cos (1 - cosine)."""
    mixture_taus: tuple = (1.0,)
    """mixture: softmax temperatures."""
    gcg_budget: int = 2048
    """gcg: forward passes per target (every candidate and every gradient pass counts one); about a minute per
    target on 2 CPU cores (SmolLM2, T=20); nanoGCG's full strength (250 x 512 candidates): 128250."""
    gcg_top_k: int = 256
    """gcg: candidate tokens per position, the most promising by the one-hot gradient (nanoGCG's default)."""
    gcg_candidates: int = 512
    """gcg: single-swap candidates evaluated per iteration (nanoGCG's search width)."""
    gcg_init: Literal["random", "projected"] = "random"
    """gcg start: random tokens (the shared start) or the projected rung's tokens."""
    causal_chunk: int = 32
    """causal: candidates checked in a position's first round (each next round twice as many)."""
    causal_max_candidates: int = 0
    """causal: most candidates checked per position (0: the whole vocabulary; a reproducing token is then always
    found when the prefix is right)."""
    batch_size: int = 64
    """Problems per batched optimisation step."""
    memory_budget_mb: Optional[float] = None
    """Memory a batched step (or a GCG candidate batch) may use, in MiB; None: half of what is free."""
    floor_draws: int = 4
    """Random-token draws per target for the floor."""
    vocab_percent: tuple = (100.0,)
    """Restrict every discrete rung and the nearest-token analysis to the p% most frequent corpus tokens;
    several values run each discrete rung once per p (folders suffixed _v{p}, none for p = 100)."""

    def __post_init__(self):
        self.norm_bounds = parse_list(self.norm_bounds, "norm-bounds")
        self.vocab_percent = vocab_percents(self.vocab_percent)
        self.penalty_weights = parse_list(self.penalty_weights, "penalty-weights")
        self.mixture_taus = parse_list(self.mixture_taus, "mixture-taus")
        check_choices(self)
        for name in ("lr", "mixture_lr", "projected_lr", "init_scale"):
            _positive(name.replace("_", "-"), getattr(self, name))
        if any(not (math.isfinite(c) and c > 0) for c in self.norm_bounds):
            raise UserError(f"norm bounds must be positive, got {list(self.norm_bounds)}")
        if any(not (math.isfinite(w) and w >= 0) for w in self.penalty_weights):
            raise UserError(f"penalty weights must be >= 0, got {list(self.penalty_weights)}")
        if any(not (math.isfinite(t) and t > 0) for t in self.mixture_taus):
            raise UserError(f"mixture temperatures must be positive, got {list(self.mixture_taus)}")
        if self.gcg_budget < 2:
            raise UserError(f"--gcg-budget must be at least 2 forward passes, got {self.gcg_budget}")
        if self.gcg_top_k < 1 or self.gcg_candidates < 1:
            raise UserError("--gcg-top-k and --gcg-candidates must be at least 1")
        if self.causal_chunk < 1 or self.causal_max_candidates < 0:
            raise UserError("--causal-chunk must be at least 1 and --causal-max-candidates at least 0")
        if self.floor_draws < 0:
            raise UserError(f"--floor-draws must be >= 0, got {self.floor_draws}")
        self.optim(self.lr)  # validates steps, mse settings, batch size and memory budget

    def optim(self, lr: float) -> OptimConfig:
        """The engine's config for an optimised rung with learning rate `lr`."""
        return OptimConfig(steps=self.steps, lr=lr, init_scale=self.init_scale, mse_weight=self.mse_weight,
                           skip_pos0=self.skip_pos0, mse_norm=self.mse_norm, batch_size=self.batch_size,
                           memory_budget_mb=self.memory_budget_mb, schedule=self.schedule, prune_after=0,
                           early_stop=False, solver=self.solver)

    def to_dict(self) -> dict:  # the default vocabulary and solver are left out, so ladder folders made before them resume
        out = as_dict(self)
        if self.vocab_percent == (100.0,):
            del out["vocab_percent"]
        if self.solver == "adam":
            del out["solver"]
        return out


@dataclass
class LadderConfig:
    """A constraint ladder: real-text targets from the corpus under every rung."""

    model: str = DEFAULT_MODEL
    """Hub id, local model folder, .gguf file, or smollm2-135m (the embedded default)."""
    layer: Optional[int] = None
    """Layer L = hidden_states[L]; default n_layers // 2."""
    targets: int = 4
    """Number of real-text targets."""
    seq_len: int = 20
    """Positions T."""
    seed: int = 0
    """Seed for the target windows, starts and random-token draws."""
    device: Literal["auto", "cpu", "cuda"] = "auto"
    """Where to compute."""
    corpus: str = DEFAULT_CORPUS
    """default (CPython's pydoc topics), wikitext2, or a path to a UTF-8 text file."""
    rungs: tuple = RUNGS
    """Rungs to run, comma-separated (default: all, in the ladder's order)."""
    settings: LadderSettings = field(default_factory=LadderSettings)

    def __post_init__(self):
        if isinstance(self.settings, dict):
            self.settings = LadderSettings(**self.settings)
        if isinstance(self.rungs, str):
            self.rungs = [r.strip() for r in self.rungs.split(",") if r.strip()]
        unknown = [r for r in self.rungs if r not in RUNGS]
        if unknown or not self.rungs:
            raise UserError(f"unknown rung {(unknown or [''])[0]!r}: choose from {', '.join(RUNGS)}")
        self.rungs = tuple(r for r in RUNGS if r in self.rungs)
        check_choices(self)
        if self.targets < 1:
            raise UserError(f"--targets must be at least 1, got {self.targets}")
        if self.seq_len < 1:
            raise UserError(f"--seq-len must be at least 1, got {self.seq_len}")
