"""Causal token search: recover the tokens behind a layer-L residual target, one position at a time.

Position t's residual at layer L depends only on tokens 0..t (causal attention). So with tokens 0..t-1
already chosen (their keys and values cached: frame.py), the token at t is the one whose residual at t
matches the target's. Where the map from tokens to residuals is injective (SipIt, arXiv 2510.15511), the
true token reproduces it to rounding and every other token misses it by far (SmolLM2 layer 15: relative
squared error ~1e-13 against >= 3e-5 at position 0 and >= 0.06 elsewhere).

Position 0 has no prefix, so every allowed token's residual there is computed once and compared with every
target (V' single-position forwards shared by the N targets: the gradient ranks the true token anywhere in
the vocabulary there, its residual being dominated by the input-independent massive activation). At every
later position, all targets together, rounds of:
  1. linearise: the gradient of the position's cosine loss 1 - cos(h_t, y_t) w.r.t. the input vector at t,
     at the current point (first the mean token embedding, then the embedding of the best token found so far;
     the cosine ranks the true token higher than the squared error on SmolLM2);
  2. rank the unvisited allowed tokens by the first-order gain of the cosine loss (-g . e_v, g its gradient)
     and check the best of them, `chunk` in the first round and twice as many in each next one, one
     single-position forward each, prefix cached;
  3. stop at a token whose relative squared error ||h_t - y_t||^2 / ||y_t||^2 is below `exact_tol`, or when
     `max_candidates` (default: all) are checked; the best token seen is kept (greedy, no backtracking).
Re-linearising at a real token matters: from the mean embedding alone the true token ranks in the last
thousand of 49k at some positions (SmolLM2, layers 5-25).

Cost is counted in single-position forwards (a gradient pass or a candidate: one each) and reported in
full-sequence equivalents (positions processed / T), the unit the GCG rung counts in.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F

from .errors import UserError
from .frame import TextFrame, frame_residual
from .models import LoadedModel
from .residual import residual_at

if TYPE_CHECKING:
    from .manifold import TokenTable


@dataclass
class CausalConfig:
    """How the causal search runs."""

    chunk: int = 32
    """Candidates checked in the first round at a position; each further round checks twice as many."""
    max_candidates: int = 0
    """Most candidates checked per position, then the best token seen is kept (0: the whole allowed
    vocabulary, so a token that reproduces the target is always found)."""
    exact_tol: float = 1e-8
    """A token whose relative squared error at its position is below this reproduces the target (stop there)."""
    batch: int = 1024
    """Candidates per forward (each carries its prefix's keys and values: ~0.7 MB per candidate on SmolLM2 at
    layer 25 with 18 tokens before it, so late rounds of 16k candidates x 8 targets must be split)."""

    def __post_init__(self):
        if self.chunk < 1 or self.max_candidates < 0 or self.batch < 1:
            raise UserError("causal search: chunk and batch must be at least 1 and max_candidates at least 0")
        if not (math.isfinite(self.exact_tol) and self.exact_tol >= 0):
            raise UserError(f"causal search: exact_tol must be a finite number >= 0, got {self.exact_tol}")


@dataclass
class CausalResult:
    ids: torch.Tensor  # [N, T] chosen token ids
    position_error: torch.Tensor  # [N, T] relative squared error at each position, with the chosen prefix
    exact: torch.Tensor  # [N, T] bool: below exact_tol
    candidates: torch.Tensor  # [N, T] candidates checked per position
    passes: list[int]  # per target: single-position forwards (gradient passes + candidates)
    forward_passes: list[int]  # per target: the same in full-sequence equivalents (ceil(passes / T))
    seconds: list[float]  # per target (wall time / N: the targets are searched together)


def relative_error(h: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """||h - y||^2 / ||y||^2 over the last dimension: [..., d] -> [...]."""
    h, y = h.float(), y.float()
    return ((h - y) ** 2).sum(-1) / (y**2).sum(-1).clamp_min(1e-30)


def _position_frame(ids: torch.Tensor, t: int) -> TextFrame:
    """One slot at position t after the chosen tokens 0..t-1 of every target: rows = targets."""
    n = ids.shape[0]
    return TextFrame(ids[:, :t], torch.zeros(n, 0, dtype=torch.long), 1, torch.tensor([t]))


def _gradient(lm: LoadedModel, layer: int, frame: TextFrame, x: torch.Tensor, y: torch.Tensor,
              ablation: str) -> torch.Tensor:
    """d (1 - cos) / d x at x [a, d] in the frame's slot, targets y [a, d] -> [a, d]."""
    x = x.detach().clone()[:, None].requires_grad_(True)  # [a, 1, d]
    h = frame_residual(lm.model, layer, frame, x, ablation)[:, 0]  # [a, d]
    (g,) = torch.autograd.grad((1 - F.cosine_similarity(h.float(), y, dim=-1)).sum(), x)
    return g[:, 0]


