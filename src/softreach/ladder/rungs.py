"""One rung setting of the constraint ladder: its folder name, its shared start, and running it.

`run_rung` runs one rung setting (the constrained parametrisations of constraints.py, GCG from
token_search.py, and the baselines) and returns the inputs each result is evaluated from; discrete
results carry their token ids.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field

import torch

from .config import RUNGS, LadderSettings
from ..constraints import NearestPenalty, NormBound, StraightThrough, TokenMixture
from ..errors import UserError
from ..frame import TextFrame, frame_residual_of_tokens
from ..manifold import TokenTable, nearest_rows, token_table
from ..metrics import reachability_loss
from ..models import LoadedModel
from ..optimize import InputParam, OptimConfig, initial_prompts, optimise
from ..targets import residuals_of_tokens
from ..causal_search import CausalConfig, causal_search
from ..token_search import GCGConfig, gcg_search

_SETTING_PREFIX = {"norm_bound": "c", "nearest_penalty": "w", "mixture": "tau"}
VOCAB_RUNGS = ("projection", "projected", "gcg", "causal", "random_tokens")  # run once per LadderSettings.vocab_percent


def vocab_suffix(percent: float) -> str:
    """Folder suffix of a rung restricted to the percent% most frequent tokens: "" at 100, else "_v10"."""
    return "" if float(percent) == 100.0 else f"_v{float(percent):g}"


def setting_name(rung: str, value: float | None) -> str:
    """Folder name of a rung setting: "free", "norm_bound_c2", "nearest_penalty_w0.1", "mixture_tau1"."""
    if rung not in RUNGS:
        raise UserError(f"unknown rung {rung!r}: choose from {', '.join(RUNGS)}")
    return f"{rung}_{_SETTING_PREFIX[rung]}{value:g}" if rung in _SETTING_PREFIX else rung


def rung_settings(rung: str, settings: LadderSettings) -> list[tuple[str, float | None]]:
    """The settings of one rung as (folder name, value): e.g. [("norm_bound_c1", 1.0), ("norm_bound_c2", 2.0)]."""
    values = {"norm_bound": settings.norm_bounds, "nearest_penalty": settings.penalty_weights,
              "mixture": settings.mixture_taus}.get(rung, (None,))
    return [(setting_name(rung, v), v) for v in values]


@dataclass
class RungOutput:
    """What one rung setting produced, before evaluation. Tensors on the CPU."""

    inputs: torch.Tensor  # [N, T, d] the input vectors the result is evaluated from
    ids: torch.Tensor | None  # [N, T] token ids of a discrete result (then inputs = E[ids]); None if continuous
    forward_passes: list[int]  # per target: forwards spent producing it (an optimiser step = one; the
    #                            ladder's own evaluation of the result is not counted)
    seconds: list[float]  # per target (batched rungs: wall time / N)
    loss_curve: torch.Tensor | None = None  # [N, S]
    cos_curve: torch.Tensor | None = None  # [N, S]
    extra: dict = field(default_factory=dict)  # JSON-ready notes (e.g. GCG iterations)


def start_ids(table: TokenTable, n: int, t: int, seed: int) -> torch.Tensor:
    """The shared random start: one ordinary-token sequence per target, [N, T] on the CPU."""
    g = torch.Generator().manual_seed(seed + 1)
    return table.ids.cpu()[torch.randint(0, table.ids.numel(), (n, t), generator=g)]


def start_vectors(lm: LoadedModel, table: TokenTable, n: int, t: int, settings: LadderSettings,
                  seed: int) -> torch.Tensor:
    """Initial vectors [N, T, d] of the vector rungs: the start tokens' embeddings, or init_scale * N(0, 1)."""
    if settings.init == "tokens":
        return _embed(lm, start_ids(table, n, t, seed))
    return initial_prompts([(i, 0) for i in range(n)], t, lm.d_model, settings.init_scale, seed)


def _embed(lm: LoadedModel, ids: torch.Tensor) -> torch.Tensor:  # [N, T] -> [N, T, d] float32 CPU
    return lm.embedding_matrix.detach().float().cpu()[ids.cpu()]


def _optimise(lm, layer, targets, init, cfg: OptimConfig, param: InputParam, progress):
    """The engine, timed; returns (OptimResult, seconds per target)."""
    res = optimise(lm, layer, targets, init, cfg, progress=progress, param=param)
    return res, [res.seconds / targets.shape[0]] * targets.shape[0]


