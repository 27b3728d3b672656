"""The token manifold: the ordinary tokens' embedding rows, nearest tokens, and Exp 1b's distances from them.

`TokenTable` holds the ordinary tokens (no special tokens) and their embeddings; `nearest_rows` and
`nearest_tokens` find the nearest token of each vector; `manifold_summary` is Exp 1b's summary of how far
optimised soft prompts lie from the token embeddings. Computations run in float32 (the PCA
eigendecomposition in float64), in row chunks so that no [N*T, V] similarity matrix is ever held whole.
Results come back on the CPU unless said otherwise.
"""
from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import torch
import torch.nn.functional as F

from .errors import UserError

if TYPE_CHECKING:
    from .models import LoadedModel

_CHUNK_BYTES = 64 * 2**20  # one [rows, V] float32 matrix per chunk; a few live at once (< 256 MB)
DEFAULT_PCA_KS = (1, 10, 50, 100, 200, 300, 400, 500)


def _by_row_chunks(x: torch.Tensor, width: int, chunk) -> list[torch.Tensor]:
    """Run chunk(lo, hi) over consecutive row ranges of x [M, d] and concatenate its per-row results.

    Each range is small enough that one [rows, width] float32 matrix stays within _CHUNK_BYTES;
    `chunk` returns a tuple of [hi - lo] tensors; the result is one [M] tensor per element.
    """
    rows = max(1, _CHUNK_BYTES // (4 * width))
    parts = [chunk(lo, lo + rows) for lo in range(0, x.shape[0], rows)]
    return [torch.cat(p) for p in zip(*parts)]


@dataclass
class TokenTable:
    """The ordinary tokens (no special tokens) and their embedding rows, on the model's device."""

    ids: torch.Tensor  # [V'] long: ordinary token ids, ascending
    emb: torch.Tensor  # [V', d] float32: their embedding rows
    mean_norm: float  # mean row norm (budget.mean_token_norm: the unit of norm budgets and bounds)
    unit: torch.Tensor = field(init=False)  # [V', d] rows scaled to norm 1
    half_sq: torch.Tensor = field(init=False)  # [V'] half the squared norm of each row
    mean_sq_norm: float = field(init=False)  # mean squared row norm

    def __post_init__(self):
        self.unit = F.normalize(self.emb, dim=1)
        self.half_sq = 0.5 * (self.emb**2).sum(1)
        self.mean_sq_norm = float(2 * self.half_sq.mean())


def token_table(lm: LoadedModel, ids: torch.Tensor | None = None) -> TokenTable:
    """The model's ordinary tokens (or the allowed subset `ids` of them) and their float32 embedding rows.

    mean_norm stays the mean over every ordinary token (the unit of norm budgets), whatever `ids` is.
    """
    from .budget import mean_token_norm

    ordinary = lm.ordinary_token_ids()
    if ids is None:
        ids = ordinary
    else:
        ids = torch.unique(torch.as_tensor(ids, dtype=torch.long).cpu().flatten())  # ascending
        if not ids.numel() or not torch.isin(ids, ordinary).all():
            raise UserError("allowed tokens must be a non-empty set of ordinary (non-special) token ids")
    ids = ids.to(lm.device)
    return TokenTable(ids=ids, emb=lm.embedding_matrix.detach().float()[ids], mean_norm=mean_token_norm(lm))


@torch.no_grad()
def nearest_rows(x: torch.Tensor, table: TokenTable, by: str = "cos") -> torch.Tensor:
    """Row of the token table nearest to each vector of x [..., d]: [...] long, on x's device.

    by="cos": highest cosine; by="l2": smallest Euclidean distance.
    """
    flat = x.detach().float().reshape(-1, x.shape[-1]).to(table.emb.device)  # [M, d]

    def best(lo: int, hi: int):
        xc = flat[lo:hi]  # [c, d]
        if by == "cos":
            return ((xc @ table.unit.T).argmax(1),)  # [c, V']: cosine times ||x||, same argmax
        return ((xc @ table.emb.T - table.half_sq).argmax(1),)  # [c, V']: (||x||^2 - ||x - e||^2) / 2

    (rows,) = _by_row_chunks(flat, table.emb.shape[0], best)
    return rows.view(x.shape[:-1]).to(x.device)


def _vocabulary(embeddings: torch.Tensor, allowed_ids: torch.Tensor | None,
                device) -> tuple[torch.Tensor, torch.Tensor]:
    """The candidate rows and their ids: ([V', d] float32 on device, [V'] long on device)."""
    emb = embeddings.detach().to(device=device, dtype=torch.float32)  # [V, d]
    if allowed_ids is None:
        return emb, torch.arange(emb.shape[0], device=device)
    ids = torch.as_tensor(allowed_ids, dtype=torch.long, device=device).flatten()
    if ids.numel() == 0:
        raise UserError("allowed_ids is empty: no token to compare against")
    return emb[ids], ids


def _check_dims(soft: torch.Tensor, embeddings: torch.Tensor) -> None:
    if soft.dim() != 3 or embeddings.dim() != 2 or soft.shape[-1] != embeddings.shape[-1]:
        raise UserError(f"expected soft [N, T, d] and embeddings [V, d], got {tuple(soft.shape)} and "
                        f"{tuple(embeddings.shape)}")


@torch.no_grad()
def nearest_tokens(soft: torch.Tensor, embeddings: torch.Tensor, allowed_ids: torch.Tensor | None = None) -> dict:
    """Nearest token embeddings of each soft vector.

    soft: [N, T, d]; embeddings: [V, d]; allowed_ids: [V'] ids the search is restricted to
    (None = every row). Returns CPU tensors, each [N, T]:
      ids        - the allowed token with the highest cosine to the soft vector;
      cos        - that highest cosine (neighbour by cosine);
      l2         - Euclidean distance to the allowed token closest in L2 (neighbour by L2,
                   which may differ from the neighbour by cosine), from ||x||^2 - 2 x.e + ||e||^2
                   in float32: absolute error about 1e-3 * ||x||, so tiny distances read as ~0;
      norm_ratio - ||soft|| / mean norm of the allowed token embeddings.
    """
    _check_dims(soft, embeddings)
    n, t, d = soft.shape
    x = soft.detach().float().reshape(n * t, d)  # [N*T, d]
    emb, ids = _vocabulary(embeddings, allowed_ids, x.device)  # [V', d], [V']
    emb_norm = emb.norm(dim=1)  # [V']
    emb_sq = emb_norm**2  # [V']
    x_norm = x.norm(dim=1)  # [N*T]

    def chunk(lo: int, hi: int):
        xc, xn = x[lo:hi], x_norm[lo:hi]  # [c, d], [c]
        dots = xc @ emb.T  # [c, V']
        cos = dots / (xn[:, None] * emb_norm[None, :]).clamp_min(1e-12)  # [c, V']
        c_val, c_idx = cos.max(dim=1)
        del cos
        sq = (emb_sq[None, :] - 2 * dots).min(dim=1).values + xn**2  # [c]; ||x - e||^2 at the L2 neighbour
        return ids[c_idx], c_val, sq.clamp_min(0).sqrt()

    best_ids, best_cos, best_l2 = _by_row_chunks(x, emb.shape[0], chunk)
    return {
        "ids": best_ids.view(n, t).cpu(),
        "cos": best_cos.view(n, t).cpu(),
        "l2": best_l2.view(n, t).cpu(),
        "norm_ratio": (x_norm / emb_norm.mean().clamp_min(1e-12)).view(n, t).cpu(),
    }


@torch.no_grad()
def project_to_tokens(soft: torch.Tensor, embeddings: torch.Tensor,
                      allowed_ids: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest-token projection by cosine: (ids [N, T], their embeddings [N, T, d]), on the CPU.

    Feeding the ids (or the embeddings) back to the model and comparing the residual with the
    target is the "projection test".
    """
    ids = nearest_tokens(soft, embeddings, allowed_ids)["ids"]  # [N, T]
    return ids, embeddings.detach().float().cpu()[ids]


@torch.no_grad()
def principal_directions(rows: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean [d] and principal directions [d, d] (columns, by decreasing variance) of rows [M, d].

    The rows are mean-centred; the directions are the eigenvectors of their d x d scatter
    matrix. Products run in float32 chunks summed in float64, the eigendecomposition in
    float64 (V=49152, d=576: about a second on two cores). Both come back in float64.
    """
    mean = rows.detach().to(dtype=torch.float64).mean(0)  # [d]
    mean32 = mean.float()
    d = rows.shape[1]
    step = max(1, _CHUNK_BYTES // (4 * d))
    scatter = torch.zeros(d, d, dtype=torch.float64, device=rows.device)
    for start in range(0, rows.shape[0], step):
        c = rows[start : start + step].detach().float() - mean32  # [c, d]
        scatter += (c.T @ c).double()
    _, vecs = torch.linalg.eigh(scatter)  # ascending eigenvalues
    return mean, vecs.flip(1)


def _relative_errors(x: torch.Tensor, mean: torch.Tensor, directions: torch.Tensor, ks: list[int]) -> dict[int, float]:
    """Mean over rows of ||x - x_k|| / ||x||, x_k = mean + P_k (x - mean), for rows x [M, d]."""
    mean, directions = mean.float(), directions.float()
    sums = {k: 0.0 for k in ks}
    step = max(1, _CHUNK_BYTES // (4 * 4 * x.shape[1]))  # about four [step, d] float32 temporaries
    for start in range(0, x.shape[0], step):
        xc = x[start : start + step].detach().float()  # [c, d]
        norm = xc.norm(dim=1).clamp_min(1e-30)  # [c]
        coords = (xc - mean) @ directions  # [c, d], coordinates along every direction
        # what the top k directions leave out is the part along the others: a tail sum, no cancellation
        tail_sq = (coords**2).flip(1).cumsum(1).flip(1)  # [c, d]: tail_sq[:, j] = sum_{i >= j} coords_i^2
        tail_sq = torch.cat([tail_sq, torch.zeros_like(tail_sq[:, :1])], dim=1)  # [c, d + 1]
        for k in ks:
            sums[k] += float((tail_sq[:, k].sqrt() / norm).sum())
    return {k: sums[k] / x.shape[0] for k in ks}


@torch.no_grad()
def pca_reconstruction_error(soft: torch.Tensor, embeddings: torch.Tensor, ks: list[int]) -> dict:
    """Relative error of reconstructing vectors from the top-k PCA directions of the embeddings.

    The directions come from the mean-centred embedding matrix [V, d]; a vector x is
    reconstructed as x_k = mu + P_k (x - mu) (mu = mean embedding, P_k = projector on the top k
    directions) and the error is ||x - x_k|| / ||x||, averaged over vectors. Returned for the
    soft vectors [N, T, d] and, as a reference, for the token embeddings themselves:
    {"soft": {k: err}, "tokens": {k: err}}. k = d gives 0 (up to rounding).
    """
    _check_dims(soft, embeddings)
    d = embeddings.shape[1]
    ks = [int(k) for k in ks]
    bad = [k for k in ks if not 0 <= k <= d]
    if bad:
        raise UserError(f"PCA ranks {bad} are outside 0..{d}")
    mean, directions = principal_directions(embeddings)
    x = soft.detach().to(device=embeddings.device).reshape(-1, d)  # [N*T, d]
    return {
        "soft": _relative_errors(x, mean, directions, ks),
        "tokens": _relative_errors(embeddings, mean, directions, ks),
    }


def _decode(tokenizer, token_id: int) -> str:
    try:
        return tokenizer.decode([token_id])
    except Exception:  # a tokenizer that cannot decode an id alone
        return f"<{token_id}>"


def _closeness_stats(cos: torch.Tensor, l2: torch.Tensor, soft_norm: torch.Tensor, token_norm: float) -> dict:
    cos, l2, soft_norm = cos.flatten().numpy(), l2.flatten().numpy(), soft_norm.flatten().numpy()
    return {
        "cos_mean": float(cos.mean()),
        "cos_median": float(np.median(cos)),
        "share_cos_gt_0_9": float((cos > 0.9).mean()),
        "l2_mean": float(l2.mean()),
        "l2_median": float(np.median(l2)),
        "soft_norm_mean": float(soft_norm.mean()),
        "norm_ratio": float(soft_norm.mean() / max(token_norm, 1e-12)),
    }


@torch.no_grad()
def manifold_summary(soft: torch.Tensor, embeddings: torch.Tensor, tokenizer, allowed_ids: torch.Tensor | None = None,
                     ks=DEFAULT_PCA_KS, top: int = 20) -> dict:
    """Exp 1b summary of soft vectors [N, T, d], JSON-ready (plain floats, ints and strings).

    Nearest tokens by cosine, L2 distance to the nearest token by L2, norms (token norm = mean
    over the allowed ids), the `top` most frequent nearest tokens decoded, and PCA
    reconstruction errors for the ranks in `ks` that do not exceed d. With T > 1 the
    closeness numbers are repeated without position 0 under "no_pos0".
    """
    _check_dims(soft, embeddings)
    near = nearest_tokens(soft, embeddings, allowed_ids)
    emb, _ = _vocabulary(embeddings, allowed_ids, torch.device("cpu"))
    token_norm = float(emb.norm(dim=1).mean())
    soft_norm = soft.detach().float().cpu().norm(dim=-1)  # [N, T]
    out = {"n_vectors": int(soft.shape[0] * soft.shape[1]), "d_model": int(soft.shape[2]),
           "token_norm_mean": token_norm,
           **_closeness_stats(near["cos"], near["l2"], soft_norm, token_norm)}
    if soft.shape[1] > 1:
        out["no_pos0"] = _closeness_stats(near["cos"][:, 1:], near["l2"][:, 1:], soft_norm[:, 1:], token_norm)
    counts = Counter(near["ids"].flatten().tolist()).most_common(top)
    out["top_nearest_tokens"] = [{"id": int(i), "token": _decode(tokenizer, int(i)), "count": int(c)}
                                 for i, c in counts]
    ks = [int(k) for k in ks if 1 <= int(k) <= soft.shape[2]]
    errors = pca_reconstruction_error(soft, embeddings, ks)
    out["pca_error"] = {kind: {str(k): v for k, v in errs.items()} for kind, errs in errors.items()}
    return out
