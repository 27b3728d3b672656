"""The batched soft-prompt optimiser.

Many problems (target x restart) are optimised in one batch with their losses summed. Adam is
per-element and the model treats batch rows independently, so each problem follows the
trajectory it would follow alone. Weights are frozen: only the inputs get gradients, and the
forward stops at the target layer.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from typing import Callable

import torch

from .errors import UserError
from .metrics import reachability_loss
from .models import LoadedModel
from .residual import residual_at


# The research log's optimiser, kept for replication (`--preset seed`).
LOG_OPTIM = dict(steps=1000, lr=0.01, init_scale=1.0, mse_weight=0.01, skip_pos0=False, mse_norm="none",
                 schedule="constant", prune_after=0)


@dataclass
class OptimConfig:
    """How each soft prompt is optimised. The defaults are the fastest settings measured on SmolLM2
    (see README, "Speed"); LOG_OPTIM holds the research log's settings."""

    steps: int = 200
    """Adam steps per problem."""
    lr: float = 0.1
    """Adam learning rate (peak, with the cosine schedule)."""
    init_scale: float = 1.0
    """Soft prompts start as init_scale * N(0, 1)."""
    mse_weight: float = 0.0
    """Weight of the MSE term beside the mean (1 - cos); the log used 0.01."""
    skip_pos0: bool = True
    """Leave position 0 out of the loss (metrics still report it both ways)."""
    mse_norm: str = "none"
    """"none": raw MSE; "target": squared error divided by the target's mean square per position."""
    batch_size: int = 64
    """Problems per batched step; larger batches use the hardware better but need more memory."""
    prune_after: int = 40
    """After this many steps only the best restart of each target goes on (0: all restarts run to the end)."""
    memory_budget_mb: float | None = None
    """Memory the batched step may use, in MiB; the batch is split to fit. None: half of what is free."""
    schedule: str = "cosine"
    """Learning-rate schedule: "constant", or "cosine" (from lr down to lr * final_lr_frac over the steps)."""
    final_lr_frac: float = 0.0
    """End of the cosine schedule, as a fraction of lr."""
    dtype: str = "float32"
    """Compute dtype of the forward/backward: "float32" or "bfloat16" (soft prompts, Adam and all
    reported metrics stay float32)."""

    def __post_init__(self):
        if self.steps < 1:
            raise UserError(f"--steps must be at least 1, got {self.steps}")
        if not (math.isfinite(self.init_scale) and self.init_scale > 0):
            raise UserError(f"--init-scale must be a positive finite number, got {self.init_scale}")
        if not (math.isfinite(self.mse_weight) and self.mse_weight >= 0):
            raise UserError(f"--mse-weight must be a finite number >= 0, got {self.mse_weight}")
        if not (math.isfinite(self.lr) and self.lr > 0):
            raise UserError(f"--lr must be positive, got {self.lr}")
        if self.prune_after < 0:
            raise UserError(f"--prune-after must be >= 0, got {self.prune_after}")
        if self.memory_budget_mb is not None and not self.memory_budget_mb > 0:
            raise UserError(f"--memory-budget-mb must be positive, got {self.memory_budget_mb}")
        if self.batch_size < 1:
            raise UserError(f"--batch-size must be at least 1, got {self.batch_size}")
        if self.dtype not in ("float32", "bfloat16"):
            raise UserError(f"--dtype must be 'float32' or 'bfloat16', got {self.dtype!r}")
        if self.schedule not in ("constant", "cosine"):
            raise UserError(f"--schedule must be 'constant' or 'cosine', got {self.schedule!r}")
        if self.mse_norm not in ("none", "target"):
            raise UserError(f"--mse-norm must be 'none' or 'target', got {self.mse_norm!r}")

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def problem_steps(self, targets: int, restarts: int) -> int:
        """Problem-steps that `targets` x `restarts` problems take, restart pruning included."""
        if restarts > 1 and 0 < self.prune_after < self.steps:
            return targets * (restarts * self.prune_after + self.steps - self.prune_after)
        return targets * restarts * self.steps

    def lr_at(self, step: int) -> float:
        """Learning rate for step `step` (0-based); a pure function of the step, so resume is exact."""
        if self.schedule == "constant" or self.steps == 1:
            return self.lr
        frac = step / (self.steps - 1)
        return self.lr * (self.final_lr_frac + (1 - self.final_lr_frac) * 0.5 * (1 + math.cos(math.pi * frac)))


