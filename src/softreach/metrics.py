"""Reachability metrics and the loss, all in float32.

Primary metric: per-position cosine between achieved and target residual, averaged over
positions. Secondary: MSE over positions and dimensions. Every metric also comes without
position 0, where some models (SmolLM2) carry a massive, input-independent activation.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def cos_per_position(achieved: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """[N, T, d] x [N, T, d] -> [N, T]"""
    return F.cosine_similarity(achieved.float(), target.float(), dim=-1)


def problem_metrics(achieved: torch.Tensor, target: torch.Tensor, corpus_mean: torch.Tensor | None = None) -> dict:
    """Per-problem metrics: each value is a tensor [N] (or [N, T] for per-position cosine).

    achieved, target: [N, T, d]; corpus_mean: [T, d] mean residual per position, for the
    centred cosine and the fraction of variance unexplained (FVU).
    """
    h, t = achieved.float(), target.float()
    cos_pos = cos_per_position(h, t)  # [N, T]
    sq = (h - t) ** 2  # [N, T, d]
    out = {
        "cos": cos_pos.mean(1),
        "mse": sq.mean((1, 2)),
        "cos_per_position": cos_pos,
    }
    if h.shape[1] > 1:
        out["cos_no_pos0"] = cos_pos[:, 1:].mean(1)
        out["mse_no_pos0"] = sq[:, 1:].mean((1, 2))
    if corpus_mean is not None:
        mu = corpus_mean.float().to(h.device)[: h.shape[1]]
        centred = cos_per_position(h - mu, t - mu)  # [N, T]
        out["centred_cos"] = centred.mean(1)
        out["fvu"] = sq.sum((1, 2)) / ((t - mu) ** 2).sum((1, 2)).clamp_min(1e-12)
        if h.shape[1] > 1:
            out["centred_cos_no_pos0"] = centred[:, 1:].mean(1)
            out["fvu_no_pos0"] = sq[:, 1:].sum((1, 2)) / ((t - mu)[:, 1:] ** 2).sum((1, 2)).clamp_min(1e-12)
    return out


def reachability_loss(achieved: torch.Tensor, target: torch.Tensor, mse_weight: float = 0.01,
                      skip_pos0: bool = False, mse_norm: str = "none") -> tuple[torch.Tensor, torch.Tensor]:
    """Loss per problem and cosine per problem: ([N], [N]).

    loss = mean over positions of (1 - cos) + mse_weight * MSE. With skip_pos0, position 0 is
    left out of the loss. With mse_norm="target", each position's squared error is divided by
    the target's mean square at that position, so one huge position cannot dominate.
    """
    if skip_pos0 and achieved.shape[1] > 1:
        achieved, target = achieved[:, 1:], target[:, 1:]
    cos = cos_per_position(achieved, target)  # [N, T']
    sq = ((achieved - target) ** 2).mean(-1)  # [N, T']
    if mse_norm == "target":
        sq = sq / (target**2).mean(-1).clamp_min(1e-12)
    loss = (1 - cos).mean(1) + mse_weight * sq.mean(1)
    return loss, cos.mean(1)
