"""Solve one steering condition: optimise the soft slots of every problem, then measure it against its
baselines (random tokens in the slots, the text's own tokens; for real targets the source tokens, and the
source tokens with one slot wrong), with convergence verdicts and the downstream check at the steered positions."""
from __future__ import annotations

import torch

from ..budget import absolute_cap, clip_norms
from ..condition import ConditionResult, convergence_verdicts, floor_tokens, summarise
from ..floor import near_miss, random_token_floor
from ..frame import TextFrame, frame_residual_batched
from ..metrics import cos_per_position
from ..optimize import initial_prompts, optimise
from .config import SteerConfig
from .downstream import next_token_agreement
from .targets import SteerTargets


@torch.no_grad()
def measure_inputs(lm, layer: int, frame: TextFrame, inputs: torch.Tensor, target: torch.Tensor,
                   downstream: bool = True, achieved: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Input vectors in the slots [R, K, d] against the targets [R, P, d]: cos [R] (mean over positions), mse [R],
    cos_per_position [R, P] and, with downstream, kl [R] and top1 [R] at the steered positions. `achieved`: their
    residuals [R, P, d] where already computed."""
    if achieved is None:
        achieved = frame_residual_batched(lm.model, layer, frame, inputs)  # [R, P, d]
    cos = cos_per_position(achieved, target)  # [R, P]
    out = {"cos": cos.mean(1), "mse": ((achieved - target) ** 2).mean((1, 2)), "cos_per_position": cos}
    if downstream:
        out.update(next_token_agreement(lm.model, layer, frame, inputs, target))
    return out


def solve_steer(lm, layer: int, cfg: SteerConfig, problems: SteerTargets, progress=None) -> ConditionResult:
    """Optimise and measure every problem of `problems` (restart 0 starts from the text's own tokens)."""
    frame, target = problems.frame, problems.target
    n, k, d, r = frame.rows, frame.soft, lm.d_model, cfg.restarts
    cap = absolute_cap(lm, cfg.norm_budget)
    emb = lm.model.get_input_embeddings()
    own_inputs = emb(problems.own_tokens.to(lm.device)).detach().float().cpu()  # [N, K, d]
    init = initial_prompts([(i, j) for i in range(n) for j in range(r)], k, d, cfg.optim.init_scale, cfg.seed)
    init[0::r] = own_inputs
    init = clip_norms(init, cap)
    res = optimise(lm, layer, target.repeat_interleave(r, 0), init, cfg.optim, progress=progress, group=r,
                   max_norm=cap, frame=frame.repeat(r))
    best = res.best_loss.view(n, r).argmin(1)
    rows = torch.arange(n) * r + best
    soft = res.soft_prompt[rows]
    reached = frame_residual_batched(lm.model, layer, frame.repeat(r), res.soft_prompt)  # [N * R, P, d] every restart
    restart_cos = cos_per_position(reached, target.repeat_interleave(r, 0)).mean(1).view(n, r)
    m = measure_inputs(lm, layer, frame, soft, target, cfg.downstream, achieved=reached[rows])
    cos, mse = m["cos_per_position"], m["mse"]
    own = measure_inputs(lm, layer, frame, own_inputs, target, cfg.downstream)
    floor = random_token_floor(lm, target, layer, cfg.seed, cfg.floor_draws, frame=frame) if cfg.floor_draws else {}
    baseline_tokens = floor_tokens(floor)
    source = near_miss_cos = None
    if problems.source_tokens is not None:
        source = measure_inputs(lm, layer, frame, emb(problems.source_tokens.to(lm.device)).float(), target, False)["cos"]
        if cfg.floor_draws:
            near = near_miss(lm, layer, frame, problems.source_tokens, target, cfg.seed, 4 * cfg.floor_draws)
            near_miss_cos, baseline_tokens["near_miss_tokens"] = near["cos"], near["tokens"]
    verdicts = convergence_verdicts(res, res.soft_prompt, cap, cfg.optim)
    out = []
    for i in range(n):
        rec = {"index": i, "text": problems.text[i], "cos": float(cos[i].mean()), "mse": float(mse[i]),
               "cos_per_position": [round(float(x), 6) for x in cos[i]],
               "own_cos": float(own["cos"][i]), "reached": bool(cos[i].mean() >= cfg.fidelity)}
        if problems.coefficient[i] is not None:
            rec["coefficient"] = problems.coefficient[i]
        if floor:
            rec["floor_cos"] = float(floor["cos"][i])
            rec["beats_floor"] = bool(rec["cos"] > rec["floor_cos"])
        if source is not None:
            rec["source_cos"] = float(source[i])
        if near_miss_cos is not None:
            rec["near_miss_cos"] = float(near_miss_cos[i])
        if cfg.downstream:
            rec.update(kl=float(m["kl"][i]), top1=float(m["top1"][i]), own_kl=float(own["kl"][i]),
                       own_top1=float(own["top1"][i]))
        rec.update(best_restart=int(best[i]), restart_cos=[float(x) for x in restart_cos[i]],
                   final_loss=float(res.best_loss[rows[i]]), gain_over_own=float(cos[i].mean() - own["cos"][i]))
        rec.update(verdicts[int(rows[i])])
        out.append(rec)
    summary = summarise(out, int(res.steps_run.sum()), res.seconds)
    summary["share_reached"] = sum(p["reached"] for p in out) / n
    s = cfg.optim.steps
    return ConditionResult(soft_prompt=soft, target=target.float(), all_soft_prompts=res.soft_prompt.view(n, r, k, d),
                           loss_curve=res.loss_curve.view(n, r, s), cos_curve=res.cos_curve.view(n, r, s),
                           problems=out, summary=summary, seconds=res.seconds, baseline_tokens=baseline_tokens)
