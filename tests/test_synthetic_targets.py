import logging

import pytest
import torch
from scipy import stats

from softreach.errors import UserError
from softreach.experiments.registry import EXP3_ALPHAS, EXP5_FRACTIONS
from softreach.synthetic_targets import (
    corrupt_raw_dimensions,
    corrupt_top_pca,
    distribution_matched_targets,
    fit_position_gaussian,
    interpolated_targets,
    raw_random_targets,
    typical_norms,
)


def _gaussian_residuals(m=3000, t=3, d=8, seed=0):
    """Residual-like data with a different correlated Gaussian per position: [M, T, d]."""
    g = torch.Generator().manual_seed(seed)
    mean = torch.randn(t, d, generator=g) * 3  # [T, d]
    mix = torch.randn(t, d, d, generator=g) + 2 * torch.eye(d)  # [T, d, d]
    z = torch.randn(m, t, d, generator=g)
    return mean + torch.einsum("tij,mtj->mti", mix, z)


def _anisotropic_reference(m=400, t=4, d=10, seed=0):
    """Reference residuals with well separated variances along a random basis: [M, T, d]."""
    g = torch.Generator().manual_seed(seed)
    basis = torch.linalg.qr(torch.randn(d, d, generator=g))[0]  # [d, d] orthonormal columns
    scales = torch.linspace(10.0, 1.0, d)
    return 5 + (torch.randn(m, t, d, generator=g) * scales) @ basis.T


def test_fit_position_gaussian_estimates_mean_and_covariance():
    res = _gaussian_residuals()
    mean, chol, jitter = fit_position_gaussian(res, return_jitter=True)
    assert mean.shape == (3, 8) and chol.shape == (3, 8, 8) and mean.dtype == chol.dtype == torch.float32
    assert torch.equal(jitter, torch.zeros(3, dtype=torch.float64))
    torch.testing.assert_close(mean, res.mean(0), rtol=1e-5, atol=1e-5)
    for t in range(3):
        torch.testing.assert_close(chol[t] @ chol[t].T, torch.cov(res[:, t].T), rtol=1e-4, atol=1e-4)
        assert torch.equal(chol[t], chol[t].tril())
    assert len(fit_position_gaussian(res)) == 2


def test_fit_position_gaussian_refuses_one_window_and_jitters_singular_covariances(caplog):
    with pytest.raises(UserError, match="at least 2"):
        fit_position_gaussian(torch.randn(1, 3, 4))
    res = _gaussian_residuals(m=5, d=8)  # 5 windows in 8 dimensions: rank-deficient covariance
    res[:, 1] = 7.0  # one position identical in every window: zero covariance
    with caplog.at_level(logging.INFO, logger="softreach.synthetic_targets"):
        mean, chol, jitter = fit_position_gaussian(res, return_jitter=True)
    assert (jitter > 0).all() and torch.isfinite(chol).all()
    assert "jitter" in caplog.text
    diag = torch.stack([torch.cov(res[:, t].T).diagonal().mean() for t in (0, 2)])
    assert ((jitter[[0, 2]] / diag) < 1e-1).all()  # small relative to the variance it fixes


def test_distribution_matched_targets_follow_the_fitted_gaussian():
    mean, chol = fit_position_gaussian(_gaussian_residuals())
    n, t, d = 20000, 3, 8
    x = distribution_matched_targets(mean, chol, n, seed=11)  # [n, T, d]
    assert x.shape == (n, t, d) and x.dtype == torch.float32
    assert torch.equal(x, distribution_matched_targets(mean, chol, n, seed=11))
    assert not torch.equal(x[:10], distribution_matched_targets(mean, chol, 10, seed=12))
    for p in range(t):
        cov = chol[p] @ chol[p].T
        se = (cov.diagonal() / n).sqrt()
        assert ((x[:, p].mean(0) - mean[p]).abs() < 4 * se).all()
        sample_cov = torch.cov(x[:, p].T)
        assert (sample_cov - cov).norm() / cov.norm() < 0.05
        white = torch.linalg.solve_triangular(chol[p], (x[:, p] - mean[p]).T, upper=False)  # [d, n]
        assert stats.kstest(white.flatten().numpy(), "norm").pvalue > 0.01
        torch.testing.assert_close(torch.cov(white), torch.eye(d), atol=0.05, rtol=0)


