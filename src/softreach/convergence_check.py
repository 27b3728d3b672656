"""`softreach verify --continue-steps N`: does a problem called `converged` stay put under another optimiser?

Every row with a verdict is continued from its saved input by an optimiser that shares nothing with the engine:
projected gradient descent with a backtracking step per problem (monotone: a step is taken only where it lowers
the loss), on the folder's own loss (mean over the compared positions of 1 - cos, plus its MSE term where it had
one), through a forward of its own (plain Hugging Face, stopped after block L), every vector kept within the
folder's norm budget. A row called `converged` that gains more than MAX_GAIN in that loss fails the check;
the gains of rows called `improving` are listed beside it, to show the check can move what is not converged.
Continuous inputs only: folders of discrete solutions and of constraint-ladder rungs other than free vectors are
skipped, with the reason.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .budget import clip_norms

MAX_GAIN = 0.005  # largest loss a converged problem may still lose (issue 17: cos 0.005 where the loss is 1 - cos)
CHUNK = 32  # problems continued together
CONTINUOUS_RUNGS = (None, "free")  # ladder rungs continued: free vectors (a norm_bound rung states no norm_budget)


@dataclass
class Continuation:
    """One folder's continuation: per checked row its verdict and the loss before and after."""

    steps: int
    verdicts: list[str]
    start: torch.Tensor  # [k]
    end: torch.Tensor  # [k]
    evaluations: int  # forward passes (with or without backward) per problem, at most
    inputs: torch.Tensor  # [k, K, d] where each row ended

    @property
    def gain(self) -> torch.Tensor:
        return self.start - self.end

    def summary(self) -> str:
        """`converged: n rows gain <= x; improving: m rows gain median y (max z)`."""
        parts = []
        for verdict in ("converged", "improving"):
            g = torch.tensor([float(self.gain[i]) for i, v in enumerate(self.verdicts) if v == verdict])
            if len(g):
                parts.append(f"{verdict} {len(g)} rows gain median {g.median():.4f} (max {g.max():.4f})")
        return (f"continued {self.steps} steps of projected gradient descent ({self.evaluations} evaluations): "
                + ("; ".join(parts) or "no row with a verdict"))


class _Stop(Exception):
    """Raised by the hook after block L: the forward need not go on."""


def residual_with_grad(model: torch.nn.Module, layer: int, embeds: torch.Tensor, ablation: str) -> torch.Tensor:
    """hidden_states[layer] for inputs [B, S, d], differentiable, the forward stopped after block `layer` - 1."""
    from .residual import ablated, decoder_blocks

    if layer == 0:
        return embeds.float()
    seen = {}

    def stop(_module, _inputs, output):
        seen["h"] = output[0] if isinstance(output, tuple) else output
        raise _Stop

    handle = decoder_blocks(model)[layer - 1].register_forward_hook(stop)
    try:
        with ablated(model, ablation):
            model.base_model(inputs_embeds=embeds, use_cache=False)
    except _Stop:
        pass
    finally:
        handle.remove()
    return seen["h"].float()


def skip_reason(config: dict, tensors: dict) -> str | None:
    """Why a folder's rows cannot be continued (discrete inputs, another feasible set), or None."""
    if any(name in tensors for name in ("solution_tokens", "projected_tokens")) or config.get("discrete"):
        return "discrete inputs"
    if config.get("rung") not in CONTINUOUS_RUNGS:
        return f"rung {config.get('rung')} (its feasible set is not the folder's norm budget)"
    return None


def continue_rows(folder, config: dict, rows: list[dict], soft: torch.Tensor, target: torch.Tensor,
                  cap: float | None, steps: int) -> Continuation:
    """Continue rows 0..k-1 (soft [k, K, d], target [k, P, d]) of a verify `_Folder` for `steps` iterations."""
    optim = config.get("optim") or {}
    loss_of = _folder_loss(optim, skip_first=bool(optim.get("skip_pos0", True)) and not folder.has_context
                           and target.shape[1] > 1)
    starts, ends, xs, evals = [], [], [], 0
    for lo in range(0, len(soft), CHUNK):
        idx = torch.arange(lo, min(lo + CHUNK, len(soft)))
        start, end, x, n = _descend(folder, idx, soft[idx], target[idx], cap, loss_of, steps)
        starts.append(start)
        ends.append(end)
        xs.append(x)
        evals = max(evals, n)
    return Continuation(steps, [r.get("verdict", "") for r in rows[: len(soft)]], torch.cat(starts), torch.cat(ends),
                        evals, torch.cat(xs))


def _folder_loss(optim: dict, skip_first: bool):
    """The folder's loss per problem, written out here: (1 - cos) averaged over positions, plus weight x MSE."""
    weight, by_target = float(optim.get("mse_weight", 0.0)), optim.get("mse_norm", "none") == "target"

    def loss(h: torch.Tensor, t: torch.Tensor) -> torch.Tensor:  # [B, P, d] x2 -> [B]
        if skip_first:
            h, t = h[:, 1:], t[:, 1:]
        err = (h - t).pow(2).mean(-1)  # [B, P]
        if by_target:
            err = err / t.pow(2).mean(-1).clamp_min(1e-12)
        return (1 - F.cosine_similarity(h, t, dim=-1)).mean(1) + weight * err.mean(1)

    return loss


def _descend(folder, idx: torch.Tensor, x: torch.Tensor, target: torch.Tensor, cap: float | None, loss_of,
             steps: int, halvings: int = 20) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, int]:
    """Projected gradient descent with a backtracking step per problem: start loss [B], end loss [B], end inputs
    [B, K, d], evaluations. A row whose step was halved `halvings` times without a gain is settled (stationary to
    within the step's resolution) and drops out."""
    dev = folder.device
    x, target = x.float().to(dev), target.float().to(dev)
    scale = cap if cap is not None else float(x.norm(dim=-1).mean())
    step = torch.full((len(x),), 0.01 * scale, device=dev)  # the length each vector moves on average

    def loss(inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        h = residual_with_grad(folder.model, folder.layer, folder.inputs(idx[rows.cpu()], inputs), folder.ablation)
        return loss_of(h if folder.positions is None else h[:, folder.positions.long().to(dev)], target[rows])

    active = torch.arange(len(x), device=dev)  # rows still moving; a row no step can improve is settled
    with torch.no_grad():
        current = loss(x, active)
    start, evals = current.clone(), 1
    for _ in range(steps):
        if not len(active):
            break
        xg = x[active].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(loss(xg, active).sum(), xg)
        evals += 1
        # unit direction per problem, scaled so that `step` is the mean move of one vector: [B', K, d]
        direction = torch.zeros_like(x)
        direction[active] = grad / grad.flatten(1).norm(dim=1).clamp_min(1e-30).view(-1, 1, 1) * x.shape[1] ** 0.5
        pending = active.clone()
        for _ in range(halvings):
            with torch.no_grad():
                trial = clip_norms(x[pending] - step[pending].view(-1, 1, 1) * direction[pending], cap)
                new = loss(trial, pending)
            evals += 1
            better = new < current[pending]
            won = pending[better]
            x[won], current[won] = trial[better], new[better]
            step[won] *= 2
            pending = pending[~better]
            step[pending] /= 2
            if not len(pending):
                break
        active = active[~torch.isin(active, pending)]
    return start.cpu(), current.cpu(), x.cpu(), evals
