"""The copy baseline: how close the target itself, scaled and fed as the input, already gets.

Blocks add bounded updates to the residual stream, so a large enough copy of any target reaches it
with no optimisation. A reachability figure means something only beside this baseline, computed
within the same input-norm budget: inputs x_t = clip(a * target_t, cap) for scales a on a grid,
keeping the best scale per problem.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .budget import clip_norms
from .metrics import cos_per_position
from .models import LoadedModel
from .residual import residual_at

# a = 2^(k/2), k = -20..20: every scale of the verifiers' grid (2^-10..2^10) and the half-steps between
COPY_SCALES = tuple(2.0 ** (k / 2) for k in range(-20, 21))


@dataclass
class CopyBaseline:
    cos: torch.Tensor  # [N] best mean cosine over all positions (over scales)
    cos_no_pos0: torch.Tensor  # [N] best mean cosine without position 0 (its own best scale)
    scale: torch.Tensor  # [N] the start's scale: the smallest within start_tol of the best objective
    inputs: torch.Tensor  # [N, T, d] the copy at that scale, clipped: the solver's copy start


@torch.no_grad()
def copy_baseline(lm: LoadedModel, layer: int, target: torch.Tensor, cap: float | None = None,
                  ablation: str = "none", skip_pos0: bool = True, batch_size: int = 64,
                  start_tol: float = 0.0) -> CopyBaseline:
    """Best scaled copy of each target within the norm cap. target: [N, T, d] (CPU float32).

    The start (`scale`, `inputs`) is the smallest scale whose objective is within `start_tol` of the
    best: without a cap the cosine keeps creeping up with the scale while the input (and the reached
    residual) grows without bound, so a tolerance keeps the start, and the MSE, sensible.
    """
    target = target.float()
    n, t, _ = target.shape
    min_norm = target.norm(dim=-1).amin(1).clamp_min(1e-12)  # [N]
    scales, objs, alls, np0s = [], [], [], []
    for k, a in enumerate(COPY_SCALES):
        if cap is not None and k and bool((COPY_SCALES[k - 1] * min_norm >= cap).all()):
            break  # every vector was already clipped at the previous scale: the same input from here on
        cos = _cosines(lm, layer, clip_norms(a * target, cap), target, ablation, batch_size)  # [N, T]
        c_all = cos.mean(1)
        c_np0 = cos[:, 1:].mean(1) if t > 1 else c_all
        scales.append(a)
        alls.append(c_all)
        np0s.append(c_np0)
        objs.append(c_np0 if skip_pos0 else c_all)
    obj = torch.stack(objs)  # [S, N]
    good = obj >= obj.max(0).values - start_tol  # [S, N]
    first = good.float().argmax(0)  # [N] smallest good scale
    scale = torch.tensor(scales)[first]
    inputs = clip_norms(scale.view(-1, 1, 1) * target, cap)
    return CopyBaseline(cos=torch.stack(alls).max(0).values, cos_no_pos0=torch.stack(np0s).max(0).values,
                        scale=scale, inputs=inputs)


def _cosines(lm, layer, x, target, ablation, batch_size) -> torch.Tensor:
    out = []
    for lo in range(0, x.shape[0], batch_size):
        h = residual_at(lm.model, layer, inputs_embeds=x[lo : lo + batch_size].to(lm.device), ablation=ablation)
        out.append(cos_per_position(h.float().cpu(), target[lo : lo + batch_size]))
    return torch.cat(out)
