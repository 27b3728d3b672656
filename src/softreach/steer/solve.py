"""Solve one steering condition: optimise the soft slots of every problem, then measure it against its
baselines (random tokens in the slots, the text's own tokens, the source tokens of real targets), with
convergence verdicts and the downstream check at the steered positions."""
from __future__ import annotations

import torch

from ..budget import absolute_cap, clip_norms
from ..condition import ConditionResult, convergence_verdicts, summarise
from ..frame import TextFrame, frame_residual_batched, frame_residual_of_tokens
from ..metrics import cos_per_position
from ..optimize import initial_prompts, optimise
from .config import SteerConfig
from .downstream import next_token_agreement
from .targets import SteerTargets


@torch.no_grad()
def random_token_floor(lm, layer: int, frame: TextFrame, target: torch.Tensor, seed: int, draws: int) -> torch.Tensor:
    """Mean cosine to each target with uniformly random ordinary tokens in the slots: [R]."""
    vocab = lm.ordinary_token_ids()
    g = torch.Generator().manual_seed(seed + 104729)
    ids = vocab[torch.randint(0, vocab.numel(), (draws * frame.rows, frame.soft), generator=g)]  # draw-major
    achieved = frame_residual_of_tokens(lm.model, layer, frame.tile(draws), ids).view(draws, frame.rows, *target.shape[1:])
    return cos_per_position(achieved, target.unsqueeze(0).expand_as(achieved)).mean((0, 2))


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
    achieved = frame_residual_batched(lm.model, layer, frame, soft)  # [N, P, d]
    cos = cos_per_position(achieved, target)  # [N, P]
    mse = ((achieved - target) ** 2).mean((1, 2))
    restart_cos = cos_per_position(frame_residual_batched(lm.model, layer, frame.repeat(r), res.soft_prompt),
                                   target.repeat_interleave(r, 0)).mean(1).view(n, r)
    own = cos_per_position(frame_residual_of_tokens(lm.model, layer, frame, problems.own_tokens), target).mean(1)
    floor = random_token_floor(lm, layer, frame, target, cfg.seed, cfg.floor_draws) if cfg.floor_draws else None
    source = None
    if problems.source_tokens is not None:
        source = cos_per_position(frame_residual_of_tokens(lm.model, layer, frame, problems.source_tokens),
                                  target).mean(1)
    down = own_down = None
    if cfg.downstream:
        down = next_token_agreement(lm.model, layer, frame, soft, target)
        own_down = next_token_agreement(lm.model, layer, frame, own_inputs, target)
    verdicts = convergence_verdicts(res, res.soft_prompt, cap, cfg.optim)
    out = []
    for i in range(n):
        rec = {"index": i, "text": problems.text[i], "cos": float(cos[i].mean()), "mse": float(mse[i]),
               "cos_per_position": [round(float(x), 6) for x in cos[i]],
               "own_cos": float(own[i]), "reached": bool(cos[i].mean() >= cfg.fidelity)}
        if problems.coefficient[i] is not None:
            rec["coefficient"] = problems.coefficient[i]
        if floor is not None:
            rec["floor_cos"] = float(floor[i])
            rec["beats_floor"] = bool(rec["cos"] > rec["floor_cos"])
        if source is not None:
            rec["source_cos"] = float(source[i])
        if down is not None:
            rec.update(kl=float(down["kl"][i]), top1=float(down["top1"][i]),
                       own_kl=float(own_down["kl"][i]), own_top1=float(own_down["top1"][i]))
        rec.update(best_restart=int(best[i]), restart_cos=[float(x) for x in restart_cos[i]],
                   final_loss=float(res.best_loss[rows[i]]), gain_over_own=float(cos[i].mean() - own[i]))
        rec.update(verdicts[int(rows[i])])
        out.append(rec)
    summary = summarise(out, int(res.steps_run.sum()), res.seconds)
    summary["share_reached"] = sum(p["reached"] for p in out) / n
    s = cfg.optim.steps
    return ConditionResult(soft_prompt=soft, target=target.float(), all_soft_prompts=res.soft_prompt.view(n, r, k, d),
                           loss_curve=res.loss_curve.view(n, r, s), cos_curve=res.cos_curve.view(n, r, s),
                           problems=out, summary=summary, seconds=res.seconds)
