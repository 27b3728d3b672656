"""Norm budgets, the copy baseline, convergence verdicts and early stopping."""
import json
import math

import pytest
from conftest import MemoryCheckpoint
import torch
import torch.nn.functional as F

from softreach.budget import absolute_cap, mean_token_norm, parse_budgets
from softreach.cli import main
from softreach.condition import solve_condition
from softreach.copy_route import COPY_SCALES, copy_baseline
from softreach.errors import UserError
from softreach.optimize import ChunkCheckpoint, OptimConfig, initial_prompts, optimise
from softreach.random_models import random_model
from softreach.residual import residual_at



def _targets(lm, n, t=6, layer=2, seed=0):
    ids = torch.randint(2, 100, (n, t), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return residual_at(lm.model, layer, input_ids=ids)


def test_budgets_parse_sorted_with_free_last():
    assert parse_budgets(["inf", "1", "0.5,1"]) == (0.5, 1.0, math.inf)
    for bad in (["0"], ["-1"], ["x"], ["nan"]):
        with pytest.raises(UserError):
            parse_budgets(bad)


def test_copy_baseline_equals_a_hand_computation():
    lm = random_model("llama")
    target = _targets(lm, 3)
    cap = 1.5 * mean_token_norm(lm)
    got = copy_baseline(lm, 2, target, cap, skip_pos0=False)
    best = torch.full((3,), -2.0)
    for a in COPY_SCALES:
        x = a * target
        x = x * torch.clamp(cap / x.norm(dim=-1, keepdim=True), max=1.0)
        with torch.no_grad():
            h = residual_at(lm.model, 2, inputs_embeds=x)
        best = torch.maximum(best, F.cosine_similarity(h, target, dim=-1).mean(1))
    torch.testing.assert_close(got.cos, best, atol=1e-6, rtol=0)
    assert (got.inputs.norm(dim=-1) <= cap * (1 + 1e-5)).all()
    free = copy_baseline(lm, 2, target, None, skip_pos0=False)
    assert (free.cos >= got.cos - 1e-6).all()  # a larger feasible set never does worse


class _Recorder(ChunkCheckpoint):
    """Saves nothing, but sees the state after every step."""
    every = 1

    def __init__(self):
        self.max_norm = 0.0

    def save(self, chunk, state):
        if state["soft"].numel():
            self.max_norm = max(self.max_norm, float(state["soft"].norm(dim=-1).max()))


def test_budget_is_never_exceeded_at_any_step():
    lm = random_model("gpt_neox")
    target = _targets(lm, 3)
    init = initial_prompts([(i, 0) for i in range(3)], 6, lm.d_model, 3.0, seed=0)
    rec = _Recorder()
    res = optimise(lm, 2, target, init, OptimConfig(steps=30, lr=0.3, early_stop=False), checkpoint=rec,
                   max_norm=0.7)
    assert rec.max_norm <= 0.7 * (1 + 1e-5)
    assert res.soft_prompt.norm(dim=-1).max() <= 0.7 * (1 + 1e-5)
    assert init.norm(dim=-1).max() > 2  # the start itself was clipped


def test_fidelity_never_falls_as_the_budget_grows():
    lm = random_model("llama")
    target = _targets(lm, 4)
    optim = OptimConfig(steps=60, lr=0.05)
    warm, previous = None, None
    for budget in (0.25, 0.5, 1.0, 4.0, math.inf):
        res = solve_condition(lm, 2, target, 1, optim, seed=0, floor_draws=0,
                              cap=absolute_cap(lm, budget), warm_start=warm)
        cos = torch.tensor([p["cos_no_pos0"] for p in res.problems])
        if previous is not None:
            assert (cos >= previous - 1e-5).all(), (budget, cos, previous)
        warm, previous = res.soft_prompt, cos


def test_early_stopping_keeps_batched_equal_to_alone():
    lm = random_model("gpt_neox")
    target = _targets(lm, 4)
    init = initial_prompts([(i, 0) for i in range(4)], 6, lm.d_model, 1.0, seed=1)
    init[0] = 20 * target[0]  # a copy start: converges early, while the others keep going
    cfg = OptimConfig(steps=300, lr=0.05, window=10, tol=1e-4)
    batched = optimise(lm, 2, target, init, cfg)
    steps = batched.steps_run
    assert steps.min() < steps.max() and bool(batched.converged.any())
    for i in range(4):
        alone = optimise(lm, 2, target[i : i + 1], init[i : i + 1], cfg)
        assert int(alone.steps_run[0]) == int(steps[i])
        assert bool(alone.converged[0]) == bool(batched.converged[i])
        torch.testing.assert_close(batched.soft_prompt[i], alone.soft_prompt[0], rtol=1e-3, atol=1e-4)


def test_resume_is_exact_with_early_stopping_and_budgets():
    lm = random_model("gpt2")
    target = _targets(lm, 4).repeat_interleave(2, 0)
    init = initial_prompts([(i, r) for i in range(4) for r in range(2)], 6, lm.d_model, 1.0, seed=0)
    cfg = OptimConfig(steps=120, lr=0.05, window=10, prune_after=15, tol=1e-5)
    straight = optimise(lm, 2, target, init, cfg, group=2, max_norm=1.0)
    assert 50 < int(straight.steps_run.max()) < 120  # pruned at 15, then stopped early, after the interruption
    ckpt = MemoryCheckpoint(every=7, stop_after=50)
    with pytest.raises(KeyboardInterrupt):
        optimise(lm, 2, target, init, cfg, group=2, checkpoint=ckpt, max_norm=1.0)
    ckpt.stop_after = None
    resumed = optimise(lm, 2, target, init, cfg, group=2, checkpoint=ckpt, max_norm=1.0)
    torch.testing.assert_close(resumed.soft_prompt, straight.soft_prompt, rtol=0, atol=0)
    torch.testing.assert_close(resumed.loss_curve, straight.loss_curve, rtol=0, atol=0, equal_nan=True)
    assert torch.equal(resumed.converged, straight.converged)


def test_verdicts_converged_and_cut_short():
    lm = random_model("llama")
    target = _targets(lm, 2)
    long = solve_condition(lm, 2, target, 1, OptimConfig(steps=2000, lr=0.05, window=20), seed=0, floor_draws=0)
    assert all(p["verdict"] == "converged" and p["steps_run"] < 2000 for p in long.problems)
    short = solve_condition(lm, 2, target, 1, OptimConfig(steps=8, lr=0.05, start="random", window=20),
                            seed=0, floor_draws=0)
    for p in short.problems:
        assert p["verdict"] in ("improving", "norm_limited") and not p["converged"]
        assert p["steps_run"] == 8 and p["gain_per_100_steps"] > 0


def test_converged_means_more_steps_gain_less_than_the_tolerance():
    """The criterion's promise, measured: running converged problems on (no early stop, 3x the steps)
    gains less than 3 windows' worth of tolerance."""
    lm = random_model("gpt_neox")
    target = _targets(lm, 4)
    cfg = OptimConfig(steps=3000, lr=0.05, window=20, tol=1e-4)
    init = initial_prompts([(i, 0) for i in range(4)], 6, lm.d_model, 1.0, seed=2)
    stopped = optimise(lm, 2, target, init, cfg)
    assert bool(stopped.converged.all())
    longest = int(stopped.steps_run.max())
    cfg_on = OptimConfig(steps=3 * longest, lr=0.05, window=20, tol=1e-4, early_stop=False)
    on = optimise(lm, 2, target, init, cfg_on)
    gain = stopped.best_loss - on.best_loss
    assert (gain < 3 * cfg.tol).all(), gain


def test_budgeted_result_folder_passes_verify(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "b1"
    args = ["run", "exp1", "--model", str(tiny_model_dir), "--targets", "3", "--restarts", "2", "--steps", "40",
            "--seq-len", "8", "--out", str(out), "--no-progress", "--floor-draws", "2", "--norm-budget", "1"]
    assert main(args) == 0
    cfg = json.loads((out / "config.json").read_text())
    assert cfg["norm_budget"] == pytest.approx(cfg["token_norm"]) and cfg["norm_budget_tokens"] == 1
    rows = [json.loads(line) for line in (out / "problems.jsonl").read_text().splitlines()]
    assert all({"copy_cos", "copy_cos_no_pos0", "verdict", "steps_run", "beats_copy"} <= set(r) for r in rows)
    assert main(["verify", str(out), "--no-progress"]) == 0
    assert "copy baseline" in capsys.readouterr().out


def test_bad_budget_is_one_line_exit_2(tiny_model_dir, tmp_path, capsys):
    out = tmp_path / "o"
    code = main(["run", "exp1", "--model", str(tiny_model_dir), "--out", str(out), "--norm-budget", "-1",
                 "--no-progress"])
    assert code == 2 and "norm budget" in capsys.readouterr().err and not out.exists()
