"""Random-token baselines: the floor (how close uniformly random real tokens already get to a target) and, for
targets real tokens made, the near miss (those tokens with one slot wrong)."""
from __future__ import annotations

import torch

from .frame import TextFrame, frame_residual_of_tokens
from .metrics import cos_per_position
from .models import LoadedModel
from .targets import residuals_of_tokens


@torch.no_grad()
def cos_of_draws(lm: LoadedModel, layer: int, ids: torch.Tensor, targets: torch.Tensor, ablation: str = "none",
                 frame: TextFrame | None = None) -> torch.Tensor:
    """Cosine per position [draws, N, P] of token draws ids [draws, N, T] to targets [N, P, d]: the tokens are the
    whole input (P = T), or, with a frame, fill its K = T slots (P: the frame's positions)."""
    draws, n, t = ids.shape
    if frame is None:
        achieved = residuals_of_tokens(lm, ids.reshape(draws * n, t), layer, ablation)
    else:
        achieved = frame_residual_of_tokens(lm.model, layer, frame.tile(draws), ids.reshape(draws * n, t), ablation)
    achieved = achieved.view(draws, n, *targets.shape[1:])
    return cos_per_position(achieved, targets.float().unsqueeze(0).expand_as(achieved))


@torch.no_grad()
def random_token_floor(lm: LoadedModel, targets: torch.Tensor, layer: int, seed: int, draws: int = 4,
                       ablation: str = "none", frame: TextFrame | None = None) -> dict:
    """Cosine of random-token inputs to each target, averaged over `draws` draws.

    targets: [N, T, d]. Returns {"cos": [N], "cos_no_pos0": [N], "tokens": [N, draws, T] the draws (saved as
    `floor_tokens`, so `softreach verify` can recompute the floor)}. With a `frame` (fixed text around K soft slots)
    the random tokens fill the slots, targets are [N, P, d] at its positions and there is no "cos_no_pos0".
    """
    n, t = targets.shape[0], targets.shape[1] if frame is None else frame.soft
    vocab = lm.ordinary_token_ids()
    g = torch.Generator().manual_seed(seed + 104729)
    ids = vocab[torch.randint(0, vocab.numel(), (draws, n, t), generator=g)]  # [draws, N, T]
    cos = cos_of_draws(lm, layer, ids, targets, ablation, frame)  # [draws, N, T]
    out = {"cos": cos.mean(2).mean(0), "tokens": ids.transpose(0, 1).contiguous()}
    if frame is None and t > 1:
        out["cos_no_pos0"] = cos[:, :, 1:].mean(2).mean(0)
    return out


def one_slot_wrong(source: torch.Tensor, vocab: torch.Tensor, draws: int, generator: torch.Generator) -> torch.Tensor:
    """source [N, K] ids -> [draws, N, K]: each draw of each row with one slot (drawn uniformly) holding another
    token of `vocab` (sorted ids), drawn uniformly among those that differ from the source token there."""
    n, k = source.shape
    ids = source.long().cpu().unsqueeze(0).repeat(draws, 1, 1)  # [draws, N, K]
    slot = torch.randint(0, k, (draws, n, 1), generator=generator)
    right = ids.gather(2, slot)  # [draws, N, 1]
    pick = torch.randint(0, vocab.numel() - 1, (draws, n, 1), generator=generator)
    pick = pick + (pick >= torch.searchsorted(vocab, right)).long() * torch.isin(right, vocab).long()  # skip the source
    return ids.scatter_(2, slot, vocab[pick])


@torch.no_grad()
def near_miss(lm: LoadedModel, layer: int, frame: TextFrame, source: torch.Tensor, targets: torch.Tensor,
              seed: int, draws: int = 16) -> dict:
    """The known answer with one slot wrong (one_slot_wrong over the ordinary tokens, `draws` draws per problem):
    source [N, K] tokens whose residuals are targets [N, P, d] at the frame's positions. Returns {"cos": [N] the
    mean cosine, "tokens": [N, draws, K] the draws (saved as `near_miss_tokens` for `softreach verify`)}.

    What a search that found all but one of the tokens would score: the scale for reading a discrete rung's
    cosine on real targets (a rung below it has done worse than all-but-one).
    """
    ids = one_slot_wrong(source, lm.ordinary_token_ids(), draws, torch.Generator().manual_seed(seed + 130363))
    cos = cos_of_draws(lm, layer, ids, targets, frame=frame)  # [draws, N, P]
    return {"cos": cos.mean(2).mean(0), "tokens": ids.transpose(0, 1).contiguous()}