@torch.no_grad()
def _candidate_errors(lm: LoadedModel, layer: int, frame: TextFrame, vectors: torch.Tensor, y: torch.Tensor,
                      ablation: str, batch: int) -> torch.Tensor:
    """Relative errors of candidate vectors [a, k, d] in the frame's slot (row i's k candidates) -> [a, k],
    at most `batch` candidates per forward."""
    a, k, d = vectors.shape
    rows = frame.repeat(k)  # row i's template k times in a row: matches vectors.reshape(a * k, 1, d)
    flat, targets = vectors.reshape(a * k, 1, d), y.repeat_interleave(k, 0)  # [a*k, 1, d], [a*k, d]
    out = []
    for lo in range(0, a * k, batch):
        h = frame_residual(lm.model, layer, rows.select(slice(lo, lo + batch)), flat[lo : lo + batch], ablation)
        out.append(relative_error(h[:, 0], targets[lo : lo + batch]))
    return torch.cat(out).reshape(a, k)


@torch.no_grad()
def _first_position_errors(lm: LoadedModel, layer: int, emb: torch.Tensor, y: torch.Tensor, ablation: str,
                           batch: int = 1024) -> torch.Tensor:
    """Relative errors of every allowed token at position 0 against each target's position 0: y [N, d] -> [N, V']."""
    out = []
    for lo in range(0, emb.shape[0], batch):
        h = residual_at(lm.model, layer, inputs_embeds=emb[lo : lo + batch, None], ablation=ablation).float()[:, 0]
        out.append(relative_error(h[None], y[:, None]))  # [N, b]
    return torch.cat(out, dim=1)


