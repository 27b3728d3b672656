"""The functional check at the steered positions: does the model continue from the reached residuals as it
would from the target?

The whole input runs to the logits twice: once as it is, once with the output of block L-1 replaced by
the target at the steered positions (the rest of the text unchanged). KL(target's next-token distribution
|| reached's) and top-1 agreement are taken at the steered positions.
"""
from __future__ import annotations

import torch

from ..downstream import kl_and_top1
from ..frame import TextFrame
from ..residual import decoder_blocks


@torch.no_grad()
def logits_at_positions(model, layer: int, frame: TextFrame, soft: torch.Tensor,
                        patch: torch.Tensor | None = None) -> torch.Tensor:
    """Next-token log-probabilities at the frame's positions: soft [R, K, d] -> [R, P, V] float32 on the CPU;
    with `patch` [R, P, d] the layer-L residual at those positions is replaced by it."""
    pos = frame.positions.to(soft.device)
    handle = None
    if patch is not None:
        def replace(_module, _inputs, output):
            h = output[0] if isinstance(output, tuple) else output
            h = h.clone()
            h[:, pos] = patch.to(h.device, h.dtype)
            return (h,) + tuple(output[1:]) if isinstance(output, tuple) else h

        handle = decoder_blocks(model)[layer - 1].register_forward_hook(replace)
    try:
        logits = model(inputs_embeds=frame.full_input(model, soft), use_cache=False).logits[:, pos]
    finally:
        if handle is not None:
            handle.remove()
    return torch.log_softmax(logits.float(), -1).cpu()


@torch.no_grad()
def next_token_agreement(model, layer: int, frame: TextFrame, soft: torch.Tensor, target: torch.Tensor,
                         batch_size: int = 8) -> dict[str, torch.Tensor]:
    """KL (nats, mean over steered positions) and top-1 agreement per row: {"kl": [R], "top1": [R]}."""
    dev = next(model.parameters()).device
    kl, top1 = [], []
    for lo in range(0, frame.rows, batch_size):
        sub = frame.select(slice(lo, lo + batch_size))
        x = soft[lo : lo + batch_size].to(dev).float()
        p = logits_at_positions(model, layer, sub, x, target[lo : lo + batch_size])
        q = logits_at_positions(model, layer, sub, x)
        kl_pos, top1_pos = kl_and_top1(p, q)  # [b, P]
        kl.append(kl_pos.mean(1))
        top1.append(top1_pos.mean(1))
    return {"kl": torch.cat(kl), "top1": torch.cat(top1)}
