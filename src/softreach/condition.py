"""Solve one experiment condition: a set of targets, each optimised from several restarts.

Produces everything a result folder holds: best soft prompt per target, per-problem metrics
(with and without position 0), restart spread, convergence, loss curves, and the random-token floor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from .budget import clip_norms
from .config import VERDICTS
from .copy_route import copy_baseline
from .floor import random_token_floor
from .metrics import problem_metrics, reachability_loss
from .models import LoadedModel
from .optimize import ChunkCheckpoint, OptimConfig, OptimResult, initial_prompts, optimise
from .residual import residual_at
from .stats import describe


@dataclass
class ConditionResult:
    soft_prompt: torch.Tensor  # [N, T, d] best restart per target
    target: torch.Tensor  # [N, T, d]
    all_soft_prompts: torch.Tensor  # [N, R, T, d]
    loss_curve: torch.Tensor | None  # [N, R, S]; None where nothing was optimised
    cos_curve: torch.Tensor | None  # [N, R, S]
    problems: list[dict]  # one row per target, tensor order
    summary: dict
    seconds: float
    baseline_tokens: dict = field(default_factory=dict)  # name -> [N, draws, T] token draws behind a baseline


@torch.no_grad()
def achieved_residuals(lm: LoadedModel, soft: torch.Tensor, layer: int, ablation: str = "none",
                       batch_size: int = 64) -> torch.Tensor:
    """Residual reached by soft prompts: [P, T, d] -> [P, T, d] float32 on CPU."""
    out = []
    for lo in range(0, soft.shape[0], batch_size):
        x = soft[lo : lo + batch_size].to(lm.device, torch.float32)
        out.append(residual_at(lm.model, layer, inputs_embeds=x, ablation=ablation).float().cpu())
    return torch.cat(out)


def solve_condition(lm: LoadedModel, layer: int, target: torch.Tensor, restarts: int, optim: OptimConfig,
                    seed: int, corpus_mean: torch.Tensor | None = None, ablation: str = "none",
                    floor_draws: int = 4, progress=None, checkpoint: ChunkCheckpoint | None = None,
                    cap: float | None = None, warm_start: torch.Tensor | None = None) -> ConditionResult:
    """Optimise every target from `restarts` starts within the norm cap and measure the outcome.

    target: [N, T, d]; cap: absolute cap on each input vector's norm (None: free); warm_start: [N, T, d]
    solutions of the same targets under a smaller budget (feasible here). With optim.start == "copy",
    restart 0 starts from the better of the best scaled copy and the warm start, and the result is never
    worse (in the loss) than the warm start, so fidelity cannot fall as the budget grows.
    """
    n, t, d = target.shape
    keys = [(i, r) for i in range(n) for r in range(restarts)]
    init = clip_norms(initial_prompts(keys, t, d, optim.init_scale, seed), cap)  # [N*R, T, d]
    copy = copy_baseline(lm, layer, target, cap, ablation, optim.skip_pos0, optim.batch_size, start_tol=optim.tol / 2)
    warm_loss = None
    if optim.start == "copy":
        first = copy.inputs
        if warm_start is not None:
            warm_start = clip_norms(warm_start.float(), cap)
            warm_loss = objective(lm, layer, warm_start, target, optim, ablation)
            use_warm = warm_loss <= objective(lm, layer, copy.inputs, target, optim, ablation)
            first = torch.where(use_warm.view(-1, 1, 1), warm_start, copy.inputs)
        init[0::restarts] = first
    repeated = target.repeat_interleave(restarts, dim=0)  # [N*R, T, d]
    res = optimise(lm, layer, repeated, init, optim, ablation, progress, checkpoint, group=restarts, max_norm=cap)
    best = res.best_loss.view(n, restarts).argmin(1)  # [N] best restart by the loss it minimised
    rows_of_best = torch.arange(n) * restarts + best
    soft = res.soft_prompt.clone()
    if warm_loss is not None:  # keep the smaller budget's solution where it is better (it is feasible here)
        worse = res.best_loss[rows_of_best] > warm_loss
        soft[rows_of_best[worse]] = warm_start[worse]
    achieved = achieved_residuals(lm, soft, layer, ablation, optim.batch_size)
    m = problem_metrics(achieved, repeated, corpus_mean)
    cos = m["cos"].view(n, restarts)
    floor = random_token_floor(lm, target, layer, seed, floor_draws, ablation) if floor_draws else {}
    problems = metric_rows(m, rows_of_best, floor)
    verdicts = convergence_verdicts(res, soft, cap, optim)
    for i, rec in enumerate(problems):
        row = int(rows_of_best[i])
        rec["best_restart"] = int(best[i])
        rec["restart_cos"] = [float(x) for x in cos[i]]
        rec["restart_mse"] = [float(x) for x in m["mse"].view(n, restarts)[i]]
        rec["restart_spread"] = float(cos[i].max() - cos[i].min())
        rec["final_loss"] = float(res.best_loss[row])
        rec["copy_cos"] = float(copy.cos[i])
        rec["copy_cos_no_pos0"] = float(copy.cos_no_pos0[i])
        rec["copy_scale"] = float(copy.scale[i])
        key = "cos_no_pos0" if optim.skip_pos0 and "cos_no_pos0" in rec else "cos"
        rec["beats_copy"] = bool(rec[key] > rec[f"copy_{key}"])
        rec.update(verdicts[row])
        if warm_loss is not None:
            rec["start"] = "warm" if bool(use_warm[i]) else "copy"
    summary = summarise(problems, int(res.steps_run.sum()), res.seconds)
    s = optim.steps
    return ConditionResult(
        soft_prompt=soft[rows_of_best],
        target=target.float(),
        all_soft_prompts=soft.view(n, restarts, t, d),
        loss_curve=res.loss_curve.view(n, restarts, s),
        cos_curve=res.cos_curve.view(n, restarts, s),
        problems=problems,
        summary=summary,
        seconds=res.seconds,
        baseline_tokens=floor_tokens(floor),
    )


@torch.no_grad()
def objective(lm: LoadedModel, layer: int, inputs: torch.Tensor, target: torch.Tensor, optim: OptimConfig,
              ablation: str = "none") -> torch.Tensor:
    """The loss the optimiser minimises, for fixed inputs: [N, T, d] -> [N]."""
    achieved = achieved_residuals(lm, inputs, layer, ablation, optim.batch_size)
    return reachability_loss(achieved, target.float(), optim.mse_weight, optim.skip_pos0, optim.mse_norm)[0]


def convergence_verdicts(res: OptimResult, soft: torch.Tensor, cap: float | None, optim: OptimConfig) -> list[dict]:
    """Per problem (row of res): steps run, the verdict and, apart from it, where its input vectors sit.

    verdict          converged: the convergence test stopped it (OptimConfig.tol / grad_tol / window);
                     improving: the steps ran out first (`gain_per_100_steps`, in loss units, says how fast
                     it still gained over the last window). The verdict says nothing else.
    at_budget        some input vector sits at the norm cap (the budget binds); `share_at_budget` of them do.
                     A property of the solution, converged or not.
    norm_growing     free inputs whose mean norm still grew > 1% per 100 steps over the last window (the gain
                     may come from a larger input, as the copy route's does).
    grad_ratio       the feasible gradient at the best iterate (the solution reported) over the start's.
    """
    out = []
    w = optim.window
    for row in range(res.loss_curve.shape[0]):
        k = int(res.steps_run[row])
        best = torch.cummin(torch.nan_to_num(res.loss_curve[row, :k], nan=math.inf), 0).values
        back = max(0, k - 1 - w)
        span = max(1, k - 1 - back)
        gain = float(best[back] - best[k - 1]) * 100 / span if k > 1 else 0.0
        norms = res.norm_curve[row, :k]
        growth = float((norms[k - 1] - norms[back]) / norms[back].clamp_min(1e-12)) * 100 / span if k > 1 else 0.0
        vectors = soft[row].norm(dim=-1)  # [T]
        on_cap = vectors >= cap * (1 - 1e-3) if cap is not None else torch.zeros_like(vectors, dtype=torch.bool)
        converged = bool(res.converged[row])
        rec = {"verdict": "converged" if converged else "improving", "converged": converged, "steps_run": k,
               "gain_per_100_steps": gain, "norm_growth_per_100_steps": growth,
               "input_norm_max": float(vectors.max()), "input_norm_mean": float(vectors.mean()),
               "at_budget": bool(on_cap.any()), "share_at_budget": float(on_cap.float().mean()),
               "norm_growing": cap is None and growth > 0.01}
        if res.best_grad is not None:
            rec["grad_ratio"] = float(res.best_grad[row] / res.grad_curve[row, 0].clamp_min(1e-30))
        out.append(rec)
    return out


def metric_rows(m: dict, rows: torch.Tensor, floor: dict) -> list[dict]:
    """One JSON-ready record per selected row of the metrics (and of the floor, by target)."""
    problems = []
    for i, row in enumerate(rows.tolist()):
        rec = {"index": i}
        for key, val in m.items():
            if key != "cos_per_position":
                rec[key] = float(val[row])
        rec["cos_per_position"] = [round(float(x), 6) for x in m["cos_per_position"][row]]
        for key in ("cos", "cos_no_pos0"):
            if key in floor:
                rec[f"floor_{key}"] = float(floor[key][i])
        problems.append(rec)
    return problems


def floor_tokens(floor: dict) -> dict:
    """The floor's token draws as a folder saves them ({} without a floor)."""
    return {"floor_tokens": floor["tokens"]} if "tokens" in floor else {}


def evaluate_inputs(lm: LoadedModel, layer: int, inputs: torch.Tensor, target: torch.Tensor, seed: int,
                    corpus_mean: torch.Tensor | None = None, ablation: str = "none",
                    floor_draws: int = 4) -> ConditionResult:
    """Metrics of fixed input vectors (e.g. projected tokens) against targets, no optimisation. [N, T, d]"""
    import time

    start = time.perf_counter()
    achieved = achieved_residuals(lm, inputs, layer, ablation)
    m = problem_metrics(achieved, target, corpus_mean)
    floor = random_token_floor(lm, target, layer, seed, floor_draws, ablation) if floor_draws else {}
    problems = metric_rows(m, torch.arange(target.shape[0]), floor)
    seconds = time.perf_counter() - start
    return ConditionResult(soft_prompt=inputs.float(), target=target.float(), all_soft_prompts=inputs.float().unsqueeze(1),
                           loss_curve=None, cos_curve=None, problems=problems,
                           summary=summarise(problems, 0, seconds), seconds=seconds, baseline_tokens=floor_tokens(floor))


def summarise(problems: list[dict], problem_steps: int, seconds: float) -> dict:
    """Statistics over targets of every numeric per-problem field."""
    keys = [k for k, v in problems[0].items() if isinstance(v, float) and k != "index"]
    out = {k: describe([p[k] for p in problems]) for k in keys if all(math.isfinite(p[k]) for p in problems)}
    out["n_targets"] = len(problems)
    if "verdict" in problems[0]:
        out["steps_run"] = describe([float(p["steps_run"]) for p in problems])
        out["share_converged"] = sum(p["converged"] for p in problems) / len(problems)
        out["verdicts"] = {v: sum(p["verdict"] == v for p in problems) for v in VERDICTS}
        out["norm_growing"] = sum(bool(p.get("norm_growing")) for p in problems)
    if "beats_copy" in problems[0]:
        out["share_beats_copy"] = sum(p["beats_copy"] for p in problems) / len(problems)
    out["seconds"] = seconds
    out["problem_steps_per_second"] = problem_steps / seconds if seconds > 0 else float("nan")
    return out