def causal_search(lm: LoadedModel, layer: int, targets: torch.Tensor, cfg: CausalConfig, table: TokenTable,
                  progress=None, ablation: str = "none") -> CausalResult:
    """Tokens for targets [N, T, d], position by position, from the allowed tokens of `table`.

    `progress(targets, share_exact)` is called once per position (N x T in all).
    """
    start = time.perf_counter()
    n, t_len, d = targets.shape
    dev = lm.device
    emb = table.emb.to(dev).float()  # [V', d]
    v = emb.shape[0]
    k_max = min(cfg.max_candidates or v, v)
    ids = torch.zeros(n, t_len, dtype=torch.long)
    error = torch.zeros(n, t_len)
    candidates = torch.zeros(n, t_len, dtype=torch.long)
    passes = torch.zeros(n, dtype=torch.long)
    first = _first_position_errors(lm, layer, emb, targets[:, 0].to(dev).float(), ablation)  # [N, V']
    e0, r0 = first.min(1)
    ids[:, 0], error[:, 0] = table.ids.cpu()[r0.cpu()], e0.cpu()
    candidates[:, 0] = v
    passes += math.ceil(v / n)  # the shared scan, split evenly over the targets
    if progress:
        progress(n, float((e0 <= cfg.exact_tol).float().mean()))
    for t in range(1, t_len):
        frame = _position_frame(ids, t)
        y = targets[:, t].to(dev).float()  # [N, d]
        best_err = torch.full((n,), math.inf, device=dev)
        best_row = torch.zeros(n, dtype=torch.long, device=dev)
        visited = torch.zeros(n, v, dtype=torch.bool, device=dev)
        x = emb.mean(0).expand(n, d).clone()  # [N, d] linearisation point
        active = torch.arange(n, device=dev)
        round_ = 0
        while active.numel():
            sub = frame.select(active.cpu())
            g = _gradient(lm, layer, sub, x[active], y[active], ablation)  # [a, d]
            score = -(g @ emb.T)  # [a, V']
            score[visited[active]] = -math.inf
            k = min(cfg.chunk * 2**round_, k_max - int(candidates[active[0].cpu(), t]))
            round_ += 1
            rows = score.topk(k, dim=1).indices  # [a, k]
            visited[active[:, None], rows] = True
            err = _candidate_errors(lm, layer, sub, emb[rows], y[active], ablation, cfg.batch)  # [a, k]
            e_min, j = err.min(1)
            better = e_min < best_err[active]
            best_err[active] = torch.where(better, e_min, best_err[active])
            best_row[active] = torch.where(better, rows[torch.arange(rows.shape[0], device=dev), j], best_row[active])
            x[active] = emb[best_row[active]]
            cpu_active = active.cpu()
            candidates[cpu_active, t] += k
            passes[cpu_active] += 1 + k
            keep = (best_err[active] > cfg.exact_tol) & (candidates[cpu_active, t] < k_max).to(dev)
            active = active[keep]
        ids[:, t] = table.ids.cpu()[best_row.cpu()]
        error[:, t] = best_err.cpu()
        if progress:
            progress(n, float((error[:, : t + 1] <= cfg.exact_tol).all(1).float().mean()))
    seconds = (time.perf_counter() - start) / n
    return CausalResult(ids=ids, position_error=error, exact=error <= cfg.exact_tol, candidates=candidates,
                        passes=[int(p) for p in passes],
                        forward_passes=[math.ceil(int(p) / t_len) for p in passes], seconds=[seconds] * n)


@dataclass
class SlotSearchResult:
    ids: torch.Tensor  # [R, K] slot token ids
    loss: list[float]  # per row, of the final ids
    start_loss: list[float]
    forward_passes: list[int]  # per row: frame forwards (gradient passes + candidates)
    seconds: list[float]  # per row (wall time / R)


def _slot_losses(lm: LoadedModel, layer: int, frame: TextFrame, ids: torch.Tensor, target: torch.Tensor, optim,
                 emb_layer, batch: int = 256) -> torch.Tensor:
    """Loss of slot ids [R, K] in the frame's R rows against target [R, P, d] -> [R] (position 0 counted), at
    most `batch` rows per forward."""
    from .metrics import reachability_loss

    out = []
    with torch.no_grad():
        for lo in range(0, ids.shape[0], batch):
            sub = frame.select(slice(lo, lo + batch))
            h = frame_residual(lm.model, layer, sub, emb_layer(ids[lo : lo + batch].to(lm.device)).float())  # [b, P, d]
            out.append(reachability_loss(h.float(), target[lo : lo + batch], optim.mse_weight, False,
                                         optim.mse_norm)[0])
    return torch.cat(out)


