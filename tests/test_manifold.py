import json

import pytest
import torch
import torch.nn.functional as F

from softreach import manifold
from softreach.errors import UserError
from softreach.manifold import manifold_summary, nearest_tokens, pca_reconstruction_error, project_to_tokens
from softreach.random_models import random_model
from softreach.residual import residual_at


def _embeddings(v=50, d=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(v, d, generator=g) * (0.5 + torch.rand(v, 1, generator=g))  # [V, d], varied norms


def test_scaled_token_rows_find_their_own_token():
    emb = _embeddings()
    ids = torch.tensor([[3, 7, 7], [0, 49, 12]])  # [N=2, T=3]
    near = nearest_tokens(3 * emb[ids], emb)
    assert torch.equal(near["ids"], ids)
    torch.testing.assert_close(near["cos"], torch.ones(2, 3))
    expected_ratio = 3 * emb[ids].norm(dim=-1) / emb.norm(dim=1).mean()
    torch.testing.assert_close(near["norm_ratio"], expected_ratio)
    assert all(near[k].shape == (2, 3) for k in ("ids", "cos", "l2", "norm_ratio"))


def test_nearest_tokens_match_brute_force_and_do_not_depend_on_chunking(monkeypatch):
    emb = _embeddings(v=40, d=8, seed=1)
    soft = torch.randn(5, 4, 8, generator=torch.Generator().manual_seed(2)) * 2  # [N, T, d]
    x = soft.reshape(-1, 8)
    cos = F.cosine_similarity(x[:, None], emb[None], dim=-1)  # [N*T, V]
    dist = torch.cdist(x, emb)  # [N*T, V]
    near = nearest_tokens(soft, emb)
    assert torch.equal(near["ids"].flatten(), cos.argmax(1))
    torch.testing.assert_close(near["cos"].flatten(), cos.max(1).values)
    torch.testing.assert_close(near["l2"].flatten(), dist.min(1).values, rtol=1e-4, atol=1e-4)
    # the L2 neighbour is not always the cosine neighbour: the test data must show that
    assert not torch.equal(dist.argmin(1), cos.argmax(1))
    monkeypatch.setattr(manifold, "_CHUNK_BYTES", 4 * 40 * 3)  # 3 rows per chunk
    chunked = nearest_tokens(soft, emb)
    for key in near:
        torch.testing.assert_close(chunked[key], near[key])


def test_allowed_ids_restrict_the_search():
    emb = _embeddings()
    allowed = torch.arange(10, 30)
    soft = emb[torch.tensor([[5, 15, 40]])]  # [1, 3, d]: two rows outside the allowed set
    near = nearest_tokens(soft, emb, allowed)
    assert torch.isin(near["ids"], allowed).all()
    assert near["ids"][0, 1] == 15
    assert near["cos"][0, 0] < 1 - 1e-4 and near["cos"][0, 2] < 1 - 1e-4
    torch.testing.assert_close(near["norm_ratio"], soft.norm(dim=-1) / emb[allowed].norm(dim=1).mean())
    with pytest.raises(UserError, match="empty"):
        nearest_tokens(soft, emb, torch.tensor([], dtype=torch.long))


def test_project_to_tokens_returns_the_cosine_neighbours_and_their_rows():
    emb = _embeddings()
    ids = torch.tensor([[1, 2, 3, 4]])
    soft = 3 * emb[ids] + 0.01 * torch.randn(1, 4, emb.shape[1], generator=torch.Generator().manual_seed(3))
    got_ids, projected = project_to_tokens(soft, emb)
    assert torch.equal(got_ids, ids)
    assert torch.equal(projected, emb[ids])


def test_pca_error_is_zero_at_full_rank_and_falls_with_k():
    emb = _embeddings(v=60, d=12, seed=4)
    soft = torch.randn(3, 5, 12, generator=torch.Generator().manual_seed(5))
    ks = [0, 1, 3, 6, 11, 12]
    err = pca_reconstruction_error(soft, emb, ks)
    for kind in ("soft", "tokens"):
        assert err[kind][12] < 1e-6
        values = [err[kind][k] for k in ks]
        assert all(a >= b - 1e-9 for a, b in zip(values, values[1:]))
        assert values[0] > 0.1
    with pytest.raises(UserError, match="outside"):
        pca_reconstruction_error(soft, emb, [13])


def test_pca_error_matches_an_svd_reconstruction():
    emb = _embeddings(v=80, d=10, seed=6)
    soft = torch.randn(4, 3, 10, generator=torch.Generator().manual_seed(7)) * 5
    mu = emb.mean(0)
    _, _, vh = torch.linalg.svd(emb - mu, full_matrices=False)  # rows of vh: directions
    k = 4
    p = vh[:k].T @ vh[:k]  # [d, d] projector on the top k directions
    x = soft.reshape(-1, 10)
    recon = mu + (x - mu) @ p
    expected = ((x - recon).norm(dim=1) / x.norm(dim=1)).mean()
    err = pca_reconstruction_error(soft, emb, [k])
    assert err["soft"][k] == pytest.approx(float(expected), rel=1e-4)


def test_vectors_in_a_low_rank_embedding_subspace_reconstruct_exactly_at_that_rank():
    g = torch.Generator().manual_seed(8)
    d, r = 16, 3
    basis = torch.linalg.qr(torch.randn(d, r, generator=g))[0].T  # [r, d] orthonormal rows
    mu = torch.randn(d, generator=g)
    emb = mu + torch.randn(100, r, generator=g) * torch.tensor([5.0, 3.0, 1.0]) @ basis  # [V, d]
    soft = (mu + torch.randn(6, r, generator=g) @ basis).view(2, 3, d)  # in the same affine subspace
    err = pca_reconstruction_error(soft, emb, [r - 1, r])
    assert err["tokens"][r] < 1e-5 and err["soft"][r] < 1e-5
    assert err["tokens"][r - 1] > 1e-3 and err["soft"][r - 1] > 1e-3


def test_manifold_summary_is_json_ready_and_decodes_nearest_tokens():
    lm = random_model("gpt_neox")
    emb = lm.embedding_matrix
    allowed = lm.ordinary_token_ids()
    ids = allowed[torch.tensor([[10, 10, 10, 20], [10, 30, 20, 40]])]  # [2, 4]
    soft = 2 * emb[ids].detach()
    out = manifold_summary(soft, emb, lm.tokenizer, allowed, ks=(1, 10, 32, 100))
    json.dumps(out)
    assert out["share_cos_gt_0_9"] == 1.0 and out["cos_mean"] == pytest.approx(1.0, abs=1e-5)
    assert out["n_vectors"] == 8 and out["d_model"] == 32
    top = out["top_nearest_tokens"]
    assert top[0] == {"id": int(allowed[10]), "token": lm.tokenizer.decode([int(allowed[10])]), "count": 4}
    assert sum(row["count"] for row in top) == 8
    assert set(out["pca_error"]["soft"]) == {"1", "10", "32"}  # 100 > d is dropped
    assert out["pca_error"]["tokens"]["32"] < 1e-5
    assert out["token_norm_mean"] == pytest.approx(float(emb[allowed].norm(dim=1).mean()), rel=1e-5)
    assert out["norm_ratio"] == pytest.approx(out["soft_norm_mean"] / out["token_norm_mean"], rel=1e-6)
    assert out["no_pos0"]["share_cos_gt_0_9"] == 1.0


def test_projected_tokens_reproduce_their_residuals():
    lm = random_model("llama")
    emb = lm.embedding_matrix.detach()
    allowed = lm.ordinary_token_ids()
    ids = allowed[torch.randint(0, allowed.numel(), (2, 6), generator=torch.Generator().manual_seed(9))]
    soft = 3 * emb[ids] + 0.05 * torch.randn(2, 6, lm.d_model, generator=torch.Generator().manual_seed(10))
    got_ids, projected = project_to_tokens(soft, emb, allowed)
    assert torch.equal(got_ids, ids)
    via_ids = residual_at(lm.model, 2, input_ids=got_ids)
    via_embeddings = residual_at(lm.model, 2, inputs_embeds=projected)
    assert F.cosine_similarity(via_ids, via_embeddings, dim=-1).min() > 0.9999
