"""Functional check: does a reached layer-L state make the model predict what the target state predicts?

`logits_from_residual` runs the rest of the model from a layer-L residual: a forward hook replaces
the output of block L-1 with the given residual, the remaining blocks, the final norm and the LM
head run as usual (the blocks before L-1 run on zero inputs and are discarded). `next_token_agreement`
compares the next-token distributions continued from a reached state and from its target.
"""
from __future__ import annotations

import torch

from .models import LoadedModel
from .residual import check_layer, decoder_blocks


@torch.no_grad()
def logits_from_residual(lm: LoadedModel, layer: int, residual: torch.Tensor, batch_size: int = 16) -> torch.Tensor:
    """Next-token logits when the layer-L residual is `residual`: [N, T, d] -> [N, T, V] float32 on CPU."""
    blocks = decoder_blocks(lm.model)
    check_layer(layer, len(blocks))
    out = []
    for lo in range(0, residual.shape[0], batch_size):
        h = residual[lo : lo + batch_size].to(lm.device, torch.float32)  # [b, T, d]

        def replace(_module, _inputs, output, h=h):
            if isinstance(output, tuple):
                return (h,) + tuple(output[1:])
            return h

        handle = blocks[layer - 1].register_forward_hook(replace)
        try:
            logits = lm.model(inputs_embeds=torch.zeros_like(h), use_cache=False).logits  # [b, T, V]
        finally:
            handle.remove()
        out.append(logits.float().cpu())
    return torch.cat(out)


@torch.no_grad()
def next_token_agreement(lm: LoadedModel, layer: int, reached: torch.Tensor, target: torch.Tensor,
                         batch_size: int = 16) -> dict:
    """KL(target's next-token distribution || reached's) and top-1 agreement, per problem.

    reached, target: [N, T, d] layer-L residuals. Returns tensors [N] (kl, kl_no_pos0, top1,
    top1_no_pos0; KL in nats, averaged over positions) and kl_per_position [N, T].
    """
    kl_rows, top1_rows = [], []
    for lo in range(0, reached.shape[0], batch_size):
        p_log = torch.log_softmax(logits_from_residual(lm, layer, target[lo : lo + batch_size], batch_size), -1)
        q_log = torch.log_softmax(logits_from_residual(lm, layer, reached[lo : lo + batch_size], batch_size), -1)
        kl, top1 = kl_and_top1(p_log, q_log)
        kl_rows.append(kl)
        top1_rows.append(top1)
    kl, top1 = torch.cat(kl_rows), torch.cat(top1_rows)  # [N, T]
    out = {"kl": kl.mean(1), "top1": top1.mean(1), "kl_per_position": kl}
    if kl.shape[1] > 1:
        out["kl_no_pos0"] = kl[:, 1:].mean(1)
        out["top1_no_pos0"] = top1[:, 1:].mean(1)
    return out


def kl_and_top1(p_log: torch.Tensor, q_log: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """KL(p || q) in nats (clamped at 0) and top-1 agreement per position, from log-probabilities [..., V]:
    ([...], [...])."""
    return (p_log.exp() * (p_log - q_log)).sum(-1).clamp_min(0), (p_log.argmax(-1) == q_log.argmax(-1)).float()
