"""GCG-style token search: monotone, exact forward-pass accounting, budget kept, results recomputable from ids."""
import pytest
import torch

from softreach.errors import UserError
from softreach.manifold import token_table
from softreach.memory import batch_for_budget
from softreach.metrics import reachability_loss
from softreach.optimize import OptimConfig
from softreach.residual import decoder_blocks
from softreach.targets import residuals_of_tokens
from softreach.token_search import GCGConfig, gcg_search

LAYER = 2
LOSS = OptimConfig(mse_weight=0.01, skip_pos0=False)  # the log's loss: every position, cos and MSE


def _problem(lm, n=2, t=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    ids = torch.randint(2, 102, (n, t), generator=g)
    start = torch.randint(2, 102, (n, t), generator=g)
    return residuals_of_tokens(lm, ids, LAYER), start


class SequenceCounter:
    """Counts sequences entering the first decoder block (every forward, gradient passes included)."""

    def __init__(self, lm):
        self.count = 0
        self.handle = decoder_blocks(lm.model)[0].register_forward_pre_hook(self._hook, with_kwargs=True)

    def _hook(self, _module, args, kwargs):
        x = args[0] if args else kwargs["hidden_states"]
        self.count += x.shape[0]

    def close(self):
        self.handle.remove()


def test_never_worse_than_the_start_and_reported_numbers_are_fresh(tiny_lm):
    target, start = _problem(tiny_lm)
    res = gcg_search(tiny_lm, LAYER, target, start, GCGConfig(budget=60, top_k=8, candidates=12), LOSS,
                     token_table(tiny_lm), seed=0)
    fresh_loss, fresh_cos = reachability_loss(residuals_of_tokens(tiny_lm, res.ids, LAYER), target, LOSS.mse_weight,
                                              LOSS.skip_pos0, LOSS.mse_norm)
    torch.testing.assert_close(fresh_loss, torch.tensor(res.loss), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(fresh_cos, torch.tensor(res.cos), rtol=1e-5, atol=1e-6)
    assert all(end <= begin for end, begin in zip(res.loss, res.start_loss))
    for curve in res.loss_curve:
        assert all(b <= a for a, b in zip(curve, curve[1:]))  # greedy: the kept loss never rises
    assert sum(res.accepted) > 0  # it does find improvements on these easy targets
    assert (res.ids >= 2).all()  # only ordinary tokens


@pytest.mark.parametrize("budget, candidates", [(2, 4), (3, 4), (10, 4), (37, 8), (50, 64)])
def test_forward_passes_are_counted_exactly_and_the_budget_is_kept(tiny_lm, budget, candidates):
    target, start = _problem(tiny_lm)
    counter = SequenceCounter(tiny_lm)
    try:
        res = gcg_search(tiny_lm, LAYER, target, start, GCGConfig(budget=budget, top_k=4, candidates=candidates,
                                                                  cached=False), LOSS, token_table(tiny_lm), seed=1)
    finally:
        counter.close()
    assert counter.count == sum(res.forward_passes)
    counter = SequenceCounter(tiny_lm)
    try:  # with the prefix cache: besides the counted candidates, per iteration the current sequence once and
        # one prefix per changed position (shorter sequences, not counted)
        cached = gcg_search(tiny_lm, LAYER, target, start, GCGConfig(budget=budget, top_k=4, candidates=candidates),
                            LOSS, token_table(tiny_lm), seed=1)
    finally:
        counter.close()
    assert sum(cached.forward_passes) <= counter.count <= sum(cached.forward_passes) + sum(cached.iterations) * 6
    assert all(p <= budget for p in res.forward_passes)
    assert all(budget - p <= 1 for p in res.forward_passes)  # only a lone pass can be left unused
    for p, it in zip(res.forward_passes, res.iterations):
        assert it == 0 or p > 1 + it  # each iteration spent a gradient pass and at least one candidate


def test_a_tiny_memory_budget_only_shrinks_the_candidate_batches(tiny_lm):
    target, start = _problem(tiny_lm, n=1)
    cfg = dict(budget=30, top_k=4, candidates=9)
    big = gcg_search(tiny_lm, LAYER, target, start, GCGConfig(**cfg), LOSS, token_table(tiny_lm), seed=2)
    small = gcg_search(tiny_lm, LAYER, target, start, GCGConfig(**cfg, memory_budget_mb=1e-6), LOSS,
                       token_table(tiny_lm), seed=2)
    assert small.candidate_batch == 1 and big.candidate_batch == 9
    assert torch.equal(big.ids, small.ids) and big.forward_passes == small.forward_passes
    assert batch_for_budget(tiny_lm, LAYER, 5, 1000, int(1e6 * 2**20)) == 1000


def test_bad_starts_are_refused(tiny_lm):
    target, start = _problem(tiny_lm)
    with pytest.raises(UserError, match="ordinary"):
        gcg_search(tiny_lm, LAYER, target, torch.zeros_like(start), GCGConfig(budget=5), LOSS, token_table(tiny_lm), 0)
    with pytest.raises(UserError, match="do not match"):
        gcg_search(tiny_lm, LAYER, target, start[:, :3], GCGConfig(budget=5), LOSS, token_table(tiny_lm), 0)
    with pytest.raises(UserError):
        GCGConfig(budget=1)


def test_cached_swap_evaluation_equals_whole_sequences(tiny_lm):
    """Candidates evaluated from their first changed position (prefix cached) score as whole sequences do."""
    from softreach.token_search import evaluate_swaps, evaluate_ids

    target, start = _problem(tiny_lm, n=1, t=6)
    base = start[0]
    g = torch.Generator().manual_seed(5)
    cands = base.repeat(9, 1)
    for c in range(8):  # one or two swaps at varied positions; the last candidate is the base itself
        pos = torch.randint(0, 6, (1 + c % 2,), generator=g)
        cands[c, pos] = torch.randint(2, 102, (pos.numel(),), generator=g)
    for optim in (LOSS, OptimConfig(skip_pos0=True, mse_weight=0.0)):
        cached = evaluate_swaps(tiny_lm, LAYER, base, cands, target[0], optim, batch=4)
        whole = evaluate_ids(tiny_lm, LAYER, cands, target[0], optim, batch=4)
        torch.testing.assert_close(cached[0], whole[0], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cached[1], whole[1], rtol=1e-5, atol=1e-6)


def test_gcg_with_and_without_the_prefix_cache_finds_the_same_tokens(tiny_lm):
    target, start = _problem(tiny_lm)
    runs = [gcg_search(tiny_lm, LAYER, target, start, GCGConfig(budget=80, top_k=8, candidates=12, cached=c), LOSS,
                       token_table(tiny_lm), seed=0) for c in (True, False)]
    assert torch.equal(runs[0].ids, runs[1].ids)
    assert runs[0].forward_passes == runs[1].forward_passes
    torch.testing.assert_close(torch.tensor(runs[0].loss), torch.tensor(runs[1].loss), rtol=1e-5, atol=1e-6)
