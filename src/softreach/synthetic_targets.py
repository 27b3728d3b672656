"""Synthetic targets for Experiments 2a, 2b, 3 and 5, each reproducible from an int seed.

Every generator draws from its own `torch.Generator` seeded with `seed` and returns float32
tensors on the CPU, whatever device its inputs live on.
"""
from __future__ import annotations

import logging

import torch

from .errors import UserError
from .manifold import principal_directions

_JITTER_TRIES = 8  # jitter 1e-6 ... 1e1 times the mean diagonal

log = logging.getLogger(__name__)


def _generator(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(int(seed))


def _check_3d(name: str, x: torch.Tensor) -> None:
    if x.dim() != 3:
        raise UserError(f"{name} must be [N, T, d], got shape {tuple(x.shape)}")


def _n_replaced(fraction: float, d: int) -> int:
    """round(fraction * d), Python's round (half to even), for 0 <= fraction <= 1."""
    if not 0.0 <= fraction <= 1.0:
        raise UserError(f"corruption fraction must be within [0, 1], got {fraction}")
    return round(fraction * d)


@torch.no_grad()
def fit_position_gaussian(residuals: torch.Tensor, return_jitter: bool = False):
    """Per-position Gaussian of real residuals [M, T, d]: (mean [T, d], chol [T, d, d]).

    The covariance (unbiased, float64) of each position gets a Cholesky factor. Where it is
    not positive definite, jitter is added to its diagonal: 1e-6 times its mean diagonal,
    then 10 times more per try, for at most 8 tries. With return_jitter=True the jitter used
    per position, [T] (0 where none was needed), comes third; any jitter is also logged.
    """
    _check_3d("residuals", residuals)
    m, t, d = residuals.shape
    if m < 2:
        raise UserError(f"fitting a Gaussian needs at least 2 residual windows, got {m}")
    x = residuals.detach().to(device="cpu", dtype=torch.float64)  # [M, T, d]
    mean = x.mean(0)  # [T, d]
    centred = (x - mean).permute(1, 0, 2)  # [T, M, d]
    cov = centred.transpose(1, 2) @ centred / (m - 1)  # [T, d, d]
    eye = torch.eye(d, dtype=torch.float64)
    scale = cov.diagonal(dim1=1, dim2=2).mean(1)  # [T]
    fallback = float(scale.max()) if float(scale.max()) > 0 else 1.0
    scale = torch.where(scale > 0, scale, torch.full_like(scale, fallback))  # a constant position still gets jitter
    jitter = torch.zeros(t, dtype=torch.float64)
    chol, info = torch.linalg.cholesky_ex(cov)  # [T, d, d], [T]
    failed = info != 0
    for step in range(_JITTER_TRIES):
        if not failed.any():
            break
        jitter[failed] = 1e-6 * 10.0**step * scale[failed]
        retry, info = torch.linalg.cholesky_ex(cov[failed] + jitter[failed, None, None] * eye)
        chol[failed] = retry
        failed[failed.clone()] = info != 0
    if failed.any():
        raise UserError(f"covariance at positions {failed.nonzero().flatten().tolist()} stays singular even with "
                        f"jitter {1e-6 * 10.0 ** (_JITTER_TRIES - 1):g} x its mean diagonal")
    if (jitter > 0).any():
        log.info("fit_position_gaussian: added jitter to the covariance diagonal at positions %s: %s",
                 (jitter > 0).nonzero().flatten().tolist(), [f"{j:.3g}" for j in jitter[jitter > 0].tolist()])
    out = (mean.float(), chol.float())
    return out + (jitter,) if return_jitter else out


@torch.no_grad()
def distribution_matched_targets(mean: torch.Tensor, chol: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Exp 2a: n draws mean + chol @ z, z ~ N(0, I), independently per position: [n, T, d]."""
    if mean.dim() != 2 or chol.shape != (mean.shape[0], mean.shape[1], mean.shape[1]):
        raise UserError(f"expected mean [T, d] and chol [T, d, d], got {tuple(mean.shape)} and {tuple(chol.shape)}")
    t, d = mean.shape
    z = torch.randn(n, t, d, generator=_generator(seed))  # [n, T, d]
    return mean.float().cpu() + torch.einsum("tij,ntj->nti", chol.float().cpu(), z)


@torch.no_grad()
def typical_norms(residuals: torch.Tensor) -> torch.Tensor:
    """Median over windows of each position's residual norm: residuals [M, T, d] -> [T]."""
    _check_3d("residuals", residuals)
    return torch.quantile(residuals.detach().float().cpu().norm(dim=-1), 0.5, dim=0)


@torch.no_grad()
def raw_random_targets(typical_norm: torch.Tensor, n: int, d: int, seed: int) -> torch.Tensor:
    """Exp 2b: isotropic random directions scaled to exactly typical_norm[t] at position t: [n, T, d]."""
    norms = typical_norm.detach().float().cpu().flatten()  # [T]
    z = torch.randn(n, norms.numel(), d, generator=_generator(seed))  # [n, T, d]
    return z / z.norm(dim=-1, keepdim=True) * norms[None, :, None]


@torch.no_grad()
def interpolated_targets(a: torch.Tensor, b: torch.Tensor, alphas) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Exp 3: target = alpha * A + (1 - alpha) * B for each pair and alpha, pair-major.

    a, b: [P, T, d]. Returns (targets [P * len(alphas), T, d], pair_index [P * len(alphas)]
    long, alpha [P * len(alphas)] float32); row p * len(alphas) + i is pair p at alphas[i].
    """
    _check_3d("a", a)
    if a.shape != b.shape:
        raise UserError(f"interpolation endpoints differ in shape: {tuple(a.shape)} vs {tuple(b.shape)}")
    if len(alphas) == 0:
        raise UserError("no interpolation alphas given")
    p, n_alpha = a.shape[0], len(alphas)
    al = torch.tensor([float(x) for x in alphas], dtype=torch.float32)  # [A]
    w = al[None, :, None, None]  # [1, A, 1, 1]
    targets = w * a.detach().float().cpu()[:, None] + (1 - w) * b.detach().float().cpu()[:, None]  # [P, A, T, d]
    pair_index = torch.arange(p).repeat_interleave(n_alpha)  # [P * A]
    return targets.reshape(p * n_alpha, *a.shape[1:]), pair_index, al.repeat(p)


@torch.no_grad()
def corrupt_raw_dimensions(targets: torch.Tensor, fraction: float, sigma_dim: torch.Tensor, seed: int) -> torch.Tensor:
    """Exp 5A: replace round(fraction * d) raw dimensions of each target with N(0, sigma_dim) draws.

    targets: [N, T, d]; sigma_dim: standard deviation per dimension, [T, d] or [d]. Each
    target draws its own subset of dimensions, the same at all of its positions.
    """
    _check_3d("targets", targets)
    n, t, d = targets.shape
    out = targets.detach().float().cpu().clone()  # [N, T, d]
    sigma = sigma_dim.detach().float().cpu()
    if sigma.shape not in ((d,), (t, d)):
        raise UserError(f"sigma_dim must be [d] or [T, d] = [{d}] or [{t}, {d}], got {tuple(sigma.shape)}")
    k = _n_replaced(fraction, d)
    if k == 0:
        return out
    g = _generator(seed)
    chosen = torch.rand(n, d, generator=g).argsort(dim=1)[:, :k]  # [N, k] distinct dims per target
    mask = torch.zeros(n, d, dtype=torch.bool).scatter_(1, chosen, True)  # [N, d]
    noise = torch.randn(n, t, d, generator=g) * sigma  # [N, T, d]
    return torch.where(mask[:, None, :], noise, out)


@torch.no_grad()
def corrupt_top_pca(targets: torch.Tensor, fraction: float, reference: torch.Tensor, seed: int,
                    per_position: bool = False) -> torch.Tensor:
    """Exp 5B: resample each target's coordinates along the top round(fraction * d) PCA directions.

    The directions are those of the reference residuals [M, T', d] pooled over positions
    (M * T' vectors, centred on their pooled mean mu). A coordinate is (x - mu) . v. For every
    target, position and replaced direction, the new coordinate is that of a uniformly drawn
    reference vector (drawn independently per direction), so each coordinate follows the
    reference's empirical marginal. Coordinates along the other directions are kept.

    per_position=True (what the suite uses): the directions come from positions 1.. only, so a
    massive position-0 activation (SmolLM2) cannot claim the top direction, and each new
    coordinate is drawn from reference vectors at the same position (needs T <= T').
    """
    _check_3d("targets", targets)
    _check_3d("reference", reference)
    n, t, d = targets.shape
    if reference.shape[-1] != d:
        raise UserError(f"reference has d={reference.shape[-1]} but targets have d={d}")
    k = _n_replaced(fraction, d)
    if k == 0:
        return targets.detach().float().cpu().clone()
    ref3 = reference.detach().to(device="cpu", dtype=torch.float64)  # [M, T', d]
    if per_position and t > ref3.shape[1]:
        raise UserError(f"per-position corruption needs reference windows of at least {t} positions")
    basis = ref3[:, 1:] if per_position and ref3.shape[1] > 1 else ref3
    ref = basis.reshape(-1, d)  # [R, d]
    if ref.shape[0] < 2:
        raise UserError("corrupt_top_pca needs at least 2 reference vectors")
    mu, directions = principal_directions(ref)  # [d], [d, d]
    top = directions[:, :k]  # [d, k]
    x = targets.detach().to(device="cpu", dtype=torch.float64).reshape(n * t, d)  # [N*T, d]
    old = (x - mu) @ top  # [N*T, k]
    if per_position:
        ref_coords = (ref3[:, :t] - mu) @ top  # [M, T, k]
        pick = torch.randint(0, ref3.shape[0], (n, t, k), generator=_generator(seed))  # [N, T, k]
        pos = torch.arange(t).view(1, t, 1).expand(n, t, k)
        new = ref_coords[pick, pos, torch.arange(k).view(1, 1, k).expand(n, t, k)].reshape(n * t, k)
    else:
        ref_coords = (ref - mu) @ top  # [R, k]
        pick = torch.randint(0, ref.shape[0], (n * t, k), generator=_generator(seed))  # [N*T, k]
        new = ref_coords[pick, torch.arange(k)]  # [N*T, k]
    return (x + (new - old) @ top.T).view(n, t, d).float()
