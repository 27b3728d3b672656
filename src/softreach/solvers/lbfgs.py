"""Per-problem L-BFGS: each problem its own history and its own backtracking line search, batched.

Every engine step evaluates one trial point per problem. A problem accepts its trial when the loss fell enough
(Armijo on the step actually taken, after the norm clip) or when it has just (re)started; it then stores the
pair (s, y) if the curvature is positive, and draws a new direction from its history by the two-loop recursion.
Otherwise it halves its trial step along the same direction. With no history the direction is the negative
gradient scaled to a root mean square of lr per coordinate (the size of Adam's first step), so lr and the plateau
schedule's halvings mean what they mean for Adam; with history the trial step is 1. Measured on SmolLM2 at budget
1 it loses to Adam (the README's solver study): it stays a choice for comparison and for smooth problems.
"""
from __future__ import annotations

import torch

HISTORY = 10  # stored (s, y) pairs per problem
ARMIJO = 1e-4  # sufficient decrease: loss <= f + ARMIJO * <g, x_new - x>
MIN_STEP = 2.0 ** -20  # a trial step this small resets the problem's history (the direction was useless)


def _dot(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # [B, ...] x [B, ...] -> [B]
    return (a * b).flatten(1).sum(1)


def _expand(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:  # [B] -> [B, 1, ...]
    return v.view(-1, *([1] * (like.dim() - 1)))


class LBFGS:
    def init_state(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        b, n = x.shape[0], x[0].numel()
        return {"x": x.clone(), "f": torch.zeros(b, device=x.device), "g": torch.zeros_like(x),
                "d": torch.zeros_like(x), "t": torch.ones(b, device=x.device),
                "s": torch.zeros(b, HISTORY, n, device=x.device), "y": torch.zeros(b, HISTORY, n, device=x.device),
                "pairs": torch.zeros(b, dtype=torch.long, device=x.device),
                "fresh": torch.ones(b, dtype=torch.bool, device=x.device)}

    def step(self, state, x, loss, grad, step, lr):
        st = state
        lr = lr.to(x.device)
        loss = loss.to(x.device)
        moved = x - st["x"]
        accept = st["fresh"] | (loss <= st["f"] + ARMIJO * _dot(st["g"], moved).clamp_max(0.0))
        # an accepted step adds its curvature pair (when positive): s = x_new - x, y = g_new - g
        s, y = moved.flatten(1), (grad - st["g"]).flatten(1)
        sy = (s * y).sum(1)
        store = accept & ~st["fresh"] & (sy > 1e-10 * (y * y).sum(1))
        for key, new in (("s", s), ("y", y)):
            st[key] = torch.where(_expand(store, st[key]), torch.cat([st[key][:, 1:], new.unsqueeze(1)], 1), st[key])
        st["pairs"] = torch.where(store, (st["pairs"] + 1).clamp_max(HISTORY), st["pairs"])
        # accepted rows move to x and draw a new direction; the others halve their trial step
        acc = _expand(accept, x)
        st["x"], st["g"] = torch.where(acc, x, st["x"]), torch.where(acc, grad, st["g"])
        st["f"] = torch.where(accept, loss, st["f"])
        st["t"] = torch.where(accept, 1.0, st["t"] / 2)
        stuck = st["t"] < MIN_STEP  # backtracked to nothing: drop the history, start again from the gradient
        st["pairs"] = torch.where(stuck, 0, st["pairs"])
        st["t"] = torch.where(stuck, 1.0, st["t"])
        direction = self._direction(st, lr)
        new_dir = accept | stuck
        st["d"] = torch.where(_expand(new_dir, x), direction, st["d"])
        st["fresh"] = torch.zeros_like(st["fresh"])
        return st["x"] + _expand(st["t"], x) * st["d"]

    def _direction(self, st, lr):
        """-H g by the two-loop recursion over each row's own pairs [B, T, ...]; rows without pairs (or whose
        result is no descent direction) get -g scaled to a root mean square of lr per coordinate."""
        g = st["g"]
        q = g.flatten(1).clone()
        alpha = torch.zeros(q.shape[0], HISTORY, device=q.device)
        valid = torch.arange(HISTORY, device=q.device) >= HISTORY - st["pairs"].unsqueeze(1)  # [B, m]
        rho = torch.where(valid, 1.0 / (st["s"] * st["y"]).sum(2).where(valid, 1.0), 0.0)  # [B, m]
        for j in reversed(range(HISTORY)):
            alpha[:, j] = rho[:, j] * (st["s"][:, j] * q).sum(1)
            q -= alpha[:, j : j + 1] * st["y"][:, j]
        s_last, y_last = st["s"][:, -1], st["y"][:, -1]
        gamma = torch.where(st["pairs"] > 0, (s_last * y_last).sum(1) / (y_last * y_last).sum(1).clamp_min(1e-30), 1.0)
        r = gamma.unsqueeze(1) * q
        for j in range(HISTORY):
            beta = rho[:, j] * (st["y"][:, j] * r).sum(1)
            r += (alpha[:, j] - beta).unsqueeze(1) * st["s"][:, j]
        d = -r.view_as(g)
        rms = g.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-30)
        plain = -g * _expand(lr / rms, g)
        use_plain = (st["pairs"] == 0) | (_dot(d, g) >= 0)
        return torch.where(_expand(use_plain, g), plain, d)

    def restart(self, state, rows, x):
        """Rows sent back to their best iterate forget their history and accept that point unconditionally."""
        rows = rows.to(x.device)
        state["pairs"] = torch.where(rows, 0, state["pairs"])
        state["fresh"] = state["fresh"] | rows
