"""Constrained reachability (issue 5): soft-prompt parametrisations between free vectors and real tokens.

Each constraint is an `InputParam` for the batched engine (`optimise(..., param=...)`):
  NormBound       free vectors, projected after every step to norm <= max_norm per position;
  NearestPenalty  free vectors, loss + weight * mean over positions of the distance to the nearest token;
  TokenMixture    logits over ordinary tokens, inputs = softmax(logits / tau) @ E (a convex combination);
  StraightThrough (PEZ) the forward sees the nearest tokens' embeddings, the gradient reaches the vectors.

`run_rung` runs one rung setting of the ladder (these, GCG from token_search.py, and the baselines) and
returns the inputs each result is evaluated from; discrete results carry their token ids.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from .budget import clip_norms
from .errors import UserError
from .floor import ordinary_token_ids
from .models import LoadedModel
from .optimize import InputParam, OptimConfig, initial_prompts, optimise

_ENGINE = OptimConfig()  # the engine's defaults: the ladder's loss and schedule follow them
_CHUNK_BYTES = 64 * 2**20  # at most one [rows, V'] float32 similarity matrix of this size at a time

CONTINUOUS_RUNGS = ("free", "norm_bound", "nearest_penalty", "mixture")
DISCRETE_RUNGS = ("projected", "gcg")
BASELINES = ("projection", "random_tokens", "own_tokens")
RUNGS = CONTINUOUS_RUNGS + DISCRETE_RUNGS + BASELINES


# ---------------------------------------------------------------- the token table

@dataclass
class TokenTable:
    """The ordinary tokens (no special tokens) and their embedding rows, on the model's device."""

    ids: torch.Tensor  # [V'] long: ordinary token ids, ascending
    emb: torch.Tensor  # [V', d] float32: their embedding rows
    unit: torch.Tensor = field(init=False)  # [V', d] rows scaled to norm 1
    half_sq: torch.Tensor = field(init=False)  # [V'] half the squared norm of each row
    mean_norm: float = field(init=False)  # mean row norm
    mean_sq_norm: float = field(init=False)  # mean squared row norm

    def __post_init__(self):
        self.unit = F.normalize(self.emb, dim=1)
        self.half_sq = 0.5 * (self.emb**2).sum(1)
        self.mean_norm = float(self.emb.norm(dim=1).mean())
        self.mean_sq_norm = float(2 * self.half_sq.mean())


def token_table(lm: LoadedModel) -> TokenTable:
    ids = ordinary_token_ids(lm).to(lm.device)
    return TokenTable(ids=ids, emb=lm.embedding_matrix.detach().float()[ids])


