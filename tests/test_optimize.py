import pytest
from conftest import MemoryCheckpoint, token_targets
import torch

from softreach.errors import UserError
from softreach.optimize import OptimConfig, initial_prompts, optimise


class _LastState(MemoryCheckpoint):
    def save(self, chunk, state):
        self.state = state


def test_batched_trajectories_equal_one_at_a_time(tiny_lm):
    cfg = OptimConfig(steps=25, lr=0.05)
    target = token_targets(tiny_lm, 4)
    init = initial_prompts([(i, 0) for i in range(4)], 6, tiny_lm.d_model, 1.0, seed=3)
    batched = optimise(tiny_lm, 2, target, init, cfg)
    for i in range(4):
        alone = optimise(tiny_lm, 2, target[i : i + 1], init[i : i + 1], cfg)
        torch.testing.assert_close(batched.loss_curve[i], alone.loss_curve[0], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(batched.soft_prompt[i], alone.soft_prompt[0], rtol=1e-3, atol=1e-4)


def test_splitting_the_batch_gives_the_same_result(tiny_lm):
    target = token_targets(tiny_lm, 5)
    init = initial_prompts([(i, 0) for i in range(5)], 6, tiny_lm.d_model, 1.0, seed=0)
    whole = optimise(tiny_lm, 2, target, init, OptimConfig(steps=15, batch_size=64))
    split = optimise(tiny_lm, 2, target, init, OptimConfig(steps=15, batch_size=2))
    torch.testing.assert_close(whole.soft_prompt, split.soft_prompt, rtol=1e-3, atol=1e-4)
    torch.testing.assert_close(whole.cos_curve, split.cos_curve, rtol=1e-4, atol=1e-5)


def test_optimisation_improves_the_match(tiny_lm):
    target = token_targets(tiny_lm, 3)
    init = initial_prompts([(i, 0) for i in range(3)], 6, tiny_lm.d_model, 1.0, seed=0)
    res = optimise(tiny_lm, 2, target, init, OptimConfig(steps=150, lr=0.05))
    best = torch.nan_to_num(res.cos_curve, nan=-2.0).max(1).values  # problems may stop early
    assert (best > res.cos_curve[:, 0] + 0.1).all()
    assert best.median() > 0.9


def test_initial_prompts_do_not_depend_on_the_batch():
    a = initial_prompts([(0, 0), (1, 0), (1, 1)], 4, 8, 1.0, seed=5)
    b = initial_prompts([(1, 1)], 4, 8, 1.0, seed=5)
    torch.testing.assert_close(a[2], b[0])
    assert not torch.allclose(a[1], a[2])
    assert not torch.allclose(a, initial_prompts([(0, 0), (1, 0), (1, 1)], 4, 8, 1.0, seed=6))


def test_resumed_chunk_equals_uninterrupted(tiny_lm):
    cfg = OptimConfig(steps=20, lr=0.05)
    target = token_targets(tiny_lm, 3)
    init = initial_prompts([(i, 0) for i in range(3)], 6, tiny_lm.d_model, 1.0, seed=0)
    straight = optimise(tiny_lm, 2, target, init, cfg)
    ckpt = MemoryCheckpoint(every=5, stop_after=10)
    with pytest.raises(KeyboardInterrupt):
        optimise(tiny_lm, 2, target, init, cfg, checkpoint=ckpt)
    ckpt.stop_after = None
    resumed = optimise(tiny_lm, 2, target, init, cfg, checkpoint=ckpt)
    torch.testing.assert_close(resumed.soft_prompt, straight.soft_prompt, rtol=0, atol=0)
    torch.testing.assert_close(resumed.loss_curve, straight.loss_curve, rtol=0, atol=0)


def test_non_finite_targets_are_refused(tiny_lm):
    target = token_targets(tiny_lm, 2)
    target[0, 1, 3] = float("nan")
    with pytest.raises(UserError, match="non-finite"):
        optimise(tiny_lm, 2, target, torch.zeros_like(target), OptimConfig(steps=2))


@pytest.mark.parametrize("kwargs", [{"steps": 0}, {"lr": 0.0}, {"batch_size": 0}, {"mse_norm": "x"}])
def test_bad_settings_are_refused(kwargs):
    with pytest.raises(UserError):
        OptimConfig(**kwargs)


def test_cosine_schedule_is_a_function_of_the_step():
    cfg = OptimConfig(steps=11, lr=0.1, schedule="cosine", final_lr_frac=0.1)
    assert cfg.lr_at(0) == pytest.approx(0.1) and cfg.lr_at(10) == pytest.approx(0.01)
    assert cfg.lr_at(5) == pytest.approx(0.055)
    assert OptimConfig(steps=11, lr=0.1, schedule="constant").lr_at(7) == 0.1
    both = OptimConfig(steps=11, lr=0.1, schedule="plateau_cosine", final_lr_frac=0.1)
    assert [both.lr_at(k) for k in range(11)] == [cfg.lr_at(k) for k in range(11)]  # the envelope; halvings per row


def test_plateau_cosine_halves_stalled_rows_under_the_cosine_envelope():
    """A row that cannot gain (its start is its best) is halved and sent back to its best iterate, under the
    cosine envelope as under the plateau schedule; plain cosine never halves."""
    from softreach.random_models import random_model

    lm = random_model("llama")
    target = torch.randn(2, 6, lm.d_model, generator=torch.Generator().manual_seed(5)) * 3
    init = initial_prompts([(i, 0) for i in range(2)], 6, lm.d_model, 1.0, seed=0)
    kw = dict(steps=200, lr=0.05, window=10, tol=1e-4, mse_weight=0.01, early_stop=False)
    lr_seen = {}
    for schedule in ("plateau_cosine", "cosine"):
        ckpt = _LastState(every=200)
        optimise(lm, 2, target, init, OptimConfig(schedule=schedule, **kw), checkpoint=ckpt, max_norm=0.5)
        lr_seen[schedule] = ckpt.state["lr_scale"]
    assert (lr_seen["plateau_cosine"] < 1).any() and (lr_seen["cosine"] == 1).all(), lr_seen


def test_bfloat16_compute_tracks_float32(tiny_lm):
    target = token_targets(tiny_lm, 4)
    init = initial_prompts([(i, 0) for i in range(4)], 6, tiny_lm.d_model, 1.0, seed=0)
    f32 = optimise(tiny_lm, 2, target, init, OptimConfig(steps=100, lr=0.05, early_stop=False))
    bf16 = optimise(tiny_lm, 2, target, init, OptimConfig(steps=100, lr=0.05, dtype="bfloat16", early_stop=False))
    assert bf16.soft_prompt.dtype == torch.float32
    assert abs(float(f32.cos_curve[:, -1].median() - bf16.cos_curve[:, -1].median())) < 0.02
    assert tiny_lm.model.dtype == torch.float32  # the float32 model is untouched


def test_a_memory_budget_smaller_than_the_batch_gives_the_same_results(tiny_lm):
    from softreach.memory import batch_for_budget, problem_bytes

    target = token_targets(tiny_lm, 6)
    init = initial_prompts([(i, 0) for i in range(6)], 6, tiny_lm.d_model, 1.0, seed=0)
    per_problem = problem_bytes(tiny_lm, 2, 6)
    budget_mb = 2.5 * per_problem / 2**20  # room for two problems at a time
    assert batch_for_budget(tiny_lm, 2, 6, 64, int(budget_mb * 2**20)) == 2
    seen = []
    whole = optimise(tiny_lm, 2, target, init, OptimConfig(steps=10))
    split = optimise(tiny_lm, 2, target, init, OptimConfig(steps=10, memory_budget_mb=budget_mb),
                     progress=lambda n, _: seen.append(n))
    assert set(seen) == {2} and sum(seen) == 60  # three chunks of two problems, 10 steps each
    torch.testing.assert_close(whole.soft_prompt, split.soft_prompt, rtol=1e-3, atol=1e-4)


def test_pruned_restarts_leave_the_best_on_its_own_trajectory(tiny_lm):
    target = token_targets(tiny_lm, 2).repeat_interleave(3, dim=0)  # 2 targets x 3 restarts
    init = initial_prompts([(i, r) for i in range(2) for r in range(3)], 6, tiny_lm.d_model, 1.0, seed=0)
    full = optimise(tiny_lm, 2, target, init, OptimConfig(steps=20, lr=0.05), group=3)
    pruned = optimise(tiny_lm, 2, target, init, OptimConfig(steps=20, lr=0.05, prune_after=6), group=3)
    alive = ~torch.isnan(pruned.cos_curve[:, -1])
    assert alive.view(2, 3).sum(1).tolist() == [1, 1]
    best = full.loss_curve[:, 5].view(2, 3).argmin(1) + torch.tensor([0, 3])
    assert alive.nonzero().flatten().tolist() == best.tolist()
    torch.testing.assert_close(pruned.soft_prompt[best], full.soft_prompt[best], rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(pruned.cos_curve[best], full.cos_curve[best], rtol=1e-4, atol=1e-5)
    assert OptimConfig(steps=20, prune_after=6).problem_steps(2, 3) == 2 * (3 * 6 + 14)


def test_resume_across_the_pruning_step_is_exact(tiny_lm):
    cfg = OptimConfig(steps=20, lr=0.05, prune_after=7)
    target = token_targets(tiny_lm, 2).repeat_interleave(2, dim=0)
    init = initial_prompts([(i, r) for i in range(2) for r in range(2)], 6, tiny_lm.d_model, 1.0, seed=0)
    straight = optimise(tiny_lm, 2, target, init, cfg, group=2)
    for stop in (5, 10):  # before and after the pruning step
        ckpt = MemoryCheckpoint(every=5, stop_after=stop)
        with pytest.raises(KeyboardInterrupt):
            optimise(tiny_lm, 2, target, init, cfg, checkpoint=ckpt, group=2)
        ckpt.stop_after = None
        resumed = optimise(tiny_lm, 2, target, init, cfg, checkpoint=ckpt, group=2)
        torch.testing.assert_close(resumed.soft_prompt, straight.soft_prompt, rtol=0, atol=0)
        torch.testing.assert_close(resumed.cos_curve, straight.cos_curve, rtol=0, atol=0, equal_nan=True)
