"""Each constrained parametrisation does what it says, on tiny random models."""
import pytest
import torch

from softreach import manifold
from softreach.budget import mean_token_norm
from softreach.ladder.config import LadderSettings
from softreach.constraints import NearestPenalty, NormBound, StraightThrough, TokenMixture
from softreach.errors import UserError
from softreach.ladder.rungs import rung_settings, run_rung, setting_name, start_vectors
from softreach.manifold import nearest_rows, nearest_tokens, token_table
from softreach.metrics import reachability_loss
from softreach.optimize import OptimConfig, initial_prompts, optimise
from softreach.residual import residual_at
from softreach.targets import residuals_of_tokens

LAYER = 2


def _problem(lm, n=3, t=6, seed=0):
    ids = torch.randint(2, 100, (n, t), generator=torch.Generator().manual_seed(seed))
    return ids, residuals_of_tokens(lm, ids, LAYER)


def test_token_table_holds_the_ordinary_tokens(tiny_lm):
    table = token_table(tiny_lm)
    assert table.ids.tolist() == list(range(2, 102))  # the char tokenizer: <unk>=0 and <eos>=1 are special
    torch.testing.assert_close(table.emb, tiny_lm.embedding_matrix[table.ids])
    assert table.mean_norm == mean_token_norm(tiny_lm)  # the budget unit, from one place
    assert table.mean_norm == pytest.approx(float(table.emb.norm(dim=1).mean()), rel=1e-6)


def test_nearest_rows_agree_with_nearest_tokens_and_do_not_depend_on_chunking(tiny_lm, monkeypatch):
    table = token_table(tiny_lm)
    x = torch.randn(2, 5, tiny_lm.d_model)
    rows = nearest_rows(x, table, "cos")
    assert torch.equal(table.ids[rows], nearest_tokens(x, tiny_lm.embedding_matrix.detach(), table.ids)["ids"])
    l2 = nearest_rows(x, table, "l2")
    brute = torch.cdist(x.reshape(-1, x.shape[-1]), table.emb).argmin(1).view(2, 5)
    assert torch.equal(l2, brute)
    monkeypatch.setattr(manifold, "_CHUNK_BYTES", 4 * table.ids.numel() * 3)  # 3 rows per chunk
    assert torch.equal(nearest_rows(x, table, "cos"), rows) and torch.equal(nearest_rows(x, table, "l2"), l2)


def test_norm_bound_holds_after_every_step(tiny_lm):
    _, target = _problem(tiny_lm)
    table = token_table(tiny_lm)
    param = NormBound(2.0 * table.mean_norm)
    init = initial_prompts([(i, 0) for i in range(3)], 6, tiny_lm.d_model, 1.0, seed=0)

    seen = []

    class Watch(NormBound):
        def inputs(self, p):
            seen.append(p.detach().norm(dim=-1).max().item())
            return p

    watch = Watch(param.max_norm)
    watch.after_step(init)
    assert init.norm(dim=-1).max() <= param.max_norm * (1 + 1e-5)
    res = optimise(tiny_lm, LAYER, target, init, OptimConfig(steps=10, lr=0.05), param=watch)
    assert max(seen) <= param.max_norm * (1 + 1e-5)  # every forward saw bounded vectors
    assert res.soft_prompt.norm(dim=-1).max() <= param.max_norm * (1 + 1e-5)
    assert res.soft_prompt.norm(dim=-1).min() > 0.5 * param.max_norm  # the bound is active, not a collapse


@pytest.mark.parametrize("kind", ["l2", "cos"])
def test_nearest_penalty_is_zero_at_token_rows_and_positive_off_them(tiny_lm, kind):
    table = token_table(tiny_lm)
    param = NearestPenalty(table, weight=0.5, kind=kind)
    on = table.emb[torch.tensor([[0, 5, 7], [1, 2, 99]])]  # [2, 3, d] exact token rows
    assert param.penalty(on, on).abs().max() < 1e-6
    off = (on + 0.3 * table.mean_norm * torch.randn_like(on)).requires_grad_(True)
    pen = param.penalty(off, off)
    assert pen.shape == (2,) and (pen > 1e-4).all()
    pen.sum().backward()
    assert off.grad.abs().sum() > 0  # the gradient pulls towards the nearest token


