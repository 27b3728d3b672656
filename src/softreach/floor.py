"""The random-token floor: how close uniformly random real tokens already get to a target."""
from __future__ import annotations

import torch

from .metrics import cos_per_position
from .models import LoadedModel
from .targets import residuals_of_tokens


def ordinary_token_ids(lm: LoadedModel) -> torch.Tensor:
    """Token ids a user could send: the tokenizer's vocabulary less its special tokens: [V']."""
    n = min(len(lm.tokenizer), lm.embedding_matrix.shape[0])
    special = torch.tensor(sorted(set(getattr(lm.tokenizer, "all_special_ids", []) or [])), dtype=torch.long)
    ids = torch.arange(n)
    return ids[~torch.isin(ids, special)] if special.numel() else ids


@torch.no_grad()
def random_token_floor(lm: LoadedModel, targets: torch.Tensor, layer: int, seed: int, draws: int = 4,
                       ablation: str = "none") -> dict:
    """Cosine of random-token inputs to each target, averaged over `draws` draws.

    targets: [N, T, d]. Returns {"cos": [N], "cos_no_pos0": [N]}.
    """
    n, t, _ = targets.shape
    vocab = ordinary_token_ids(lm)
    g = torch.Generator().manual_seed(seed + 104729)
    ids = vocab[torch.randint(0, vocab.numel(), (draws, n, t), generator=g)]  # [draws, N, T]
    achieved = residuals_of_tokens(lm, ids.view(draws * n, t), layer, ablation).view(draws, n, t, -1)
    cos = cos_per_position(achieved, targets.float().unsqueeze(0).expand_as(achieved))  # [draws, N, T]
    out = {"cos": cos.mean(2).mean(0)}
    if t > 1:
        out["cos_no_pos0"] = cos[:, :, 1:].mean(2).mean(0)
    return out
