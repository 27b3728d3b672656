"""Solve one experiment condition: a set of targets, each optimised from several restarts.

Produces everything a result folder holds: best soft prompt per target, per-problem metrics
(with and without position 0), restart spread, convergence, loss curves, and the random-token floor.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from .floor import random_token_floor
from .metrics import problem_metrics
from .models import LoadedModel
from .optimize import ChunkCheckpoint, OptimConfig, initial_prompts, optimise
from .residual import residual_at


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
                    floor_draws: int = 4, progress=None, checkpoint: ChunkCheckpoint | None = None) -> ConditionResult:
    """Optimise every target from `restarts` random starts and measure the outcome. target: [N, T, d]."""
    n, t, d = target.shape
    keys = [(i, r) for i in range(n) for r in range(restarts)]
    init = initial_prompts(keys, t, d, optim.init_scale, seed)  # [N*R, T, d]
    repeated = target.repeat_interleave(restarts, dim=0)  # [N*R, T, d]
    res = optimise(lm, layer, repeated, init, optim, ablation, progress, checkpoint, group=restarts)
    achieved = achieved_residuals(lm, res.soft_prompt, layer, ablation, optim.batch_size)
    m = problem_metrics(achieved, repeated, corpus_mean)
    cos = m["cos"].view(n, restarts)
    ran_to_end = ~torch.isnan(res.cos_curve[:, -1]).view(n, restarts)  # False for pruned restarts
    best = torch.where(ran_to_end, cos, torch.full_like(cos, -torch.inf)).argmax(1)  # [N]
    rows_of_best = torch.arange(n) * restarts + best
    s = optim.steps
    at_80 = res.cos_curve[:, min(int(0.8 * s), s - 1)]  # cosine after 80% of the steps
    convergence = (m["cos"] - at_80).view(n, restarts)
    floor = random_token_floor(lm, target, layer, seed, floor_draws, ablation) if floor_draws else {}
    problems = metric_rows(m, rows_of_best, floor)
    for i, rec in enumerate(problems):
        row = int(rows_of_best[i])
        rec["best_restart"] = int(best[i])
        rec["restart_cos"] = [float(x) for x in cos[i]]
        rec["restart_mse"] = [float(x) for x in m["mse"].view(n, restarts)[i]]
        rec["restart_spread"] = float(cos[i].max() - cos[i].min())
        rec["convergence_delta"] = float(convergence[i, best[i]])
        rec["final_loss"] = float(res.loss_curve[row, -1])
    summary = summarise(problems, optim.problem_steps(n, restarts), res.seconds)
    return ConditionResult(
        soft_prompt=res.soft_prompt[rows_of_best],
        target=target.float(),
        all_soft_prompts=res.soft_prompt.view(n, restarts, t, d),
        loss_curve=res.loss_curve.view(n, restarts, s),
        cos_curve=res.cos_curve.view(n, restarts, s),
        problems=problems,
        summary=summary,
        seconds=res.seconds,
    )


def metric_rows(m: dict, rows: torch.Tensor, floor: dict) -> list[dict]:
    """One JSON-ready record per selected row of the metrics (and of the floor, by target)."""
    problems = []
    for i, row in enumerate(rows.tolist()):
        rec = {"index": i}
        for key, val in m.items():
            if key != "cos_per_position":
                rec[key] = float(val[row])
        rec["cos_per_position"] = [round(float(x), 6) for x in m["cos_per_position"][row]]
        for key, val in floor.items():
            rec[f"floor_{key}"] = float(val[i])
        problems.append(rec)
    return problems


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
                           summary=summarise(problems, 0, seconds), seconds=seconds)


def _stats(values: list[float]) -> dict:
    v = np.asarray(values, dtype=np.float64)
    return {"median": float(np.median(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def summarise(problems: list[dict], problem_steps: int, seconds: float) -> dict:
    """Statistics over targets of every numeric per-problem field."""
    keys = [k for k, v in problems[0].items() if isinstance(v, float) and k != "index"]
    out = {k: _stats([p[k] for p in problems]) for k in keys if all(math.isfinite(p[k]) for p in problems)}
    out["n_targets"] = len(problems)
    out["seconds"] = seconds
    out["problem_steps_per_second"] = problem_steps / seconds if seconds > 0 else float("nan")
    return out