def test_l2_penalty_is_the_scaled_squared_distance_to_the_nearest_token(tiny_lm):
    table = token_table(tiny_lm)
    x = torch.randn(2, 4, tiny_lm.d_model) * table.mean_norm
    d2 = torch.cdist(x.reshape(-1, x.shape[-1]), table.emb).min(1).values.view(2, 4) ** 2
    expected = 0.3 * (d2 / table.mean_sq_norm).mean(1)
    torch.testing.assert_close(NearestPenalty(table, 0.3).penalty(x, x), expected, rtol=1e-4, atol=1e-6)


def test_mixture_inputs_are_convex_combinations_of_token_embeddings(tiny_lm):
    table = token_table(tiny_lm)
    param = TokenMixture(table, tau=0.7)
    logits = torch.randn(2, 4, table.ids.numel())
    w = param.weights(logits)
    assert (w >= 0).all()
    torch.testing.assert_close(w.sum(-1), torch.ones(2, 4))
    torch.testing.assert_close(param.inputs(logits), torch.einsum("btv,vd->btd", w, table.emb), rtol=1e-5, atol=1e-6)
    peaked = torch.full((1, 3, table.ids.numel()), -1e4)
    peaked[0, torch.arange(3), torch.tensor([4, 8, 15])] = 0.0
    torch.testing.assert_close(param.inputs(peaked)[0], table.emb[torch.tensor([4, 8, 15])])
    assert param.argmax_ids(peaked).tolist() == [table.ids[[4, 8, 15]].tolist()]
    with pytest.raises(UserError):
        TokenMixture(table, tau=0.0)


def test_straight_through_forward_is_the_nearest_tokens_and_the_gradient_reaches_the_vectors(tiny_lm):
    table = token_table(tiny_lm)
    ids, target = _problem(tiny_lm, n=2, t=5)
    param = StraightThrough(table)
    soft = (table.emb[torch.randint(0, 100, (2, 5))] + 0.02 * torch.randn(2, 5, tiny_lm.d_model)).requires_grad_(True)
    inputs = param.inputs(soft)
    nearest = param.nearest_ids(soft)
    torch.testing.assert_close(inputs.detach(), tiny_lm.embedding_matrix[nearest], rtol=0, atol=1e-6)
    h = residual_at(tiny_lm.model, LAYER, inputs_embeds=inputs)
    with torch.no_grad():
        h_ids = residual_at(tiny_lm.model, LAYER, input_ids=nearest)
    assert torch.nn.functional.cosine_similarity(h, h_ids, dim=-1).min() > 0.9999
    loss, _ = reachability_loss(h, target)
    inputs.retain_grad()
    loss.sum().backward()
    assert soft.grad is not None and soft.grad.abs().sum() > 0
    torch.testing.assert_close(soft.grad, inputs.grad)  # straight through: identical gradients
    assert len(param.history) == 1 and torch.equal(param.history[0], nearest)


def test_projected_rung_keeps_the_best_ids_by_loss(tiny_lm):
    ids, target = _problem(tiny_lm)
    settings = LadderSettings(steps=12, projected_lr=0.05, floor_draws=0)
    out = run_rung(tiny_lm, LAYER, target, "projected", None, settings, seed=1)["projected"]
    assert out.ids.shape == ids.shape
    torch.testing.assert_close(out.inputs, tiny_lm.embedding_matrix[out.ids])
    fresh, _ = reachability_loss(residuals_of_tokens(tiny_lm, out.ids, LAYER), target, settings.mse_weight,
                                 settings.skip_pos0, settings.mse_norm)
    best_seen = out.loss_curve.min(1).values
    assert (fresh <= best_seen + 1e-5).all()  # never worse than the best step of the run


