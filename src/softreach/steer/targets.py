"""Steering targets at the steered positions: steered, real and random.

steered  clean + c * |clean| * u per position, with `clean` the residual when the slots hold the text's
         own tokens and u a unit direction (random per text, or a mean difference between two corpora);
real     the residuals when the slots hold another text's tokens (a known answer: those tokens reach it);
random   Gaussian noise with each position's norm matched to the clean residual.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..frame import TextFrame, frame_residual_of_tokens
from .config import SteerConfig
from .template import Texts


@dataclass
class SteerTargets:
    """The problems of one condition: one row per (text, coefficient), text-major."""

    frame: TextFrame  # rows = problems
    target: torch.Tensor  # [R, P, d]
    own_tokens: torch.Tensor  # [R, K] the text's own tokens in the slots
    source_tokens: torch.Tensor | None  # [R, K] real targets: the tokens that produce them
    coefficient: list[float | None]  # per row (steered targets), else None
    text: list[int]  # per row: the text (template) index


def random_directions(n: int, d: int, seed: int) -> torch.Tensor:
    """One random unit direction per text, independent of K, M and distance: [N, d]."""
    out = torch.empty(n, d)
    for i in range(n):
        g = torch.Generator().manual_seed(seed * 7_919 + i)
        out[i] = torch.randn(d, generator=g)
    return out / out.norm(dim=1, keepdim=True)


@torch.no_grad()
def mean_difference(lm, layer: int, path_a: str, path_b: str, windows: int = 64, seq_len: int = 32) -> torch.Tensor:
    """Unit vector along mean residual(text A) - mean residual(text B) at the layer, position 0 left out: [d]."""
    from ..corpus import load_corpus_text
    from ..targets import residuals_of_tokens, tokenize_windows

    means = []
    for path in (path_a, path_b):
        w = tokenize_windows(lm, load_corpus_text(path), seq_len)
        h = residuals_of_tokens(lm, w.tokens[:windows], layer)  # [n, T, d]
        means.append(h[:, 1:].mean((0, 1)))
    diff = means[0] - means[1]
    if not diff.norm() > 0:
        raise UserError("the two direction corpora give the same mean residual: no direction")
    return diff / diff.norm()


def build_targets(lm, layer: int, cfg: SteerConfig, texts: Texts, donors: Texts | None, frame: TextFrame,
                  direction: torch.Tensor | None = None) -> SteerTargets:
    """The condition's problems for this frame (one template per text)."""
    k, n = frame.soft, texts.tokens.shape[0]
    own = texts.own_tokens(k)
    clean = frame_residual_of_tokens(lm.model, layer, frame, own)  # [N, P, d]
    if cfg.kind == "real":
        source = donors.own_tokens(k)
        target = frame_residual_of_tokens(lm.model, layer, frame, source)
        return SteerTargets(frame, target, own, source, [None] * n, list(range(n)))
    if cfg.kind == "random":
        g = torch.Generator().manual_seed(cfg.seed + 31)
        noise = torch.randn(clean.shape, generator=g)
        target = noise / noise.norm(dim=-1, keepdim=True) * clean.norm(dim=-1, keepdim=True)
        return SteerTargets(frame, target, own, None, [None] * n, list(range(n)))
    u = random_directions(n, clean.shape[-1], cfg.seed) if direction is None else direction.expand(n, -1)
    rows, coef, text = [], [], []
    for i in range(n):
        for c in cfg.coefficients:
            rows.append(clean[i] + c * clean[i].norm(dim=-1, keepdim=True) * u[i])
            coef.append(c)
            text.append(i)
    idx = torch.tensor(text)
    return SteerTargets(frame.select(idx), torch.stack(rows), own[idx], None, coef, text)