@dataclass
class OptimResult:
    soft_prompt: torch.Tensor  # [P, T, d] after the last step
    loss_curve: torch.Tensor  # [P, steps] loss before each step
    cos_curve: torch.Tensor  # [P, steps] mean cosine before each step
    seconds: float = 0.0
    extra: dict = field(default_factory=dict)


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
        """Called under no_grad after each Adam step (e.g. a projection, in place)."""


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
             checkpoint: ChunkCheckpoint | None = None, param: InputParam = FREE, group: int = 1) -> OptimResult:
    """Optimise soft prompts so the layer-`layer` residual matches `targets`.

    targets: [P, T, d]; init: [P, T, ...] the initial parameter (free vectors: [P, T, d]), mapped to
    inputs by `param`. The result's soft_prompt holds the final input vectors [P, T, d] and, where
    the parameter is not the inputs themselves, extra["param"] holds it. `progress(new_problem_steps, median_cos)` is called after every batched
    step (and once on resume with the problem-steps already done), with the batch's median cosine.
    """
    import time

    if targets.shape[:2] != init.shape[:2]:
        raise UserError(f"targets {tuple(targets.shape)} and initial prompts {tuple(init.shape)} differ in shape")
    if not torch.isfinite(targets).all():
        raise UserError("targets contain non-finite values (nan or inf)")
    from .memory import batch_for_budget

    checkpoint = checkpoint or ChunkCheckpoint()
    budget = None if cfg.memory_budget_mb is None else int(cfg.memory_budget_mb * 2**20)
    batch = batch_for_budget(lm, layer, targets.shape[1], cfg.batch_size, budget, cfg.dtype)
    batch = max(group, batch // group * group)  # the restarts of one target stay in one batch
    start = time.perf_counter()
    prompts, losses, coses = [], [], []
    for chunk, lo in enumerate(range(0, targets.shape[0], batch)):
        hi = min(lo + batch, targets.shape[0])
        p, l, c = _optimise_chunk(lm, layer, targets[lo:hi], init[lo:hi], cfg, ablation, progress,
                                  checkpoint, chunk, param, group)
        prompts.append(p)
        losses.append(l)
        coses.append(c)
    final = torch.cat(prompts)
    if param is FREE:
        return OptimResult(final, torch.cat(losses), torch.cat(coses), time.perf_counter() - start)
    with torch.no_grad():
        inputs = torch.cat([param.inputs(final[lo : lo + batch].to(lm.device)).float().cpu()
                            for lo in range(0, final.shape[0], batch)])
    return OptimResult(inputs, torch.cat(losses), torch.cat(coses), time.perf_counter() - start,
                       extra={"param": final})


def _optimise_chunk(lm, layer, targets, init, cfg, ablation, progress, checkpoint, chunk, param=FREE, group=1):
    """Optimise one batch of problems. Rows come in groups of `group` restarts of one target; with
    cfg.prune_after, only the best (lowest-loss) row of each group continues past that step."""
    dev = lm.device
    model, compute = lm.compute_model(cfg.dtype), getattr(torch, cfg.dtype)
    all_targets = targets.to(dev, torch.float32)  # [B, T, d]
    rows = all_targets.shape[0]
    final = init.to(dev, torch.float32).clone()  # [B, T, ...] the last state of every row
    alive = torch.arange(rows)  # rows still optimised
    loss_curve = torch.full((rows, cfg.steps), float("nan"))
    cos_curve = torch.full((rows, cfg.steps), float("nan"))
    soft = torch.nn.Parameter(final.clone())
    opt = torch.optim.Adam([soft], lr=cfg.lr)
    first = 0
    state = checkpoint.load(chunk)
    if state is not None:
        final, alive = state["final"].to(dev), state["alive"]
        soft = torch.nn.Parameter(state["soft"].to(dev))
        opt = torch.optim.Adam([soft], lr=cfg.lr)
        opt.load_state_dict(state["adam"])
        loss_curve, cos_curve, first = state["loss_curve"], state["cos_curve"], state["step"]
        if progress:
            done = int((~torch.isnan(cos_curve[:, :first])).sum())
            progress(done, float(cos_curve[alive, first - 1].median()) if first else float("nan"))
    prune_at = cfg.prune_after if group > 1 and 0 < cfg.prune_after < cfg.steps else None
    for step in range(first, cfg.steps):
        if step == prune_at and len(alive) == rows:
            best = loss_curve[:, step - 1].view(-1, group).argmin(1) + torch.arange(0, rows, group)  # [B / group]
            final[alive] = soft.detach()
            soft, opt = _keep_rows(soft, opt, best, cfg.lr)
            alive = best
        target = all_targets[alive.to(dev)] if len(alive) < rows else all_targets
        inputs = param.inputs(soft)  # [B', T, d]
        achieved = residual_at(model, layer, inputs_embeds=inputs.to(compute), ablation=ablation)
        loss, cos = reachability_loss(achieved.float(), target, cfg.mse_weight, cfg.skip_pos0, cfg.mse_norm)
        extra = param.penalty(soft, inputs)
        if extra is not None:
            loss = loss + extra
        if not torch.isfinite(loss).all():
            raise UserError(f"loss became non-finite at step {step}; try a smaller --lr or --init-scale")
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        for g in opt.param_groups:
            g["lr"] = cfg.lr_at(step)
        opt.step()
        with torch.no_grad():
            param.after_step(soft)
        loss_curve[alive, step] = loss.detach().cpu()
        cos_curve[alive, step] = cos.detach().cpu()
        if progress:
            progress(len(alive), float(cos.detach().median()))
        if checkpoint.every and ((step + 1) % checkpoint.every == 0 or step + 1 == cfg.steps):
            checkpoint.save(chunk, {"soft": soft.detach().cpu(), "adam": opt.state_dict(), "final": final.cpu(),
                                    "alive": alive, "loss_curve": loss_curve, "cos_curve": cos_curve,
                                    "step": step + 1})
    final[alive.to(dev)] = soft.detach()
    return final.cpu(), loss_curve, cos_curve


def _keep_rows(soft: torch.nn.Parameter, opt: torch.optim.Adam, keep: torch.Tensor, lr: float):
    """A new parameter and Adam holding only rows `keep`, with their moments and step count intact."""
    old = opt.state[soft]
    kept = torch.nn.Parameter(soft.detach()[keep.to(soft.device)].clone())
    new_opt = torch.optim.Adam([kept], lr=lr)
    idx = keep.to(soft.device)
    new_opt.state[kept] = {"step": old["step"].clone(), "exp_avg": old["exp_avg"][idx].clone(),
                           "exp_avg_sq": old["exp_avg_sq"][idx].clone()}
    return kept, new_opt