def test_mixture_rung_gives_the_continuous_result_and_its_argmax_tokens(tiny_lm):
    _, target = _problem(tiny_lm)
    settings = LadderSettings(steps=10, floor_draws=0)
    outs = run_rung(tiny_lm, LAYER, target, "mixture", 1.0, settings, seed=0)
    assert set(outs) == {"mixture_tau1", "mixture_tau1_argmax"}
    cont, disc = outs["mixture_tau1"], outs["mixture_tau1_argmax"]
    assert cont.ids is None and disc.ids is not None
    torch.testing.assert_close(disc.inputs, tiny_lm.embedding_matrix[disc.ids])
    assert cont.forward_passes == [10] * 3 and disc.forward_passes == [10] * 3


def test_norm_bound_and_penalty_rungs_run_through_the_engine(tiny_lm):
    _, target = _problem(tiny_lm)
    settings = LadderSettings(steps=10, floor_draws=0)
    table = token_table(tiny_lm)
    out = run_rung(tiny_lm, LAYER, target, "norm_bound", 1.0, settings, seed=0)["norm_bound_c1"]
    assert out.inputs.norm(dim=-1).max() <= table.mean_norm * (1 + 1e-5)
    out = run_rung(tiny_lm, LAYER, target, "nearest_penalty", 10.0, settings, seed=0)["nearest_penalty_w10"]
    assert out.ids is None and out.loss_curve.shape == (3, 10)


def test_baselines(tiny_lm):
    ids, target = _problem(tiny_lm)
    settings = LadderSettings(steps=5, floor_draws=0)
    own = run_rung(tiny_lm, LAYER, target, "own_tokens", None, settings, 0, tokens=ids)["own_tokens"]
    assert torch.equal(own.ids, ids) and own.forward_passes == [0, 0, 0]
    h = residuals_of_tokens(tiny_lm, own.ids, LAYER)
    assert torch.nn.functional.cosine_similarity(h, target, dim=-1).min() > 0.9999
    rnd = run_rung(tiny_lm, LAYER, target, "random_tokens", None, settings, 0)["random_tokens"]
    assert rnd.ids.shape == ids.shape and (rnd.ids >= 2).all()
    # every vector rung starts from these same random tokens (init="tokens")
    torch.testing.assert_close(start_vectors(tiny_lm, token_table(tiny_lm), 3, 6, settings, 0), rnd.inputs)
    normal = start_vectors(tiny_lm, token_table(tiny_lm), 3, 6, LadderSettings(init="normal"), 0)
    assert normal.std() > 0.5  # the log's N(0, 1) start
    free = run_rung(tiny_lm, LAYER, target, "free", None, settings, 0)["free"]
    proj = run_rung(tiny_lm, LAYER, target, "projection", None, settings, 0, free=free)["projection"]
    assert torch.equal(proj.ids, token_table(tiny_lm).ids[nearest_rows(free.inputs, token_table(tiny_lm))])
    assert proj.forward_passes == [5, 5, 5]  # the free rung's steps; projecting needs no forward
    with pytest.raises(UserError, match="own_tokens"):
        run_rung(tiny_lm, LAYER, target, "own_tokens", None, settings, 0)
    with pytest.raises(UserError, match="free rung"):
        run_rung(tiny_lm, LAYER, target, "projection", None, settings, 0)


def test_setting_names_and_validation():
    s = LadderSettings(norm_bounds=(1, 2.5), penalty_weights=(0.1,), mixture_taus=(1,))
    assert [n for n, _ in rung_settings("norm_bound", s)] == ["norm_bound_c1", "norm_bound_c2.5"]
    assert rung_settings("nearest_penalty", s) == [("nearest_penalty_w0.1", 0.1)]
    assert setting_name("gcg", None) == "gcg"
    with pytest.raises(UserError, match="unknown rung"):
        rung_settings("bogus", s)
    for bad in (dict(norm_bounds=(0,)), dict(penalty_weights=(-1,)), dict(mixture_taus=(0,)), dict(steps=0),
                dict(gcg_budget=1), dict(gcg_init="x"), dict(init="x"), dict(penalty_kind="x"), dict(lr=float("nan"))):
        with pytest.raises(UserError):
            LadderSettings(**bad)
