"""GCG-style discrete token search: which real token sequence gets the layer-L residual closest to a target?

One target at a time. Each iteration:
  1. a gradient pass: the loss's gradient w.r.t. one-hot indicators over the ordinary tokens [T, V'];
  2. the top_k tokens per position with the most negative gradient are the candidates there;
  3. `candidates` random single-token swaps of the current sequence (a random position, one of its
     top_k tokens) are evaluated by ordinary forwards from input_ids, in batches fitted to memory;
  4. the best candidate replaces the current sequence only if its loss is lower (greedy, so the
     result is never worse than the start).
The budget is in forward passes per target: the start's evaluation, each gradient pass and each
candidate count one (with the prefix cache a candidate runs only the positions from its swap on, and each
iteration also runs the current sequence once and, per swapped position, its prefix once: about 1 + T/2
full-sequence equivalents per iteration, not counted, 2% of 512 candidates at T = 20); the search stops before it would exceed the budget, or once the loss is at most
stop_loss (the target reached).
With a `frame` (fixed text around K soft slots) only the slot tokens are searched and the loss is over
the frame's positions (position 0 never left out).
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import torch

from .errors import UserError
from .frame import TextFrame, frame_residual
from .memory import batch_for_budget
from .metrics import reachability_loss
from .models import LoadedModel
from .optimize import OptimConfig
from .residual import residual_at

if TYPE_CHECKING:
    from .manifold import TokenTable


@dataclass
class GCGConfig:
    """How the discrete search runs."""

    budget: int = 2048
    """Forward passes per target (start evaluation + gradient passes + every candidate); nanoGCG's default
    strength is 250 iterations of 512 candidates: 128250."""
    top_k: int = 256
    """Candidate tokens per position, by the one-hot gradient (nanoGCG's default)."""
    candidates: int = 512
    """Single-swap candidates per iteration (nanoGCG's search width)."""
    stop_loss: float = 1e-6
    """Stop a target once its loss is at most this (the target is reached: its own tokens give ~1e-7)."""
    cached: bool = True
    """Evaluate a candidate from its first changed position on, the tokens before it cached (False: every
    candidate's whole sequence; the same numbers to rounding, about twice the compute)."""
    memory_budget_mb: float | None = None
    """Memory one candidate batch may use, in MiB; None: half of what is free."""

    def __post_init__(self):
        if self.budget < 2:
            raise UserError(f"GCG budget must be at least 2 forward passes, got {self.budget}")
        if self.top_k < 1 or self.candidates < 1:
            raise UserError("GCG top_k and candidates must be at least 1")


@dataclass
class GCGResult:
    ids: torch.Tensor  # [N, T] best token ids per target
    loss: list[float]  # their loss (from the ordinary forward of the ids)
    cos: list[float]  # their mean cosine over positions
    start_loss: list[float]
    forward_passes: list[int]  # per target, exactly as counted
    seconds: list[float]  # per target
    iterations: list[int]
    accepted: list[int]  # iterations whose best candidate improved the loss
    candidate_batch: int  # candidates per forward batch, after the memory fit
    loss_curve: list[list[float]] = field(default_factory=list)  # per target: loss after each iteration


@torch.no_grad()
def evaluate_ids(lm: LoadedModel, layer: int, ids: torch.Tensor, target: torch.Tensor, optim: OptimConfig,
                 batch: int, frame: TextFrame | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss and mean cosine of token sequences ids [C, T] against one target [T, d]: ([C], [C]) on CPU.

    With a one-row `frame`, ids [C, K] fill its slots and target [P, d] is compared at its positions."""
    losses, coses = [], []
    for lo in range(0, ids.shape[0], batch):
        chunk = ids[lo : lo + batch].to(lm.device)  # [c, T]
        if frame is None:
            h = residual_at(lm.model, layer, input_ids=chunk).float()  # [c, T, d]
        else:
            soft = lm.model.get_input_embeddings()(chunk)  # [c, K, d]
            h = frame_residual(lm.model, layer, frame.repeat(chunk.shape[0]), soft).float()  # [c, P, d]
        tgt = target.to(h.device).float().expand_as(h)
        loss, cos = reachability_loss(h, tgt, optim.mse_weight, optim.skip_pos0 and frame is None, optim.mse_norm)
        losses.append(loss.cpu())
        coses.append(cos.cpu())
    return torch.cat(losses), torch.cat(coses)


@torch.no_grad()
def evaluate_swaps(lm: LoadedModel, layer: int, base: torch.Tensor, ids: torch.Tensor, target: torch.Tensor,
                   optim: OptimConfig, batch: int) -> tuple[torch.Tensor, torch.Tensor]:
    """evaluate_ids for candidates ids [C, T] that differ from base [T] from some position p on: the tokens
    before p are base's, so their keys and values are cached (frame.py) and only positions p.. run.

    Candidates are grouped by p; base's own residual fills positions < p. Equal to evaluate_ids to rounding.
    """
    base = base.long().cpu()
    ids = ids.long().cpu()
    t = base.numel()
    differs = ids != base[None]  # [C, T]
    first = torch.where(differs.any(1), differs.float().argmax(1), torch.full((ids.shape[0],), t))  # [C]
    base_h = residual_at(lm.model, layer, input_ids=base[None].to(lm.device)).float()[0]  # [T, d]
    tgt = target.to(lm.device).float()
    losses, coses = torch.empty(ids.shape[0]), torch.empty(ids.shape[0])
    emb = lm.model.get_input_embeddings()
    for p in first.unique().tolist():
        rows = torch.nonzero(first == p).flatten()
        if p == t:  # the base itself
            loss, cos = reachability_loss(base_h[None], tgt[None], optim.mse_weight, optim.skip_pos0, optim.mse_norm)
            losses[rows], coses[rows] = loss.cpu(), cos.cpu()
            continue
        frame = TextFrame(base[None, :p], torch.zeros(1, 0, dtype=torch.long), t - p, torch.arange(p, t))
        for lo in range(0, rows.numel(), batch):
            chunk = rows[lo : lo + batch]
            soft = emb(ids[chunk, p:].to(lm.device))  # [c, T-p, d]
            h = frame_residual(lm.model, layer, frame.repeat(chunk.numel()), soft).float()  # [c, T-p, d]
            h = torch.cat([base_h[None, :p].expand(chunk.numel(), -1, -1), h], dim=1)  # [c, T, d]
            loss, cos = reachability_loss(h, tgt.expand_as(h), optim.mse_weight, optim.skip_pos0, optim.mse_norm)
            losses[chunk], coses[chunk] = loss.cpu(), cos.cpu()
    return losses, coses


def token_gradient(lm: LoadedModel, layer: int, rows: torch.Tensor, target: torch.Tensor, optim: OptimConfig,
                   emb: torch.Tensor, frame: TextFrame | None = None) -> torch.Tensor:
    """Gradient of the loss w.r.t. one-hot indicators over the table rows: rows [T] -> [T, V'].

    rows index the token table `emb` [V', d]; the forward sees one_hot @ emb = the tokens' embeddings
    (with a one-row `frame`: in its K slots, target [P, d] at its positions).
    """
    one_hot = torch.zeros(1, rows.numel(), emb.shape[0], device=emb.device)  # [1, T, V']
    one_hot[0, torch.arange(rows.numel()), rows.to(emb.device)] = 1.0
    one_hot.requires_grad_(True)
    if frame is None:
        h = residual_at(lm.model, layer, inputs_embeds=one_hot @ emb).float()  # [1, T, d]
    else:
        h = frame_residual(lm.model, layer, frame, one_hot @ emb).float()  # [1, P, d]
    loss, _ = reachability_loss(h, target.to(h.device).float()[None], optim.mse_weight,
                                optim.skip_pos0 and frame is None, optim.mse_norm)
    (grad,) = torch.autograd.grad(loss.sum(), one_hot)
    return grad[0]


def gcg_search(lm: LoadedModel, layer: int, targets: torch.Tensor, init_ids: torch.Tensor, cfg: GCGConfig,
               optim: OptimConfig, table: TokenTable, seed: int, progress=None,
               frame: TextFrame | None = None) -> GCGResult:
    """Search token sequences for targets [N, T, d] from init_ids [N, T] (ordinary token ids).

    `table` holds the allowed tokens and their embeddings (manifold.token_table); `optim` gives
    the loss (mse_weight, skip_pos0, mse_norm). `progress(forward_passes, cos)` is called per iteration.
    With a `frame` of N rows the search is over its K slot tokens: init_ids [N, K], targets [N, P, d].
    """
    n = targets.shape[0]
    t = targets.shape[1] if frame is None else frame.soft
    if frame is not None and (frame.rows != n or targets.shape[1] != frame.positions.numel()):
        raise UserError(f"targets {tuple(targets.shape)} do not fit a frame of {frame.rows} rows x "
                        f"{frame.positions.numel()} positions")
    if init_ids.shape != (n, t):
        raise UserError(f"initial tokens {tuple(init_ids.shape)} do not match targets {tuple(targets.shape)}")
    table_ids = table.ids.cpu()  # [V'] ascending
    rows_of = lambda ids: torch.searchsorted(table_ids, ids)  # noqa: E731  ordinary id -> table row
    if not torch.equal(table_ids[rows_of(init_ids).clamp(max=table_ids.numel() - 1)], init_ids.cpu()):
        raise UserError("initial tokens must be allowed (ordinary, in the table) token ids")
    memory = None if cfg.memory_budget_mb is None else int(cfg.memory_budget_mb * 2**20)
    batch = batch_for_budget(lm, layer, t if frame is None else frame.seq_len, cfg.candidates, memory)  # candidates per forward batch
    out = GCGResult(ids=init_ids.clone().long().cpu(), loss=[], cos=[], start_loss=[], forward_passes=[],
                    seconds=[], iterations=[], accepted=[], candidate_batch=batch)
    for i in range(n):
        start = time.perf_counter()
        row = None if frame is None else frame.select(slice(i, i + 1))

        def score(ids: torch.Tensor, base: torch.Tensor | None = None, i=i, row=row):  # [C, T] -> ([C], [C])
            if base is not None and row is None and cfg.cached:
                return evaluate_swaps(lm, layer, base, ids, targets[i], optim, batch)
            return evaluate_ids(lm, layer, ids, targets[i], optim, batch, row)

        def gradient(rows: torch.Tensor, i=i, row=row):  # [T] table rows -> [T, V']
            return token_gradient(lm, layer, rows, targets[i], optim, table.emb, row)

        run = gcg_minimise(score, gradient, init_ids[i], cfg, table, seed * 1_000_003 + i, progress)
        out.ids[i] = run["ids"]
        out.start_loss.append(run["start_loss"])
        out.loss.append(run["loss"])
        out.cos.append(run["score"])
        out.forward_passes.append(run["passes"])
        out.seconds.append(time.perf_counter() - start)
        out.iterations.append(run["iterations"])
        out.accepted.append(run["accepted"])
        out.loss_curve.append(run["curve"])
    return out


def gcg_minimise(score, gradient, init_ids: torch.Tensor, cfg: GCGConfig, table: TokenTable, seed: int,
                 progress=None) -> dict:
    """GCG on any token objective: score(ids [C, T], base) -> (loss [C], a second number [C] for the progress bar)
    where base [T] is the current sequence the candidates were made from (None for the start),
    gradient(table rows [T]) -> d loss / d one-hot [T, V'] over `table`. From init_ids [T] (allowed ids).

    Returns ids [T], loss, score, start_loss, passes (forward passes as counted in the module docstring),
    iterations, accepted and curve (the kept loss after each iteration). gcg_search runs it on residual targets;
    the bench on nanoGCG's objective (next-token cross-entropy of a target string).
    """
    table_ids = table.ids.cpu()
    t = init_ids.numel()
    top_k = min(cfg.top_k, table_ids.numel())
    g = torch.Generator().manual_seed(seed)
    ids = init_ids.long().cpu().clone()  # [T]
    loss, value = (x[0] for x in score(ids[None]))
    passes, iterations, accepted, curve = 1, 0, 0, []
    start_loss = float(loss)
    if progress:
        progress(1, float(value))
    while passes + 2 <= cfg.budget and loss > cfg.stop_loss:  # room for a gradient pass and a candidate
        grad = gradient(torch.searchsorted(table_ids, ids))  # [T, V']
        passes += 1
        top = (-grad).topk(top_k, dim=1).indices.cpu()  # [T, k] table rows
        count = min(cfg.candidates, cfg.budget - passes)
        pos = torch.randint(0, t, (count,), generator=g)  # [C]
        pick = torch.randint(0, top_k, (count,), generator=g)  # [C]
        cands = ids.repeat(count, 1)  # [C, T]
        cands[torch.arange(count), pos] = table_ids[top[pos, pick]]
        c_loss, c_value = score(cands, ids)  # [C], [C]
        passes += count
        iterations += 1
        j = int(c_loss.argmin())
        if c_loss[j] < loss:
            ids, loss, value = cands[j].clone(), c_loss[j], c_value[j]
            accepted += 1
        curve.append(float(loss))
        if progress:
            progress(1 + count, float(value))
    return {"ids": ids, "loss": float(loss), "score": float(value), "start_loss": start_loss, "passes": passes,
            "iterations": iterations, "accepted": accepted, "curve": curve}