def slot_search(lm: LoadedModel, layer: int, target: torch.Tensor, frame: TextFrame, init_ids: torch.Tensor,
                optim, table: TokenTable, max_candidates: int = 256, chunk: int = 32, passes: int = 4,
                stop_loss: float = 1e-6, progress=None) -> SlotSearchResult:
    """Slot tokens searched in order (slot 0, 1, .., K-1; again while a pass improves, at most `passes` times),
    each scored on the frame's positions.

    The compared positions follow every slot, so a slot cannot be settled alone as in causal_search: each slot
    is searched with the others at their current tokens (starting from init_ids [R, K], the text's own tokens),
    and after each pass every exchange of two slots' tokens is tried (a permutation of the answer is a minimum
    that single-slot moves cannot leave).
    Per slot, rounds as in causal_search (rank by the loss's first-order gain at the current tokens, check `chunk`
    candidates, then twice as many, up to max_candidates), keeping a candidate only if it lowers the loss (never
    worse than the start); a row stops once its loss is at most stop_loss. target [R, P, d]; `optim` gives the
    loss (mse_weight, mse_norm); position 0 is counted as everywhere in steering.
    """
    from .metrics import reachability_loss

    start = time.perf_counter()
    dev = lm.device
    emb_layer = lm.model.get_input_embeddings()
    emb = table.emb.to(dev).float()  # [V', d]
    table_ids = table.ids.to(dev)
    r, k_slots = init_ids.shape
    ids = init_ids.long().to(dev).clone()
    target = target.to(dev).float()
    loss = _slot_losses(lm, layer, frame, ids, target, optim, emb_layer)  # [R]
    start_loss = loss.clone()
    fwd = torch.ones(r, dtype=torch.long, device=dev)
    cap = min(max_candidates, emb.shape[0])
    for _ in range(passes):
        before_pass = loss.clone()
        for k in range(k_slots):
            checked, round_ = 0, 0
            active = torch.nonzero(loss > stop_loss).flatten()
            while active.numel() and checked < cap:
                sub = frame.select(active.cpu())
                x = emb_layer(ids[active]).float().detach().requires_grad_(True)  # [a, K, d]
                h = frame_residual(lm.model, layer, sub, x)
                (g,) = torch.autograd.grad(reachability_loss(h.float(), target[active], optim.mse_weight, False,
                                                             optim.mse_norm)[0].sum(), x)
                score = -(g[:, k] @ emb.T)  # [a, V'] first-order gain of each token in slot k
                score[table_ids[None].eq(ids[active, k, None])] = -math.inf  # not the current token again
                c = min(chunk * 2**round_, cap - checked)
                rows = score.topk(c, dim=1).indices  # [a, c]  (earlier rounds' tokens may recur: re-ranked)
                cand = ids[active].repeat_interleave(c, 0)  # [a*c, K]
                cand[:, k] = table_ids[rows.flatten()]
                c_loss = _slot_losses(lm, layer, sub.repeat(c), cand, target[active].repeat_interleave(c, 0), optim,
                                      emb_layer).reshape(-1, c)  # [a, c]
                best, j = c_loss.min(1)
                better = best < loss[active]
                ids[active[better]] = cand.reshape(-1, c, k_slots)[better, j[better]]
                loss[active[better]] = best[better]
                fwd[active] += 1 + c
                checked += c
                round_ += 1
                active = active[loss[active] > stop_loss]
            if progress:
                progress(r, float(loss.median()))
        if k_slots > 1:  # the moves one slot at a time cannot make: two slots exchanging their tokens
            pairs = torch.combinations(torch.arange(k_slots), 2)  # [Q, 2]
            active = torch.nonzero(loss > stop_loss).flatten()
            if active.numel():
                q = pairs.shape[0]
                cand = ids[active].repeat_interleave(q, 0).reshape(-1, q, k_slots)  # [a, Q, K]
                cand[:, torch.arange(q), pairs[:, 0]] = ids[active][:, pairs[:, 1]]
                cand[:, torch.arange(q), pairs[:, 1]] = ids[active][:, pairs[:, 0]]
                c_loss = _slot_losses(lm, layer, frame.select(active.cpu()).repeat(q), cand.reshape(-1, k_slots),
                                      target[active].repeat_interleave(q, 0), optim, emb_layer).reshape(-1, q)
                best, j = c_loss.min(1)
                better = best < loss[active]
                ids[active[better]] = cand[better, j[better]]
                loss[active[better]] = best[better]
                fwd[active] += q
        if not bool((loss < before_pass).any()):
            break
    seconds = (time.perf_counter() - start) / r
    return SlotSearchResult(ids=ids.cpu(), loss=loss.tolist(), start_loss=start_loss.tolist(),
                            forward_passes=[int(f) for f in fwd.cpu()], seconds=[seconds] * r)
