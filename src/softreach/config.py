"""The settings of one experiment run, validated on creation."""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from .budget import budget_label, parse_budgets
from .corpus import DEFAULT_CORPUS
from .errors import UserError
from .models import DEFAULT_MODEL
from .optimize import OptimConfig
from .residual import ABLATIONS


@dataclass
class RunConfig:
    """One experiment condition: which model, layer and targets, and how to optimise."""

    model: str = DEFAULT_MODEL
    """Hub id, local model folder, .gguf file, or "smollm2-135m" (the embedded default)."""
    layer: int | None = None
    """Layer L (hidden_states[L], output of block L-1); None means n_layers // 2."""
    targets: int = 50
    """Number of targets."""
    restarts: int = 3
    """Random restarts per target; the best (highest cosine) is kept."""
    seq_len: int = 20
    """Positions T per soft prompt."""
    seed: int = 0
    """Seed for target windows, initial prompts and random-token draws."""
    device: str = "auto"
    """auto, cpu or cuda."""
    corpus: str = DEFAULT_CORPUS
    """"default" (CPython's pydoc topics), "wikitext2", or a path to a text file."""
    ablation: str = "none"
    """none, no_attn (every attention output zeroed) or no_mlp (every MLP output zeroed)."""
    floor_draws: int = 4
    """Random-token draws per target for the floor."""
    mean_windows: int = 256
    """Corpus windows averaged for the per-position mean residual (centred cosine, FVU)."""
    norm_budgets: tuple = (math.inf,)
    """Input-norm budgets, in units of the mean token-embedding norm (inf = free); each condition runs
    at every budget, smallest first, each warm-started from the one before."""
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
        self.norm_budgets = parse_budgets(self.norm_budgets)
        if self.targets < 1:
            raise UserError(f"--targets must be at least 1, got {self.targets}")
        if self.restarts < 1:
            raise UserError(f"--restarts must be at least 1, got {self.restarts}")
        if self.seq_len < 1:
            raise UserError(f"--seq-len must be at least 1, got {self.seq_len}")
        if self.ablation not in ABLATIONS:
            raise UserError(f"unknown ablation {self.ablation!r}: choose from {', '.join(ABLATIONS)}")
        if self.floor_draws < 0 or self.mean_windows < 1:
            raise UserError("--floor-draws must be >= 0 and --mean-windows >= 1")

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        out["optim"] = self.optim.to_dict()
        out["norm_budgets"] = [budget_label(b) for b in self.norm_budgets]
        return out
