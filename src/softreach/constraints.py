"""Constrained soft prompts: parametrisations between free vectors and real tokens.

Each constraint is an `InputParam` for the batched engine (`optimise(..., param=...)`):
  NormBound       free vectors, projected after every step to norm <= max_norm per position;
  NearestPenalty  free vectors, loss + weight * mean over positions of the distance to the nearest token;
  TokenMixture    logits over ordinary tokens, inputs = softmax(logits / tau) @ E (a convex combination);
  StraightThrough (PEZ) the forward sees the nearest tokens' embeddings, the gradient reaches the vectors.
The constraint ladder (softreach.ladder) runs each of them as a rung.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

from .budget import clip_norms
from .errors import UserError
from .manifold import TokenTable, nearest_rows
from .optimize import InputParam


class NormBound(InputParam):
    """Free vectors whose norm is cut to `max_norm` per position after every step (and at the start)."""

    def __init__(self, max_norm: float):
        self.max_norm = float(max_norm)

    def after_step(self, param: torch.Tensor) -> None:  # param [B, T, d], in place
        param.copy_(clip_norms(param, self.max_norm))


class NearestPenalty(InputParam):
    """Free vectors with an extra loss: weight * mean over positions of the distance to the nearest token.

    kind="l2" (the default): squared Euclidean distance to the nearest ordinary token (nearest in L2),
    divided by the mean squared token norm, so it is scale-free and 0 exactly at token rows.
    kind="cos": 1 - cosine to the nearest token by cosine (blind to the norm).
    The nearest token is found without gradient; the gradient flows through the distance to it.
    """

    def __init__(self, table: TokenTable, weight: float, kind: str = "l2"):
        if kind not in ("l2", "cos"):
            raise UserError(f"penalty kind must be 'l2' or 'cos', got {kind!r}")
        self.table, self.weight, self.kind = table, float(weight), kind

    def distance(self, inputs: torch.Tensor) -> torch.Tensor:
        """Distance of each input vector to its nearest token: [B, T, d] -> [B, T]."""
        nearest = self.table.emb.to(inputs.device)[nearest_rows(inputs, self.table, self.kind)]  # [B, T, d]
        if self.kind == "cos":
            return 1 - F.cosine_similarity(inputs, nearest, dim=-1)
        return ((inputs - nearest) ** 2).sum(-1) / self.table.mean_sq_norm

    def penalty(self, param: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:  # [B]
        return self.weight * self.distance(inputs).mean(1)


class TokenMixture(InputParam):
    """Parameter = logits [B, T, V'] over the ordinary tokens; inputs = softmax(logits / tau) @ E'."""

    def __init__(self, table: TokenTable, tau: float = 1.0):
        if not (math.isfinite(tau) and tau > 0):
            raise UserError(f"mixture temperature must be positive, got {tau}")
        self.table, self.tau = table, float(tau)

    def weights(self, logits: torch.Tensor) -> torch.Tensor:  # [B, T, V'], rows sum to 1
        return torch.softmax(logits / self.tau, dim=-1)

    def inputs(self, logits: torch.Tensor) -> torch.Tensor:  # [B, T, V'] -> [B, T, d]
        return self.weights(logits) @ self.table.emb.to(logits.device)

    def argmax_ids(self, logits: torch.Tensor) -> torch.Tensor:
        """The most weighted token per position, as ordinary token ids: [B, T]."""
        return self.table.ids.to(logits.device)[logits.argmax(-1)]


class StraightThrough(InputParam):
    """PEZ-style projected steps: inputs = soft + (E[nearest(soft)] - soft).detach().

    The forward value is exactly the nearest tokens' embeddings (nearest by cosine); the gradient
    passes straight through to the continuous vectors. While optimising, the nearest-token indices of
    every training forward are kept in `history` (one [B, T] tensor per call, in call order), so the
    best ids by loss can be recovered from the engine's loss curve.
    """

    def __init__(self, table: TokenTable):
        self.table = table
        self.history: list[torch.Tensor] = []

    def nearest_ids(self, soft: torch.Tensor) -> torch.Tensor:  # [B, T] ordinary token ids
        return self.table.ids.to(soft.device)[nearest_rows(soft, self.table)]

    def inputs(self, soft: torch.Tensor) -> torch.Tensor:  # [B, T, d] -> [B, T, d]
        rows = nearest_rows(soft, self.table)  # [B, T]
        if torch.is_grad_enabled() and soft.requires_grad:
            self.history.append(self.table.ids.to(rows.device)[rows].cpu())
        hard = self.table.emb.to(soft.device)[rows]  # [B, T, d]
        return soft + (hard - soft).detach()
