"""The settings of one experiment run, validated on creation."""
from __future__ import annotations

from dataclasses import dataclass, field, fields

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
    optim: OptimConfig = field(default_factory=OptimConfig)

    def __post_init__(self):
        if isinstance(self.optim, dict):
            self.optim = OptimConfig(**self.optim)
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
        return out
