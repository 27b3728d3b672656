"""The solvers behind `--solver`: each on a problem with a known answer, and inside the engine (resume ==
uninterrupted; batched == alone with early stopping and the norm cap: test_budget.py)."""
import pytest
import torch
from conftest import MemoryCheckpoint, token_targets

from softreach.budget import mean_token_norm
from softreach.errors import UserError
from softreach.optimize import OptimConfig, initial_prompts, optimise
from softreach.random_models import random_model
from softreach.solvers.adam import Adam
from softreach.solvers.lbfgs import LBFGS


def _quadratic(b=3, n=6, seed=0):
    """Per-row convex quadratics f(x) = 0.5 (x - c)^T A (x - c), condition number ~100: [B, 1, n] problems."""
    g = torch.Generator().manual_seed(seed)
    q, _ = torch.linalg.qr(torch.randn(b, n, n, generator=g))
    a = q @ torch.diag_embed(torch.logspace(0, 2, n).expand(b, n)) @ q.transpose(1, 2)
    c = torch.randn(b, 1, n, generator=g)

    def f_and_grad(x):
        r = (x - c).squeeze(1)
        ar = (a @ r.unsqueeze(-1)).squeeze(-1)
        return 0.5 * (r * ar).sum(1), ar.unsqueeze(1)

    return f_and_grad, c


def _run(solver, f_and_grad, x, steps, lr):
    state = solver.init_state(x)
    best = torch.full((x.shape[0],), float("inf"))
    for k in range(steps):
        loss, grad = f_and_grad(x)
        best = torch.minimum(best, loss)
        x = solver.step(state, x, loss, grad, k, torch.full((x.shape[0],), lr))
    return best


def test_lbfgs_solves_a_quadratic_where_adam_does_not_in_the_same_evaluations():
    f_and_grad, c = _quadratic()
    x0 = torch.zeros_like(c)
    start = f_and_grad(x0)[0]
    lbfgs = _run(LBFGS(), f_and_grad, x0, 40, lr=0.1)
    adam = _run(Adam(), f_and_grad, x0, 40, lr=0.1)
    assert (lbfgs < 1e-8 * start).all(), lbfgs / start  # 6 dimensions, a history of 10: exact within ~2n steps
    assert (adam > 1e-4 * start).all(), adam / start


def test_lbfgs_rows_do_not_see_each_other():
    f_and_grad, c = _quadratic(b=4)
    x0 = torch.randn(c.shape, generator=torch.Generator().manual_seed(1))
    batched = _run(LBFGS(), f_and_grad, x0, 15, lr=0.3)
    for i in range(4):
        def one(x, i=i):
            full = x0.clone()
            full[i] = x[0]
            loss, grad = f_and_grad(full)
            return loss[i : i + 1], grad[i : i + 1]

        alone = _run(LBFGS(), one, x0[i : i + 1], 15, lr=0.3)
        torch.testing.assert_close(alone[0], batched[i], rtol=1e-5, atol=1e-10)


def test_lbfgs_in_the_engine_improves_the_match_as_adam_does():
    lm = random_model("gpt2")
    target = token_targets(lm, 3)
    init = initial_prompts([(i, 0) for i in range(3)], 6, lm.d_model, 1.0, seed=0)
    best = {}
    for solver in ("adam", "lbfgs"):
        res = optimise(lm, 2, target, init, OptimConfig(steps=150, lr=0.05, solver=solver))
        best[solver] = torch.nan_to_num(res.cos_curve, nan=-2.0).max(1).values
        assert (best[solver] > res.cos_curve[:, 0] + 0.1).all(), solver
    assert best["lbfgs"].median() > 0.9, best


def test_lbfgs_resume_is_exact_across_pruning():
    """Raw random targets a tiny model cannot reach within a small cap: still improving when interrupted."""
    lm = random_model("llama")
    target = (torch.randn(3, 6, lm.d_model, generator=torch.Generator().manual_seed(5)) * 3).repeat_interleave(2, 0)
    cap = 0.3 * mean_token_norm(lm)
    init = initial_prompts([(i, r) for i in range(3) for r in range(2)], 6, lm.d_model, 1.0, seed=0)
    cfg = OptimConfig(steps=160, lr=0.05, window=10, tol=1e-4, mse_weight=0.01, prune_after=15, solver="lbfgs")
    straight = optimise(lm, 2, target, init, cfg, group=2, max_norm=cap)
    assert int(straight.steps_run.max()) > 50
    ckpt = MemoryCheckpoint(every=7, stop_after=50)
    with pytest.raises(KeyboardInterrupt):
        optimise(lm, 2, target, init, cfg, group=2, checkpoint=ckpt, max_norm=cap)
    ckpt.stop_after = None
    resumed = optimise(lm, 2, target, init, cfg, group=2, checkpoint=ckpt, max_norm=cap)
    torch.testing.assert_close(resumed.soft_prompt, straight.soft_prompt, rtol=0, atol=0)
    torch.testing.assert_close(resumed.loss_curve, straight.loss_curve, rtol=0, atol=0, equal_nan=True)


def test_lbfgs_restart_forgets_the_history_of_that_row_only():
    f_and_grad, c = _quadratic(b=2)
    x = torch.zeros_like(c)
    solver, lr = LBFGS(), torch.full((2,), 0.3)
    state = solver.init_state(x)
    for k in range(5):
        loss, grad = f_and_grad(x)
        x = solver.step(state, x, loss, grad, k, lr)
    assert (state["pairs"] > 0).all()
    kept = {k: v.clone() for k, v in state.items()}
    best = torch.randn(c.shape, generator=torch.Generator().manual_seed(2))
    x[0] = best[0]
    solver.restart(state, torch.tensor([True, False]), x)
    loss, grad = f_and_grad(x)
    nxt = solver.step(state, x, loss, grad, 5, lr)
    plain = best[0] - 0.3 * grad[0] / grad[0].pow(2).mean().sqrt()  # restarted: accepted, an Adam-sized step
    torch.testing.assert_close(nxt[0], plain)
    assert int(state["pairs"][0]) == 0
    expected = solver.step(kept, x, loss, grad, 5, lr)  # the other row as if nothing had happened
    torch.testing.assert_close(nxt[1], expected[1])


def test_an_adam_checkpoint_from_before_the_solver_modules_resumes():
    lm = random_model("gpt2")
    target = token_targets(lm, 2)
    init = initial_prompts([(i, 0) for i in range(2)], 6, lm.d_model, 1.0, seed=0)
    cfg = OptimConfig(steps=20, lr=0.05)
    straight = optimise(lm, 2, target, init, cfg)
    ckpt = MemoryCheckpoint(every=5, stop_after=10)
    with pytest.raises(KeyboardInterrupt):
        optimise(lm, 2, target, init, cfg, checkpoint=ckpt)
    old = ckpt.saved[0]  # the old layout: Adam's moments at the top level
    old["m"], old["v"] = old["solver"]["m"], old["solver"]["v"]
    del old["solver"]
    ckpt.stop_after = None
    resumed = optimise(lm, 2, target, init, cfg, checkpoint=ckpt)
    torch.testing.assert_close(resumed.loss_curve, straight.loss_curve, rtol=0, atol=0)


def test_relative_steps_belong_to_adam_only():
    with pytest.raises(UserError, match="relative"):
        OptimConfig(solver="lbfgs", step_rule="relative")
    with pytest.raises(UserError):
        OptimConfig(solver="newton")