@torch.no_grad()
def nearest_rows(x: torch.Tensor, table: TokenTable, by: str = "cos") -> torch.Tensor:
    """Row of the token table nearest to each vector of x [..., d]: [...] long, on x's device.

    by="cos": highest cosine; by="l2": smallest Euclidean distance. Chunked over vectors.
    """
    flat = x.detach().float().reshape(-1, x.shape[-1]).to(table.emb.device)  # [M, d]
    rows = max(1, _CHUNK_BYTES // (4 * table.emb.shape[0]))
    out = []
    for lo in range(0, flat.shape[0], rows):
        xc = flat[lo : lo + rows]  # [c, d]
        if by == "cos":
            score = xc @ table.unit.T  # [c, V']: cosine times ||x||, same argmax
        else:
            score = xc @ table.emb.T - table.half_sq  # [c, V']: (||x||^2 - ||x - e||^2) / 2
        out.append(score.argmax(1))
    return torch.cat(out).view(x.shape[:-1]).to(x.device)


# ---------------------------------------------------------------- the parametrisations

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


# ---------------------------------------------------------------- settings of a ladder

def _floats(values) -> tuple[float, ...]:
    return tuple(float(v) for v in values)


@dataclass
class LadderSettings:
    """How each rung of the constraint ladder is run (defaults: a few minutes on SmolLM2, 4 targets, CPU)."""

    steps: int = 150
    """Adam steps for every optimised rung (free, norm_bound, nearest_penalty, mixture, projected)."""
    lr: float = 0.03
    """Peak Adam learning rate of the free, norm_bound and nearest_penalty rungs (best of 0.01/0.03/0.1
    from the token start on SmolLM2 L15)."""
    mixture_lr: float = 1.0
    """Peak Adam learning rate of the mixture logits (best of 0.3/1/3 on SmolLM2 L15)."""
    projected_lr: float = 0.1
    """Peak Adam learning rate of the projected (PEZ) rung's continuous vectors (best of 0.01/0.1/0.3)."""
    init: str = "tokens"
    """Start of the vector rungs (free, norm_bound, nearest_penalty, projected): "tokens" = the embeddings of
    one random ordinary-token sequence per target, shared by every rung (it is the random_tokens baseline
    and GCG's random start); "normal" = init_scale * N(0, 1), the log's protocol (far from every token)."""
    init_scale: float = 1.0
    """Scale of the "normal" start, and of the mixture logits' start init_scale * N(0, 1)."""
    schedule: str = "cosine"
    """Learning-rate schedule of the optimised rungs: "cosine" or "constant" (every rung runs all its steps:
    the ladder compares rungs at equal cost, so no early stopping)."""
    mse_weight: float = _ENGINE.mse_weight
    """Weight of the MSE term of the loss (every rung, GCG included); the engine's default."""
    skip_pos0: bool = _ENGINE.skip_pos0
    """Leave position 0 out of the loss (metrics report it both ways); the engine's default."""
    mse_norm: str = _ENGINE.mse_norm
    """"none" or "target" (squared error over the target's mean square per position)."""
    norm_bounds: tuple = (1.0, 2.0)
    """norm_bound: maximum norm per position, in multiples of the mean ordinary-token embedding norm."""
    penalty_weights: tuple = (0.01, 1.0)
    """nearest_penalty: weights w of the distance-to-nearest-token term."""
    penalty_kind: str = "l2"
    """nearest_penalty distance: "l2" (squared distance / mean squared token norm) or "cos" (1 - cosine)."""
    mixture_taus: tuple = (1.0,)
    """mixture: softmax temperatures."""
    gcg_budget: int = 256
    """gcg: forward passes per target (every candidate and every gradient pass counts one)."""
    gcg_top_k: int = 64
    """gcg: candidate tokens per position, the most promising by the one-hot gradient."""
    gcg_candidates: int = 64
    """gcg: single-swap candidates evaluated per iteration."""
    gcg_init: str = "random"
    """gcg start: "random" tokens or the "projected" rung's tokens."""
    batch_size: int = 64
    """Problems per batched optimisation step."""
    memory_budget_mb: float | None = None
    """Memory a batched step (or a GCG candidate batch) may use, in MiB; None: half of what is free."""
    floor_draws: int = 4
    """Random-token draws per target for the floor."""

    def __post_init__(self):
        self.norm_bounds = _floats(self.norm_bounds)
        self.penalty_weights = _floats(self.penalty_weights)
        self.mixture_taus = _floats(self.mixture_taus)
        for name in ("lr", "mixture_lr", "projected_lr", "init_scale"):
            v = getattr(self, name)
            if not (math.isfinite(v) and v > 0):
                raise UserError(f"{name} must be a positive finite number, got {v}")
        if any(not (math.isfinite(c) and c > 0) for c in self.norm_bounds):
            raise UserError(f"norm bounds must be positive, got {list(self.norm_bounds)}")
        if any(not (math.isfinite(w) and w >= 0) for w in self.penalty_weights):
            raise UserError(f"penalty weights must be >= 0, got {list(self.penalty_weights)}")
        if any(not (math.isfinite(t) and t > 0) for t in self.mixture_taus):
            raise UserError(f"mixture temperatures must be positive, got {list(self.mixture_taus)}")
        if self.penalty_kind not in ("l2", "cos"):
            raise UserError(f"penalty kind must be 'l2' or 'cos', got {self.penalty_kind!r}")
        if self.gcg_budget < 2:
            raise UserError(f"--gcg-budget must be at least 2 forward passes, got {self.gcg_budget}")
        if self.gcg_top_k < 1 or self.gcg_candidates < 1:
            raise UserError("--gcg-top-k and --gcg-candidates must be at least 1")
        if self.gcg_init not in ("random", "projected"):
            raise UserError(f"--gcg-init must be 'random' or 'projected', got {self.gcg_init!r}")
        if self.init not in ("tokens", "normal"):
            raise UserError(f"--init must be 'tokens' or 'normal', got {self.init!r}")
        if self.floor_draws < 0:
            raise UserError(f"--floor-draws must be >= 0, got {self.floor_draws}")
        self.optim(self.lr)  # validates steps, mse settings, batch size and memory budget

    def optim(self, lr: float) -> OptimConfig:
        """The engine's config for an optimised rung with learning rate `lr`."""
        return OptimConfig(steps=self.steps, lr=lr, init_scale=self.init_scale, mse_weight=self.mse_weight,
                           skip_pos0=self.skip_pos0, mse_norm=self.mse_norm, batch_size=self.batch_size,
                           memory_budget_mb=self.memory_budget_mb, schedule=self.schedule, prune_after=0,
                           early_stop=False)

    def to_dict(self) -> dict:
        out = {f.name: getattr(self, f.name) for f in fields(self)}
        return {k: list(v) if isinstance(v, tuple) else v for k, v in out.items()}


_SETTING_PREFIX = {"norm_bound": "c", "nearest_penalty": "w", "mixture": "tau"}


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


# ---------------------------------------------------------------- running one rung setting

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
             projected: RungOutput | None = None, progress=None) -> dict[str, RungOutput]:
    """Run one rung setting on targets [N, T, d]; returns {folder name: output}.

    `mixture` gives two outputs: the continuous mixture and its argmax tokens ("..._argmax").
    `projection` needs the free rung's output (`free`); `own_tokens` the targets' tokens [N, T];
    gcg with gcg_init="projected" the projected rung's output.
    """
    table = table or token_table(lm)
    n, t, _ = targets.shape
    if rung in _SETTING_PREFIX and value is None:
        raise UserError(f"rung {rung} needs a setting value")
    name = setting_name(rung, value)

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
        return {name: _run_projected(lm, layer, targets, settings, seed, table, progress)}

    if rung == "gcg":
        from .token_search import GCGConfig, gcg_search

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


