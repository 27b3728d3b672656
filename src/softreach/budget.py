"""Input-norm budgets: a cap on each input vector's L2 norm, in units of the mean token-embedding norm.

A budget b (relative) becomes the absolute cap b * mean ||E_v|| over ordinary tokens v; `inf` is free.
Result folders store the absolute cap as `norm_budget` (null when free) and the relative one as
`norm_budget_tokens`.
"""
from __future__ import annotations

import math
from typing import TYPE_CHECKING

from .errors import UserError

if TYPE_CHECKING:  # torch is imported where tensors are handled, so parsing budgets stays light
    import torch

    from .models import LoadedModel

FREE = math.inf


def parse_budget(text: str | float) -> float:
    """'1', '0.5', 'inf' (or 'free') -> a positive float (math.inf for free)."""
    if isinstance(text, str) and text.strip().lower() in ("inf", "free", "none"):
        return FREE
    try:
        value = float(text)
    except (TypeError, ValueError):
        raise UserError(f"norm budget must be a positive number or 'inf', got {text!r}") from None
    if not value > 0 or math.isnan(value):
        raise UserError(f"norm budget must be a positive number or 'inf', got {text!r}")
    return value


def parse_budgets(items) -> tuple[float, ...]:
    """One or more budgets, deduplicated and sorted ascending (free last)."""
    if isinstance(items, (str, int, float)):
        items = [items]
    values = []
    for item in items:
        for part in str(item).split(","):
            if part.strip():
                values.append(parse_budget(part.strip()))
    if not values:
        raise UserError("--norm-budget needs at least one budget (a positive number or 'inf')")
    return tuple(sorted(set(values)))


def budget_label(budget: float) -> str:
    """1.0 -> '1', 0.5 -> '0.5', inf -> 'inf' (used in folder names and tables)."""
    return "inf" if math.isinf(budget) else f"{budget:g}"


def mean_token_norm(lm: LoadedModel) -> float:
    """Mean L2 norm of the ordinary tokens' embedding rows (the budget unit)."""
    cache = lm.__dict__.setdefault("_mean_token_norm", {})
    if "v" not in cache:
        ids = lm.ordinary_token_ids().to(lm.embedding_matrix.device)
        cache["v"] = float(lm.embedding_matrix.detach().float()[ids].norm(dim=1).mean())
    return cache["v"]


def absolute_cap(lm: LoadedModel, budget: float) -> float | None:
    """The absolute norm cap of a relative budget; None when free."""
    return None if math.isinf(budget) else budget * mean_token_norm(lm)


def clip_norms(x: torch.Tensor, cap: torch.Tensor | float | None) -> torch.Tensor:
    """Scale each vector of x [B, T, d] down to norm <= cap; cap: None, a float, or [B] (inf = free)."""
    import torch

    if cap is None:
        return x
    if not torch.is_tensor(cap):
        cap = torch.tensor(float(cap))
    cap = cap.to(x.device, x.dtype)
    if cap.dim() == 1:
        cap = cap.view(-1, *([1] * (x.dim() - 1)))
    factor = (cap / x.norm(dim=-1, keepdim=True).clamp_min(1e-12)).clamp(max=1.0)
    return x * factor


def budget_fields(lm: LoadedModel, budget: float) -> dict:
    """What a result folder's config.json says of its budget: the absolute cap (`norm_budget`, null when
    free), the budget in token-norm units and the unit itself."""
    return {"norm_budget": absolute_cap(lm, budget), "norm_budget_tokens": None if math.isinf(budget) else budget,
            "token_norm": mean_token_norm(lm)}


def folder_suffix(budget: float) -> str:
    """Suffix of a condition's folder at this budget: '' when free, '_b1' at budget 1."""
    return "" if math.isinf(budget) else f"_b{budget_label(budget)}"
