"""Adam with a learning rate per problem (torch.optim.Adam's defaults otherwise): the default solver.

Adam is per element, so each problem follows the trajectory it would follow alone. With step_rule relative, each
input vector's step is also multiplied by its own root mean square (Adafactor's relative step size, per vector),
so lr is a fraction of the vector's size rather than an absolute length.
"""
from __future__ import annotations

import torch

_BETA1, _BETA2, _EPS = 0.9, 0.999, 1e-8


class Adam:
    def __init__(self, relative: bool = False):
        self.relative = relative

    def init_state(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"m": torch.zeros_like(x), "v": torch.zeros_like(x)}

    def step(self, state, x, loss, grad, step, lr):
        m, v = state["m"], state["v"]
        m.mul_(_BETA1).add_(grad, alpha=1 - _BETA1)
        v.mul_(_BETA2).addcmul_(grad, grad, value=1 - _BETA2)
        denom = (v / (1 - _BETA2 ** (step + 1))).sqrt_().add_(_EPS)
        lr = (lr / (1 - _BETA1 ** (step + 1))).to(x.device).view(-1, *([1] * (x.dim() - 1)))
        if self.relative:  # [B, T, 1] per-vector RMS; floored so a vector at 0 can still move
            lr = lr * x.pow(2).mean(-1, keepdim=True).sqrt().clamp_min(1e-3)
        return x.addcdiv(m * lr, denom, value=-1.0)

    def restart(self, state, rows, x):
        """Adam keeps its moments: the smaller learning rate alone changes the steps (the rule since issue 10)."""
