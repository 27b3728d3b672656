"""Causal token search: exact recovery of token sequences, batched == alone, candidates bounded, honest results."""
import pytest
import torch

from softreach.causal_search import CausalConfig, causal_search, relative_error
from softreach.errors import UserError
from softreach.manifold import token_table
from softreach.targets import residuals_of_tokens

LAYER = 2


def _tokens(n=3, t=8, seed=0):
    return torch.randint(2, 102, (n, t), generator=torch.Generator().manual_seed(seed))


def test_random_token_sequences_are_recovered_exactly(tiny_lm):
    tokens = _tokens()
    targets = residuals_of_tokens(tiny_lm, tokens, LAYER)
    res = causal_search(tiny_lm, LAYER, targets, CausalConfig(chunk=4), token_table(tiny_lm))
    assert torch.equal(res.ids, tokens)
    assert res.exact.all()
    torch.testing.assert_close(residuals_of_tokens(tiny_lm, res.ids, LAYER), targets)
    # a hit ends the position early: far fewer candidates than the vocabulary after position 0
    assert (res.candidates[:, 1:] < token_table(tiny_lm).ids.numel()).all()


def test_recovers_every_layer_including_the_last(tiny_lm):
    tokens = _tokens(2, 6, seed=1)
    for layer in range(1, tiny_lm.n_layers + 1):
        targets = residuals_of_tokens(tiny_lm, tokens, layer)
        assert torch.equal(causal_search(tiny_lm, layer, targets, CausalConfig(), token_table(tiny_lm)).ids, tokens)


def test_batched_search_equals_each_target_alone(tiny_lm):
    tokens = _tokens(3, 6, seed=2)
    targets = residuals_of_tokens(tiny_lm, tokens, LAYER) + 0.3 * torch.randn(3, 6, tiny_lm.d_model)  # inexact
    cfg, table = CausalConfig(chunk=3, max_candidates=20), token_table(tiny_lm)
    together = causal_search(tiny_lm, LAYER, targets, cfg, table)
    for i in range(3):
        alone = causal_search(tiny_lm, LAYER, targets[i : i + 1], cfg, table)
        assert torch.equal(alone.ids[0], together.ids[i])
        assert torch.equal(alone.candidates[0], together.candidates[i])
        torch.testing.assert_close(alone.position_error[0], together.position_error[i], rtol=1e-4, atol=1e-7)


def test_inexact_targets_get_the_best_token_seen_within_the_candidate_limit(tiny_lm):
    targets = residuals_of_tokens(tiny_lm, _tokens(2, 5, seed=3), LAYER) + torch.randn(2, 5, tiny_lm.d_model)
    table = token_table(tiny_lm)
    res = causal_search(tiny_lm, LAYER, targets, CausalConfig(chunk=2, max_candidates=7), table)
    assert not res.exact.any()
    assert (res.candidates[:, 1:] == 7).all() and (res.candidates[:, 0] == table.ids.numel()).all()
    assert torch.isin(res.ids, table.ids).all()
    # the reported per-position error is the chosen tokens' own, with their chosen prefix
    fresh = relative_error(residuals_of_tokens(tiny_lm, res.ids, LAYER), targets)
    torch.testing.assert_close(fresh, res.position_error, rtol=1e-4, atol=1e-6)
    # position 0 scans the whole vocabulary: its choice is the best there is
    every = residuals_of_tokens(tiny_lm, table.ids[:, None], LAYER)[:, 0]  # [V', d]
    best = relative_error(every[None], targets[:, None, 0]).min(1).values  # [N]
    torch.testing.assert_close(res.position_error[:, 0], best, rtol=1e-4, atol=1e-7)
    assert res.forward_passes == [-(-p // 5) for p in res.passes]


@pytest.mark.parametrize("kw", [dict(chunk=0), dict(max_candidates=-1), dict(exact_tol=float("nan")), dict(batch=0)])
def test_bad_settings_are_refused(kw):
    with pytest.raises(UserError):
        CausalConfig(**kw)


def test_small_candidate_batches_change_nothing(tiny_lm):
    tokens = _tokens(2, 5, seed=4)
    targets = residuals_of_tokens(tiny_lm, tokens, LAYER)
    table = token_table(tiny_lm)
    big = causal_search(tiny_lm, LAYER, targets, CausalConfig(chunk=8), table)
    small = causal_search(tiny_lm, LAYER, targets, CausalConfig(chunk=8, batch=3), table)
    assert torch.equal(big.ids, small.ids) and torch.equal(big.candidates, small.candidates)
    torch.testing.assert_close(big.position_error, small.position_error, rtol=1e-4, atol=1e-12)
