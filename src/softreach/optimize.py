"""The batched soft-prompt optimiser.

Many problems (target x restart) are optimised in one batch with their losses summed. The model treats batch
rows independently and the solver (`solvers/`: Adam by default, or L-BFGS) keeps its state per row, so each
problem follows the trajectory it would follow alone. Weights are frozen: only the inputs get gradients, and the
forward stops at the target layer.

Each problem keeps its best iterate (lowest loss seen), may carry an input-norm cap (every vector's
norm is clipped to it after every step), and leaves the batch once it has converged (its best loss is
below `tol`, or its run has plateaued at a stationary point of the feasible set: see _check_convergence).
With the "plateau" schedule a problem whose best loss stalls over a window has its own learning rate
halved and goes on from its best iterate.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from typing import Callable

import torch

from .budget import clip_norms
from .config import OptimConfig
from .errors import UserError
from .frame import TextFrame, frame_residual
from .metrics import reachability_loss
from .models import LoadedModel
from .residual import residual_at
from .solvers import make_solver

SETTLE_DECAYS = 3  # plateau schedule: halvings before a plateau may count as converged (steps 8x smaller gained nothing)


@dataclass
class OptimResult:
    soft_prompt: torch.Tensor  # [P, T, d] input vectors of each problem's best iterate (lowest loss)
    loss_curve: torch.Tensor  # [P, steps] loss of each iterate (nan after the problem stopped)
    cos_curve: torch.Tensor  # [P, steps] mean cosine over the loss positions, same layout
    best_loss: torch.Tensor  # [P] loss of the best iterate (the iterate after the last step included)
    seconds: float = 0.0
    converged: torch.Tensor | None = None  # [P] bool: stopped by the convergence criterion
    norm_curve: torch.Tensor | None = None  # [P, steps] mean input-vector norm of each iterate
    grad_curve: torch.Tensor | None = None  # [P, steps] norm of each iterate's feasible gradient (see feasible_gradient)
    best_grad: torch.Tensor | None = None  # [P] norm of the best iterate's feasible gradient
    extra: dict = field(default_factory=dict)

    @property
    def steps_run(self) -> torch.Tensor:  # [P] iterates evaluated per problem
        return (~torch.isnan(self.loss_curve)).sum(1)


def initial_prompts(keys: list[tuple[int, int]], seq_len: int, d_model: int, scale: float, seed: int) -> torch.Tensor:
    """Initial soft prompts, one per (target index, restart) key: [P, T, d].

    Each key has its own generator, so a problem starts from the same point whatever batch it is in.
    """
    out = torch.empty(len(keys), seq_len, d_model)
    for row, (target_index, restart) in enumerate(keys):
        g = torch.Generator().manual_seed((seed * 1_000_003 + target_index) * 1009 + restart)
        out[row] = torch.randn(seq_len, d_model, generator=g) * scale
    return out


class InputParam:
    """How the optimised parameter becomes the model's input vectors. The default: free vectors.

    Constrained variants (norm bounds, penalties, token mixtures, projected steps) subclass it;
    they must be deterministic functions of the parameter so that batching and resume stay exact.
    """

    def inputs(self, param: torch.Tensor) -> torch.Tensor:
        """Parameter [B, T, ...] -> input vectors [B, T, d], differentiably."""
        return param

    def penalty(self, param: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor | None:
        """An extra loss per problem [B], or None."""
        return None

    def after_step(self, param: torch.Tensor) -> None:
        """Called under no_grad after each solver step (e.g. a projection, in place)."""


FREE = InputParam()


class ChunkCheckpoint:
    """Where an optimisation chunk saves and finds its state (every `every` steps and when the chunk
    ends); the default keeps nothing. A chunk loaded at its last step is not run again."""

    every: int = 0

    def load(self, chunk: int) -> dict | None:
        return None

    def save(self, chunk: int, state: dict) -> None:
        pass


def optimise(lm: LoadedModel, layer: int, targets: torch.Tensor, init: torch.Tensor, cfg: OptimConfig,
             ablation: str = "none", progress: Callable[[int, float], None] | None = None,
             checkpoint: ChunkCheckpoint | None = None, param: InputParam = FREE, group: int = 1,
             max_norm: torch.Tensor | float | None = None, frame: TextFrame | None = None) -> OptimResult:
    """Optimise soft prompts so the layer-`layer` residual matches `targets`.

    targets: [P, T, d]; init: [P, T, ...] the initial parameter (free vectors: [P, T, d]), mapped to
    inputs by `param`. max_norm: None (free), a float, or [P] (inf = free): each input vector's norm is
    clipped to it at the start and after every step (free vectors only). The result's soft_prompt
    holds each problem's best input vectors [P, T, d] and, where the parameter is not the inputs
    themselves, extra["param"] holds the best parameter. `progress(new_problem_steps, median_cos)` is
    called after every batched step (and once on resume with the problem-steps already done).
    frame: fixed text around the soft slots (one row per problem); targets are then [P, positions, d] for
    the frame's positions, init [P, K, ...], and position 0 is never left out of the loss (it is no target).
    """
    if frame is None and targets.shape[:2] != init.shape[:2]:
        raise UserError(f"targets {tuple(targets.shape)} and initial prompts {tuple(init.shape)} differ in shape")
    if frame is not None and (targets.shape[0] != init.shape[0] or frame.rows != init.shape[0]
                              or targets.shape[1] != frame.positions.numel() or init.shape[1] != frame.soft):
        raise UserError(f"targets {tuple(targets.shape)}, initial prompts {tuple(init.shape)} and a frame of "
                        f"{frame.rows} rows x {frame.soft} slots x {frame.positions.numel()} positions disagree")
    if not torch.isfinite(targets).all():
        raise UserError("targets contain non-finite values (nan or inf)")
    if max_norm is not None and param is not FREE:
        raise UserError("a norm budget applies to free vectors only")
    from .memory import batch_for_budget

    caps = None
    if max_norm is not None:
        caps = (max_norm if torch.is_tensor(max_norm) else torch.tensor(float(max_norm))).float().expand(targets.shape[0])
    checkpoint = checkpoint or ChunkCheckpoint()
    budget = None if cfg.memory_budget_mb is None else int(cfg.memory_budget_mb * 2**20)
    seq_len = targets.shape[1] if frame is None else frame.seq_len
    batch = batch_for_budget(lm, layer, seq_len, cfg.batch_size, budget, cfg.dtype)
    batch = max(group, batch // group * group)  # the restarts of one target stay in one batch
    start = time.perf_counter()
    parts = []
    for chunk, lo in enumerate(range(0, targets.shape[0], batch)):
        hi = min(lo + batch, targets.shape[0])
        parts.append(_optimise_chunk(lm, layer, targets[lo:hi], init[lo:hi], cfg, ablation, progress,
                                     checkpoint, chunk, param, group, None if caps is None else caps[lo:hi],
                                     None if frame is None else frame.select(slice(lo, hi))))
    best, losses, coses, norms, grads, converged, best_loss, best_grad = (torch.cat([p[k] for p in parts])
                                                                          for k in range(8))
    seconds = time.perf_counter() - start
    if param is FREE:
        return OptimResult(best, losses, coses, best_loss, seconds, converged, norms, grads, best_grad)
    with torch.no_grad():
        inputs = torch.cat([param.inputs(best[lo : lo + batch].to(lm.device)).float().cpu()
                            for lo in range(0, best.shape[0], batch)])
    return OptimResult(inputs, losses, coses, best_loss, seconds, converged, norms, grads, best_grad,
                       extra={"param": best})


def feasible_gradient(grad: torch.Tensor, x: torch.Tensor, caps: torch.Tensor | None) -> torch.Tensor:
    """The gradient [B, T, d] projected onto the feasible directions at x [B, T, d] (caps: [B], inf = free).

    A vector at its cap may not grow: where descent (-grad) points outward, the radial part of its gradient
    is removed; elsewhere the gradient counts whole. Its norm is zero exactly at a first-order stationary
    point of the loss on the feasible set.
    """
    if caps is None:
        return grad
    norms = x.norm(dim=-1, keepdim=True).clamp_min(1e-12)  # [B, T, 1]
    at_cap = norms >= caps.to(x.device).view(-1, 1, 1) * (1 - 1e-3)
    radial = (grad * x).sum(-1, keepdim=True) / norms  # [B, T, 1]: <grad, x / |x|>
    outward = at_cap & (radial < 0)
    return grad - torch.where(outward, radial, 0.0) * x / norms


def _optimise_chunk(lm, layer, targets, init, cfg: OptimConfig, ablation, progress, checkpoint, chunk,
                    param=FREE, group=1, caps=None, frame=None):
    """Optimise one batch of problems. Rows come in groups of `group` restarts of one target; with
    cfg.prune_after, only the best row of each group continues past that step. Returns
    (best parameter [B, T, ...], loss curve [B, S], cos curve [B, S], norm curve [B, S], feasible-gradient
    curve [B, S], converged [B], best loss [B], the best iterate's feasible-gradient norm [B])."""
    dev = lm.device
    model, compute = lm.compute_model(cfg.dtype), getattr(torch, cfg.dtype)
    all_targets = targets.to(dev, torch.float32)  # [B, T, d]
    rows = all_targets.shape[0]
    s = {  # the whole state of the chunk: compact tensors hold the rows still optimised (`alive`)
        "soft": clip_norms(init.to(dev, torch.float32).clone(), caps),  # [B', T, ...]
        "alive": torch.arange(rows),
        "step": 0,
        "best": clip_norms(init.float().clone(), caps),  # [B, T, ...] best iterate of every row (CPU)
        "best_loss": torch.full((rows,), math.inf),  # [B] its loss
        "best_grad": torch.full((rows,), float("nan")),  # [B] its feasible-gradient norm
        "loss_curve": torch.full((rows, cfg.steps), float("nan")),
        "cos_curve": torch.full((rows, cfg.steps), float("nan")),
        "norm_curve": torch.full((rows, cfg.steps), float("nan")),
        "grad_curve": torch.full((rows, cfg.steps), float("nan")),
        "lr_scale": torch.ones(rows),  # per row, halved by the plateau schedule
        "decays": torch.zeros(rows, dtype=torch.long),
        "converged": torch.zeros(rows, dtype=torch.bool),
        "pruned": False,
    }
    solver = make_solver(cfg)
    s["solver"] = solver.init_state(s["soft"])  # per-row tensors on the device, compacted with "soft"
    loaded = checkpoint.load(chunk)
    if loaded is not None:
        s = dict(loaded)
        if "m" in s:  # checkpoints made before the solvers had a module of their own: Adam's moments
            s["solver"] = {"m": s.pop("m"), "v": s.pop("v")}
        s["soft"] = s["soft"].to(dev)
        s["solver"] = {k: v.to(dev) for k, v in s["solver"].items()}
        for key, shape in (("grad_curve", (rows, cfg.steps)), ("best_grad", (rows,))):  # checkpoints made before them
            s.setdefault(key, torch.full(shape, float("nan")))
        if progress:
            done = int((~torch.isnan(s["cos_curve"])).sum())
            last = s["cos_curve"][s["alive"], s["step"] - 1] if s["step"] and len(s["alive"]) else torch.tensor([float("nan")])
            progress(done, float(last.median()))
    prune_at = cfg.prune_after if group > 1 and 0 < cfg.prune_after < cfg.steps else None
    while s["step"] < cfg.steps and len(s["alive"]):
        step = s["step"]
        if step == prune_at and not s["pruned"]:
            keep = s["best_loss"].view(-1, group).argmin(1) + torch.arange(0, rows, group)  # [B / group]
            _keep(s, torch.isin(s["alive"], keep))
            s["pruned"] = True
            if not len(s["alive"]):  # the kept restarts had all converged already
                break
        alive = s["alive"]
        soft = s["soft"].requires_grad_(True)
        target = all_targets if len(alive) == rows else all_targets[alive.to(dev)]
        inputs, loss, cos = _evaluate(model, compute, layer, soft, target, cfg, ablation, param,
                                      None if frame is None else frame.select(alive))
        if not torch.isfinite(loss).all():
            raise UserError(f"loss became non-finite at step {step}; try a smaller --lr or --init-scale")
        (grad,) = torch.autograd.grad(loss.sum(), soft)
        soft = soft.detach()
        loss, cos = loss.detach().cpu(), cos.detach().cpu()
        feasible = feasible_gradient(grad, soft, None if caps is None else caps[alive])
        grad_norm = feasible.flatten(1).norm(dim=1).cpu()  # [B'] its norm, for the verdict
        _record_best(s, soft, loss, grad_norm)
        s["loss_curve"][alive, step] = loss
        s["cos_curve"][alive, step] = cos
        s["norm_curve"][alive, step] = inputs.detach().float().norm(dim=-1).mean(1).cpu()
        s["grad_curve"][alive, step] = grad_norm
        if cfg.step_rule != "projected":  # Adam on the feasible gradient: its fixed points are stationary points
            grad = feasible
        with torch.no_grad():
            soft = solver.step(s["solver"], soft, loss, grad, step, cfg.lr_at(step) * s["lr_scale"][alive])
            param.after_step(soft)
            s["soft"] = clip_norms(soft, None if caps is None else caps[alive])
        s["step"] = step + 1
        if progress:
            progress(len(alive), float(cos.median()))
        _check_convergence(s, cfg, solver)
        if checkpoint.every and (s["step"] % checkpoint.every == 0 or s["step"] == cfg.steps or not len(s["alive"])):
            checkpoint.save(chunk, _to_cpu(s))
    if len(s["alive"]):  # the iterate after the last step is a candidate too (free vectors: its gradient too)
        alive = s["alive"]
        soft = s["soft"].requires_grad_(param is FREE)  # constrained parameters record their forwards
        with torch.set_grad_enabled(param is FREE):
            _, loss, _ = _evaluate(model, compute, layer, soft, all_targets[alive.to(dev)], cfg, ablation, param,
                                   None if frame is None else frame.select(alive))
        grad_norm = torch.full((len(alive),), float("nan"))
        if param is FREE:
            (grad,) = torch.autograd.grad(loss.sum(), soft)
            feasible = feasible_gradient(grad, soft.detach(), None if caps is None else caps[alive])
            grad_norm = feasible.flatten(1).norm(dim=1).cpu()
        _record_best(s, soft.detach(), loss.detach().cpu(), grad_norm)
    return (s["best"], s["loss_curve"], s["cos_curve"], s["norm_curve"], s["grad_curve"], s["converged"],
            s["best_loss"], s["best_grad"])


def _evaluate(model, compute, layer, soft, target, cfg: OptimConfig, ablation, param, frame=None):
    """Inputs [B', T, d], loss [B'] (penalty included) and cosine [B'] of the parameter `soft`."""
    inputs = param.inputs(soft)
    if frame is None:
        achieved = residual_at(model, layer, inputs_embeds=inputs.to(compute), ablation=ablation)
    else:
        achieved = frame_residual(model, layer, frame, inputs.to(compute), ablation)
    skip = cfg.skip_pos0 and frame is None
    loss, cos = reachability_loss(achieved.float(), target, cfg.mse_weight, skip, cfg.mse_norm)
    extra = param.penalty(soft, inputs)
    return inputs, (loss if extra is None else loss + extra), cos


def _record_best(s: dict, soft: torch.Tensor, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
    """Keep each alive row's iterate `soft` [B', T, ...] where its loss [B'] (CPU) beats its best so far, with the
    norm of its feasible gradient [B'] (CPU)."""
    alive = s["alive"]
    improved = loss < s["best_loss"][alive]
    s["best"][alive[improved]] = soft[improved.to(soft.device)].detach().cpu()
    s["best_loss"][alive[improved]] = loss[improved]
    s["best_grad"][alive[improved]] = grad_norm[improved]


def _to_cpu(state):
    """A copy of the chunk's state on the CPU (tensors, and the dicts of tensors in it)."""
    if isinstance(state, dict):
        return {k: _to_cpu(v) for k, v in state.items()}
    return state.detach().cpu() if torch.is_tensor(state) else state


def _check_convergence(s: dict, cfg: OptimConfig, solver) -> None:
    """Mark (and, with early_stop, drop) the rows that have converged; decay stalled rows' lr (plateau).

    Converged: the best loss is below tol (the loss is >= 0, so no more than tol is left to gain), or both
    (a) the second half of the run gained less than tol (a plateau), and (b) the best iterate, the one
    reported, is a stationary point of the loss on the feasible set: its feasible gradient (at a norm cap
    only the outward part of the gradient may stay) is below grad_tol x the start's. The plateau alone is no
    test: a row whose learning rate has decayed, or whose steps overshoot, gains little wherever it is. Checked
    at the end of every window, from 2 windows on. Plateau schedule: a row whose best loss gained
    < tol / 100 over the last window has its lr halved (at most plateau_decays times) and goes on from its
    best iterate; (b) then also needs SETTLE_DECAYS halvings first.
    """
    step, w = s["step"], cfg.window
    if not len(s["alive"]):
        return
    alive = s["alive"]
    best = s["best_loss"][alive]  # [B']
    done = best < cfg.tol
    if step % w == 0 and step >= 2 * w:
        curve = torch.nan_to_num(s["loss_curve"][alive, :step], nan=math.inf)
        plateau = curve[:, : step // 2].min(1).values - best < cfg.tol
        stationary = s["best_grad"][alive] < cfg.grad_tol * s["grad_curve"][alive, 0]
        halving = cfg.schedule in ("plateau", "plateau_cosine")
        if halving:  # smaller steps from the best iterate were tried, and gained nothing either
            stationary &= s["decays"][alive] >= min(SETTLE_DECAYS, cfg.plateau_decays)
        done |= plateau & stationary
        if halving:
            stalled = curve[:, : step - w].min(1).values - best < cfg.tol / 100
            decay = stalled & ~done & (s["decays"][alive] < cfg.plateau_decays)
            s["lr_scale"][alive[decay]] *= 0.5
            s["decays"][alive[decay]] += 1
            if decay.any():  # go on from the best iterate: steps that overshoot it wander off, smaller ones may not
                s["soft"][decay.to(s["soft"].device)] = s["best"][alive[decay]].to(s["soft"].device)
                solver.restart(s["solver"], decay, s["soft"])
    s["converged"][alive[done]] = True
    if cfg.early_stop and done.any():
        _keep(s, ~done)


def _keep(s: dict, mask: torch.Tensor) -> None:
    """Keep only the compact rows where mask [B'] is True (the others leave the batch)."""
    dev_mask = mask.to(s["soft"].device)
    s["soft"] = s["soft"].detach()[dev_mask].clone()
    s["solver"] = {k: v[dev_mask].clone() for k, v in s["solver"].items()}
    s["alive"] = s["alive"][mask]
