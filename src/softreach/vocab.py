"""Vocabulary density: the p% most frequent corpus tokens, the allowed set of a restricted discrete rung."""
from __future__ import annotations

import math

import torch

from .config import vocab_percents


def check_percent(percent: float) -> float:
    """One vocabulary percent, checked as the configs check theirs."""
    return vocab_percents(float(percent))[0]


def token_counts(lm, corpus) -> torch.Tensor:
    """Count of every token id in the corpus: [V] int64. corpus: text (tokenised without special
    tokens) or token ids (any shape)."""
    if isinstance(corpus, str):
        corpus = lm.tokenizer(corpus, add_special_tokens=False, return_attention_mask=False)["input_ids"]
    ids = torch.as_tensor(corpus, dtype=torch.long).flatten().cpu()
    size = max(int(lm.embedding_matrix.shape[0]), len(lm.tokenizer), int(ids.max()) + 1 if ids.numel() else 0)
    return torch.bincount(ids, minlength=size)


def frequent_tokens(lm, corpus, percent: float) -> torch.Tensor:
    """The ceil(percent% of |ordinary vocabulary|) most frequent ordinary tokens of the corpus: [M] int64,
    most frequent first (equal counts, unseen tokens included, by ascending id). 100 = every ordinary token."""
    percent = check_percent(percent)
    ordinary = lm.ordinary_token_ids().cpu()  # [V'] ascending
    counts = token_counts(lm, corpus)[ordinary]  # [V']
    keep = max(1, min(ordinary.numel(), math.ceil(ordinary.numel() * percent / 100 - 1e-9)))
    order = torch.sort(-counts, stable=True).indices  # stable: ties stay in ascending id order
    return ordinary[order[:keep]]