def _run_projected(lm, layer, targets, settings: LadderSettings, seed: int, table: TokenTable, progress) -> RungOutput:
    """PEZ: optimise through the straight-through projection; keep the best ids seen (by loss).

    The ids of every step are scored by the engine's loss curve; the ids after the last step take one
    more forward (counted: steps + 1 forward passes).
    """
    from .metrics import reachability_loss
    from .targets import residuals_of_tokens

    n, t, _ = targets.shape
    cfg = settings.optim(settings.projected_lr)
    param = StraightThrough(table)
    init = start_vectors(lm, table, n, t, settings, seed)  # [N, T, d]
    res = optimise(lm, layer, targets, init, cfg, progress=progress, param=param)
    start = time.perf_counter()
    # history: for each chunk of the batch, `steps` entries of [b, T]; rebuild [S, N, T]
    steps = cfg.steps
    chunks = [torch.stack(param.history[c * steps : (c + 1) * steps]) for c in range(len(param.history) // steps)]
    hist = torch.cat(chunks, dim=1)  # [S, N, T]
    if len(param.history) % steps or hist.shape[1] != n:
        raise RuntimeError(f"projected rung: {len(param.history)} recorded forwards do not match {steps} steps x {n}")
    final_ids = param.nearest_ids(res.extra["param"].to(lm.device)).cpu()  # [N, T] after the last step
    achieved = residuals_of_tokens(lm, final_ids, layer)
    final_loss, _ = reachability_loss(achieved, targets.float(), cfg.mse_weight, cfg.skip_pos0, cfg.mse_norm)
    best_step = res.loss_curve.argmin(1)  # [N]
    best_loss = res.loss_curve[torch.arange(n), best_step]  # [N]
    ids = hist[best_step, torch.arange(n)]  # [N, T]
    use_final = final_loss < best_loss
    ids[use_final] = final_ids[use_final]
    secs = res.seconds + time.perf_counter() - start
    return RungOutput(_embed(lm, ids), ids, [steps + 1] * n, [secs / n] * n, res.loss_curve, res.cos_curve,
                      extra={"best_step": [int(s) if not u else steps for s, u in zip(best_step, use_final)],
                             "distinct_ids_seen": int(torch.unique(hist.flatten()).numel())})
