"""Real targets: windows of T tokens drawn reproducibly from a corpus, and their layer-L residuals."""
from __future__ import annotations

from dataclasses import dataclass

import torch

from .errors import UserError
from .models import LoadedModel
from .residual import residual_at


@dataclass
class TokenWindows:
    """Non-overlapping windows of a tokenised corpus: tokens [n_windows, T]."""

    tokens: torch.Tensor

    @property
    def count(self) -> int:
        return self.tokens.shape[0]


def tokenize_windows(lm: LoadedModel, text: str, seq_len: int) -> TokenWindows:
    """Cut the corpus into non-overlapping windows of `seq_len` tokens (no special tokens added)."""
    check_seq_len(lm, seq_len)
    ids = lm.tokenizer(text, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    n = len(ids) // seq_len
    if n == 0:
        raise UserError(f"corpus too short: {len(ids)} tokens, fewer than one window of {seq_len}")
    return TokenWindows(torch.tensor(ids[: n * seq_len], dtype=torch.long).view(n, seq_len))


def check_seq_len(lm: LoadedModel, seq_len: int) -> None:
    if seq_len < 1:
        raise UserError(f"--seq-len must be at least 1, got {seq_len}")
    if lm.max_positions is not None and seq_len > lm.max_positions:
        raise UserError(f"--seq-len {seq_len} exceeds the model's {lm.max_positions} positions")


def sample_windows(windows: TokenWindows, count: int, seed: int, exclude: torch.Tensor | None = None) -> torch.Tensor:
    """Indices of `count` distinct windows drawn by seed: [count]. `exclude` removes indices first."""
    if count < 1:
        raise UserError(f"--targets must be at least 1, got {count}")
    pool = torch.arange(windows.count)
    if exclude is not None and exclude.numel():
        pool = pool[~torch.isin(pool, exclude)]
    if count > pool.numel():
        raise UserError(f"asked for {count} targets but the corpus has only {pool.numel()} windows of "
                        f"{windows.tokens.shape[1]} tokens; use fewer targets, a shorter --seq-len or a larger corpus")
    g = torch.Generator().manual_seed(seed)
    return pool[torch.randperm(pool.numel(), generator=g)[:count]]


@torch.no_grad()
def residuals_of_tokens(lm: LoadedModel, tokens: torch.Tensor, layer: int, ablation: str = "none",
                        batch_size: int = 64) -> torch.Tensor:
    """Layer-L residuals of token windows: tokens [N, T] -> [N, T, d] float32 on CPU."""
    out = []
    for start in range(0, tokens.shape[0], batch_size):
        ids = tokens[start : start + batch_size].to(lm.device)
        out.append(residual_at(lm.model, layer, input_ids=ids, ablation=ablation).float().cpu())
    return torch.cat(out)


def real_targets(lm: LoadedModel, windows: TokenWindows, layer: int, count: int, seed: int,
                 ablation: str = "none") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `count` windows and return (tokens [N, T], targets [N, T, d], window indices [N])."""
    idx = sample_windows(windows, count, seed)
    tokens = windows.tokens[idx]
    return tokens, residuals_of_tokens(lm, tokens, layer, ablation), idx


def corpus_targets(lm: LoadedModel, corpus: str, seq_len: int, layer: int, count: int, seed: int):
    """The one path from a corpus to real targets: (windows, tokens [N, T], targets [N, T, d], indices [N])."""
    from .corpus import load_corpus_text

    windows = tokenize_windows(lm, load_corpus_text(corpus), seq_len)
    tokens, target, idx = real_targets(lm, windows, layer, count, seed)
    return windows, tokens, target, idx


@torch.no_grad()
def mean_residual(lm: LoadedModel, windows: TokenWindows, layer: int, count: int, seed: int) -> torch.Tensor:
    """Corpus-mean residual per position over up to `count` windows: [T, d]."""
    idx = sample_windows(windows, min(count, windows.count), seed + 7919)
    return residuals_of_tokens(lm, windows.tokens[idx], layer).mean(0)