def test_raw_random_targets_have_the_typical_norm_and_isotropic_directions():
    res = torch.randn(101, 4, 6) * torch.tensor([1.0, 10.0, 3.0, 0.5])[None, :, None]
    norms = typical_norms(res)
    torch.testing.assert_close(norms, res.norm(dim=-1).median(0).values)  # odd M: the median is a sample
    n, d = 5000, 6
    x = raw_random_targets(norms, n, d, seed=3)  # [n, T, d]
    assert x.shape == (n, 4, d)
    torch.testing.assert_close(x.norm(dim=-1), norms.expand(n, 4), rtol=1e-6, atol=0)
    unit = x / x.norm(dim=-1, keepdim=True)
    assert (unit.mean(0).norm(dim=-1) < 4 / n**0.5).all()  # mean direction near 0
    second = torch.einsum("ntd,nte->tde", unit, unit) / n  # [T, d, d]: E[u u^T] = I / d when isotropic
    torch.testing.assert_close(second, torch.eye(d).expand(4, d, d) / d, atol=0.02, rtol=0)
    assert torch.equal(x, raw_random_targets(norms, n, d, seed=3))


def test_interpolation_endpoints_are_exact_and_order_is_pair_major():
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(3, 5, 4, generator=g), torch.randn(3, 5, 4, generator=g)
    targets, pair, alpha = interpolated_targets(a, b, EXP3_ALPHAS)
    k = len(EXP3_ALPHAS)
    assert targets.shape == (3 * k, 5, 4)
    assert pair.tolist() == [p for p in range(3) for _ in range(k)]
    assert alpha.tolist() == list(EXP3_ALPHAS) * 3
    for row in range(3 * k):
        p, al = int(pair[row]), float(alpha[row])
        if al == 0.0:
            assert torch.equal(targets[row], b[p])
        elif al == 1.0:
            assert torch.equal(targets[row], a[p])
        else:
            torch.testing.assert_close(targets[row], al * a[p] + (1 - al) * b[p])
    mid = targets[pair.eq(1) & alpha.eq(0.5)][0]
    torch.testing.assert_close(mid, (a[1] + b[1]) / 2)
    with pytest.raises(UserError, match="differ in shape"):
        interpolated_targets(a, b[:2], EXP3_ALPHAS)


def test_raw_corruption_replaces_exactly_round_f_d_dimensions_per_target():
    n, t, d = 40, 5, 20
    targets = torch.randn(n, t, d, generator=torch.Generator().manual_seed(1))
    sigma = torch.full((d,), 0.5)
    same = corrupt_raw_dimensions(targets, 0.0, sigma, seed=0)
    assert torch.equal(same, targets) and same is not targets
    subsets = []
    for fraction in EXP5_FRACTIONS:
        out = corrupt_raw_dimensions(targets, fraction, sigma, seed=5)
        changed = out != targets  # [N, T, d]
        assert torch.equal(changed, changed[:, :1].expand_as(changed))  # same dims at every position
        assert (changed[:, 0].sum(1) == round(fraction * d)).all()
        subsets.append(changed[:, 0])
    assert len({tuple(row.tolist()) for row in subsets[1]}) > 1  # subsets drawn per target
    again = corrupt_raw_dimensions(targets, 0.3, sigma, seed=5)
    assert torch.equal(again, corrupt_raw_dimensions(targets, 0.3, sigma, seed=5))
    with pytest.raises(UserError, match="within"):
        corrupt_raw_dimensions(targets, 1.5, sigma, seed=0)
    with pytest.raises(UserError, match="sigma_dim"):
        corrupt_raw_dimensions(targets, 0.5, torch.ones(d + 1), seed=0)


