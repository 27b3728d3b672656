"""Figures for the reports, one PNG per function, drawn with matplotlib's Agg renderer.

Every function takes plain numbers and a destination path, writes the PNG atomically and returns the
path. matplotlib is imported inside the functions, so `import softreach` never loads it.
    axes     shared helpers: standalone figures, atomic saving, the "nines" cosine axis
    suite    figures of the experiment sections (histograms, loss curves, Exp 1b, 3, 4, 5)
    budgets  fidelity against the input-norm budget
"""
from .axes import _cosine_axis, _new_figure, _save, from_nines, to_nines
from .budgets import budget_curves, radius_curves
from .suite import (ablation_comparison, alpha_curve, corruption_curves, cosine_by_position, cosine_histogram,
                    embedding_distance, loss_curves, trajectories)

__all__ = ["ablation_comparison", "alpha_curve", "budget_curves", "corruption_curves", "cosine_by_position",
           "cosine_histogram", "embedding_distance", "from_nines", "loss_curves", "radius_curves", "to_nines",
           "trajectories",
           # helpers the sweep and ladder figures use
           "_cosine_axis", "_new_figure", "_save"]
