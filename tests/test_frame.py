"""Soft slots inside fixed text: the cached forward equals the plain one, and the optimiser's frame path
behaves like the free one (batched == alone)."""
import pytest
import torch

from softreach.config import OptimConfig
from softreach.frame import TextFrame, frame_residual, frame_residual_of_tokens
from softreach.optimize import optimise
from softreach.random_models import random_model
from softreach.residual import residual_at


def _frame(n=3, cb=5, k=3, ca=6, positions=None, seed=0):
    g = torch.Generator().manual_seed(seed)
    before = torch.randint(2, 100, (n, cb), generator=g)
    after = torch.randint(2, 100, (n, ca), generator=g)
    pos = torch.tensor(positions if positions is not None else list(range(cb + k, cb + k + ca)))
    return TextFrame(before, after, k, pos)


@pytest.mark.parametrize("arch", ["gpt_neox", "llama", "gpt2"])
@pytest.mark.parametrize("cb", [0, 5])
def test_cached_prefix_equals_full_forward(arch, cb):
    lm = random_model(arch)
    frame = _frame(cb=cb)
    soft = torch.randn(3, 3, lm.d_model)
    full = residual_at(lm.model, 3, inputs_embeds=frame.full_input(lm.model, soft))  # [3, T, d]
    cached = frame_residual(lm.model, 3, frame, soft)
    plain = frame_residual(lm.model, 3, frame, soft, use_cache=False)
    assert cached.shape == (3, 6, lm.d_model)
    torch.testing.assert_close(cached, full[:, frame.positions], atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(plain, full[:, frame.positions], atol=1e-6, rtol=1e-6)
    # a selection of rows reuses the cache and still matches
    sub = frame.select(torch.tensor([2, 0]))
    torch.testing.assert_close(frame_residual(lm.model, 3, sub, soft[[2, 0]]), full[[2, 0]][:, frame.positions],
                               atol=1e-5, rtol=1e-5)
    assert len(frame._caches) == (1 if cb else 0)


def test_tokens_in_the_slots_are_the_text_itself():
    lm = random_model("llama")
    frame = _frame(n=2, cb=4, k=3, ca=5)
    slots = torch.randint(2, 100, (2, 3))
    ids = torch.cat([frame.before, slots, frame.after], 1)
    want = residual_at(lm.model, 2, input_ids=ids)[:, frame.positions]
    torch.testing.assert_close(frame_residual_of_tokens(lm.model, 2, frame, slots), want, atol=1e-5, rtol=1e-5)


def test_bad_positions_are_refused():
    with pytest.raises(Exception, match="outside"):
        _frame(positions=[40])


def test_framed_optimisation_batched_matches_alone_and_reduces_loss():
    lm = random_model("gpt_neox")
    frame = _frame(n=3, cb=4, k=3, ca=5, positions=[10, 11])
    target = torch.randn(3, 2, lm.d_model) * 3
    init = torch.randn(3, 3, lm.d_model)
    cfg = OptimConfig(steps=25, lr=0.1, early_stop=False, schedule="constant", start="random")
    together = optimise(lm, 2, target, init, cfg, frame=frame)
    alone = optimise(lm, 2, target[1:2], init[1:2], cfg, frame=frame.select(slice(1, 2)))
    torch.testing.assert_close(together.soft_prompt[1:2], alone.soft_prompt, atol=1e-5, rtol=1e-4)
    first, last = together.loss_curve[:, 0], together.best_loss
    assert (last < first).all()
    # restarts share the template's prefix cache
    rep = frame.repeat(2)
    res = optimise(lm, 2, target.repeat_interleave(2, 0), init.repeat_interleave(2, 0), cfg, frame=rep, group=2)
    torch.testing.assert_close(res.soft_prompt[0::2], together.soft_prompt, atol=1e-5, rtol=1e-4)


def test_framed_optimisation_refuses_mismatched_shapes():
    lm = random_model("gpt_neox")
    frame = _frame(n=2)
    with pytest.raises(Exception, match="disagree"):
        optimise(lm, 2, torch.randn(2, 3, lm.d_model), torch.randn(2, 3, lm.d_model), OptimConfig(steps=2), frame=frame)


def test_early_stopped_rows_leave_and_the_rest_match_running_alone():
    lm = random_model("llama")
    frame = _frame(n=3, cb=4, k=3, ca=5, positions=[9, 11])
    own = torch.randint(2, 100, (3, 3), generator=torch.Generator().manual_seed(1))
    init = lm.model.get_input_embeddings()(own).detach().clone()
    init[1:] = torch.randn(2, 3, lm.d_model)
    target = torch.randn(3, 2, lm.d_model) * 3
    target[0] = frame_residual_of_tokens(lm.model, 2, frame.select(slice(0, 1)), own[:1])[0]  # reached at step 0
    cfg = OptimConfig(steps=30, lr=0.1, early_stop=True, schedule="constant", start="random", tol=1e-4)
    together = optimise(lm, 2, target, init, cfg, frame=frame)
    assert together.converged[0] and together.steps_run[0] == 1 and together.steps_run[2] == 30
    alone = optimise(lm, 2, target[2:], init[2:], cfg, frame=frame.select(slice(2, 3)))
    torch.testing.assert_close(together.soft_prompt[2:], alone.soft_prompt, atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(together.loss_curve[2:], alone.loss_curve, atol=1e-5, rtol=1e-4)