def test_raw_corruption_draws_from_n0_sigma_per_position_and_dimension():
    n, t, d = 2000, 2, 3
    sigma = torch.tensor([[1.0, 2.0, 4.0], [0.5, 0.5, 8.0]])  # [T, d]
    out = corrupt_raw_dimensions(torch.full((n, t, d), 100.0), 1.0, sigma, seed=2)
    assert (out != 100.0).all()
    torch.testing.assert_close(out.std(0), sigma, rtol=0.08, atol=0)
    assert (out.mean(0).abs() < 4 * sigma / n**0.5).all()


def test_pca_corruption_keeps_the_other_directions_and_resamples_the_top_ones():
    ref = _anisotropic_reference()
    targets = _anisotropic_reference(m=6, seed=1) + 3.0  # [6, 4, 10]
    d = 10
    assert torch.equal(corrupt_top_pca(targets, 0.0, ref, seed=0), targets)
    pooled = ref.reshape(-1, d).double()
    mu = pooled.mean(0)
    _, vecs = torch.linalg.eigh(torch.cov(pooled.T))
    vecs = vecs.flip(1)  # [d, d], by decreasing variance
    ref_coords = (pooled - mu) @ vecs  # [R, d]
    for fraction in (0.1, 0.3, 0.7, 1.0):
        k = round(fraction * d)
        out = corrupt_top_pca(targets, fraction, ref, seed=4)
        before = (targets.reshape(-1, d).double() - mu) @ vecs  # [N*T, d]
        after = (out.reshape(-1, d).double() - mu) @ vecs
        torch.testing.assert_close(after[:, k:], before[:, k:], atol=1e-4, rtol=0)
        assert ((after[:, :k] - before[:, :k]).abs() > 1e-3).float().mean() > 0.9
        # every new coordinate is one of the reference's coordinates along that direction
        gap = (after[:, :k, None] - ref_coords[:, :k].T[None]).abs().amin(-1)  # [N*T, k]
        assert gap.max() < 1e-3
    assert torch.equal(corrupt_top_pca(targets, 0.5, ref, seed=4), corrupt_top_pca(targets, 0.5, ref, seed=4))


def test_pca_corruption_follows_the_reference_distribution():
    ref = _anisotropic_reference(m=500)
    targets = torch.zeros(300, 4, 10)
    out = corrupt_top_pca(targets, 1.0, ref, seed=7)  # every coordinate resampled
    pooled = ref.reshape(-1, 10)
    torch.testing.assert_close(out.reshape(-1, 10).mean(0), pooled.mean(0), atol=0.6, rtol=0)
    torch.testing.assert_close(out.reshape(-1, 10).var(0), pooled.var(0), rtol=0.15, atol=0)


def test_per_position_pca_corruption_keeps_a_massive_position_0():
    """With a huge, input-independent position 0 (as in SmolLM2), it must not take the top direction."""
    g = torch.Generator().manual_seed(3)
    m, t, d = 400, 4, 12
    ref = torch.randn(m, t, d, generator=g)
    ref[:, 0, 0] += 1000.0  # the massive activation: one direction, position 0 only
    targets = ref[:5].clone()
    out = corrupt_top_pca(targets, 0.25, ref, seed=1, per_position=True)
    assert (out[:, 0, 0] > 900).all()  # position 0 keeps its massive coordinate
    assert (out[:, 1:, 0].abs() < 100).all()  # and none leaks into other positions
    pooled = corrupt_top_pca(targets, 0.25, ref, seed=1, per_position=False)
    assert (pooled[:, 1:, 0].abs() > 100).any()  # the pooled variant does leak it
    assert not torch.equal(out, targets)