def run_rung(lm: LoadedModel, layer: int, targets: torch.Tensor, rung: str, value: float | None,
             settings: LadderSettings, seed: int, table: TokenTable | None = None,
             tokens: torch.Tensor | None = None, free: RungOutput | None = None,
             projected: RungOutput | None = None, progress=None, vocab_percent: float = 100.0) -> dict[str, RungOutput]:
    """Run one rung setting on targets [N, T, d]; returns {folder name: output}.

    `table` holds the tokens the rung may use (for a VOCAB_RUNGS rung restricted to vocab_percent%, the
    restricted table; vocab_percent only names its folder).

    `mixture` gives two outputs: the continuous mixture and its argmax tokens ("..._argmax").
    `projection` needs the free rung's output (`free`); `own_tokens` the targets' tokens [N, T];
    gcg with gcg_init="projected" the projected rung's output.
    """
    table = table or token_table(lm)
    n, t, _ = targets.shape
    if rung in _SETTING_PREFIX and value is None:
        raise UserError(f"rung {rung} needs a setting value")
    name = setting_name(rung, value) + (vocab_suffix(vocab_percent) if rung in VOCAB_RUNGS else "")

    if rung == "free":
        res, secs = _optimise(lm, layer, targets, start_vectors(lm, table, n, t, settings, seed),
                              settings.optim(settings.lr), InputParam(), progress)
        return {name: RungOutput(res.soft_prompt, None, [settings.steps] * n, secs, res.loss_curve, res.cos_curve)}

    if rung == "norm_bound":
        param = NormBound(value * table.mean_norm)
        init = start_vectors(lm, table, n, t, settings, seed)  # [N, T, d]
        param.after_step(init)  # start inside the ball
        res, secs = _optimise(lm, layer, targets, init, settings.optim(settings.lr), param, progress)
        return {name: RungOutput(res.soft_prompt, None, [settings.steps] * n, secs, res.loss_curve, res.cos_curve,
                                 extra={"max_norm": param.max_norm})}

    if rung == "nearest_penalty":
        param = NearestPenalty(table, value, settings.penalty_kind)
        init = start_vectors(lm, table, n, t, settings, seed)  # [N, T, d]
        res, secs = _optimise(lm, layer, targets, init, settings.optim(settings.lr), param, progress)
        with torch.no_grad():
            dist = param.distance(res.soft_prompt.to(lm.device)).mean(1).cpu()  # [N]
        return {name: RungOutput(res.soft_prompt, None, [settings.steps] * n, secs, res.loss_curve, res.cos_curve,
                                 extra={"penalty_kind": settings.penalty_kind,
                                        "mean_distance": [float(x) for x in dist]})}

    if rung == "mixture":
        param = TokenMixture(table, value)
        g = torch.Generator().manual_seed(seed + 2)
        init = torch.randn(n, t, table.ids.numel(), generator=g) * settings.init_scale  # [N, T, V']
        res, secs = _optimise(lm, layer, targets, init, settings.optim(settings.mixture_lr), param, progress)
        ids = param.argmax_ids(res.extra["param"]).cpu()  # [N, T]
        weights = param.weights(res.extra["param"])
        top_weight = weights.max(-1).values.mean(1)  # [N]: mean over positions of the largest mixture weight
        cont = RungOutput(res.soft_prompt, None, [settings.steps] * n, secs, res.loss_curve, res.cos_curve,
                          extra={"top_weight": [float(x) for x in top_weight]})
        disc = RungOutput(_embed(lm, ids), ids, [settings.steps] * n, secs, res.loss_curve, res.cos_curve,
                          extra={"top_weight": [float(x) for x in top_weight]})
        return {name: cont, f"{name}_argmax": disc}

    if rung == "projected":
        init = start_vectors(lm, table, n, t, settings, seed)  # [N, T, d]
        return {name: run_pez(lm, layer, targets, init, settings.optim(settings.projected_lr), table, progress)}

    if rung == "gcg":
        if settings.gcg_init == "projected":
            if projected is None:
                raise UserError("gcg with gcg_init='projected' needs the projected rung's tokens")
            init_ids = projected.ids
        else:
            init_ids = start_ids(table, n, t, seed)
        cfg = GCGConfig(budget=settings.gcg_budget, top_k=settings.gcg_top_k, candidates=settings.gcg_candidates,
                        memory_budget_mb=settings.memory_budget_mb)
        res = gcg_search(lm, layer, targets, init_ids, cfg, settings.optim(settings.lr), table, seed + 4,
                         progress=progress)
        return {name: RungOutput(_embed(lm, res.ids), res.ids, res.forward_passes, res.seconds,
                                 extra={"start_loss": res.start_loss, "final_loss": res.loss,
                                        "iterations": res.iterations, "accepted": res.accepted,
                                        "candidate_batch": res.candidate_batch})}

    if rung == "causal":
        res = causal_search(lm, layer, targets, CausalConfig(settings.causal_chunk, settings.causal_max_candidates),
                            table, progress=progress)
        return {name: RungOutput(_embed(lm, res.ids), res.ids, res.forward_passes, res.seconds,
                                 extra={"single_position_forwards": res.passes,
                                        "candidates_per_position": res.candidates.tolist(),
                                        "exact_positions": res.exact.float().mean(1).tolist(),
                                        "position_error": res.position_error.tolist()})}

    start = time.perf_counter()
    if rung == "projection":
        if free is None:
            raise UserError("the projection baseline needs the free rung's solutions")
        ids = table.ids.cpu()[nearest_rows(free.inputs, table).cpu()]  # [N, T]
        extra_passes = free.forward_passes
    elif rung == "random_tokens":
        ids = start_ids(table, n, t, seed)
        extra_passes = [0] * n
    elif rung == "own_tokens":
        if tokens is None:
            raise UserError("the own_tokens baseline needs targets taken from text (their tokens)")
        ids = tokens.long().cpu().clone()
        extra_passes = [0] * n
    else:
        raise UserError(f"unknown rung {rung!r}: choose from {', '.join(RUNGS)}")
    secs = (time.perf_counter() - start) / n
    base = list(free.seconds) if rung == "projection" else [0.0] * n
    return {name: RungOutput(_embed(lm, ids), ids, list(extra_passes), [b + secs for b in base])}


