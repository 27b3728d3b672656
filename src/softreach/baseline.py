"""The research log's method, kept as the benchmark baseline: one problem at a time, a full forward
with `output_hidden_states=True` (every layer, final norm and LM head), Adam lr 0.01."""
from __future__ import annotations

import torch

from .metrics import reachability_loss
from .models import LoadedModel


def log_method_steps(lm: LoadedModel, layer: int, target: torch.Tensor, init: torch.Tensor, steps: int,
                     lr: float = 0.01) -> torch.Tensor:
    """Optimise one soft prompt the log's way. target, init: [1, T, d]. Returns the prompt after `steps`."""
    soft = torch.nn.Parameter(init.clone().to(lm.device))
    target = target.to(lm.device)
    opt = torch.optim.Adam([soft], lr=lr)
    for _ in range(steps):
        hidden = lm.model(inputs_embeds=soft, output_hidden_states=True).hidden_states[layer]
        loss, _ = reachability_loss(hidden, target)
        opt.zero_grad(set_to_none=True)
        loss.sum().backward()
        opt.step()
    return soft.detach()
