"""The step rules of the batched engine, one module per method behind one interface (issue 17).

A solver turns each problem's gradient at the point just evaluated into the next point to evaluate. The engine
(`optimize.py`) owns everything else: batching, each problem's best iterate, the curves, the convergence test,
early stopping, the plateau schedule and checkpoints. So every solver gets resume, early stopping and
batched == alone for free, as long as its state is a dict of tensors with one row per problem and each row's
update reads only its own row.

`--solver adam` (the default; `--step-rule` picks its variant) and `--solver lbfgs` (per-problem L-BFGS with
its own history and backtracking line search) are the choices. The solver study's other methods (Gauss-Newton
polish, a position-by-position start, continuation from larger budgets, Riemannian Adam) were measured with
scripts and lost to the default; the README's solver study has their figures.
"""
from __future__ import annotations

from typing import Protocol

import torch

from ..config import OptimConfig


class Solver(Protocol):
    def init_state(self, x: torch.Tensor) -> dict[str, torch.Tensor]:
        """Per-problem state for the starting points x [B, T, ...]: tensors whose first dimension is B."""

    def step(self, state: dict, x: torch.Tensor, loss: torch.Tensor, grad: torch.Tensor, step: int,
             lr: torch.Tensor) -> torch.Tensor:
        """The next point to evaluate [B', T, ...] (the engine then applies the parameter's projection and
        clips to the norm cap), from the point x just evaluated, its loss [B'] (on the CPU) and gradient
        (the feasible one, except with step_rule projected); lr [B'] is the schedule's learning rate per row."""

    def restart(self, state: dict, rows: torch.Tensor, x: torch.Tensor) -> None:
        """The plateau schedule sends the rows in the mask `rows` [B'] back to their best iterates x (the
        engine's next point there); the solver may reset their state."""


def make_solver(cfg: OptimConfig) -> Solver:
    from .adam import Adam
    from .lbfgs import LBFGS

    if cfg.solver == "lbfgs":
        return LBFGS()
    return Adam(relative=cfg.step_rule == "relative")