def run_pez(lm, layer: int, targets: torch.Tensor, init: torch.Tensor, cfg: OptimConfig, table: TokenTable,
            progress=None, frame: TextFrame | None = None) -> RungOutput:
    """PEZ from init [N, T, d]: optimise through the straight-through projection onto `table`; keep the
    best ids seen (by loss). With a `frame`, the vectors fill its slots (init [N, K, d], targets [N, P, d]).

    The ids of every step are scored by the engine's loss curve; the ids after the last step take one
    more forward (counted: steps + 1 forward passes).
    """
    n = targets.shape[0]
    param = StraightThrough(table)
    res = optimise(lm, layer, targets, init, cfg, progress=progress, param=param, frame=frame)
    start = time.perf_counter()
    # history: for each chunk of the batch, `steps` entries of [b, T]; rebuild [S, N, T]
    steps = cfg.steps
    chunks = [torch.stack(param.history[c * steps : (c + 1) * steps]) for c in range(len(param.history) // steps)]
    hist = torch.cat(chunks, dim=1)  # [S, N, T]
    if len(param.history) % steps or hist.shape[1] != n:
        raise RuntimeError(f"projected rung: {len(param.history)} recorded forwards do not match {steps} steps x {n}")
    final_ids = param.nearest_ids(res.extra["param"].to(lm.device)).cpu()  # [N, T] after the last step
    if frame is None:
        achieved = residuals_of_tokens(lm, final_ids, layer)
    else:
        achieved = frame_residual_of_tokens(lm.model, layer, frame, final_ids)
    final_loss, _ = reachability_loss(achieved, targets.float(), cfg.mse_weight, cfg.skip_pos0 and frame is None,
                                      cfg.mse_norm)
    best_step = res.loss_curve.argmin(1)  # [N]
    best_loss = res.loss_curve[torch.arange(n), best_step]  # [N]
    ids = hist[best_step, torch.arange(n)]  # [N, T]
    use_final = final_loss < best_loss
    ids[use_final] = final_ids[use_final]
    secs = res.seconds + time.perf_counter() - start
    return RungOutput(_embed(lm, ids), ids, [steps + 1] * n, [secs / n] * n, res.loss_curve, res.cos_curve,
                      extra={"best_step": [int(s) if not u else steps for s, u in zip(best_step, use_final)],
                             "distinct_ids_seen": int(torch.unique(hist.flatten()).numel())})
