"""How each experiment of the registry builds its targets and conditions on a SuiteRunner.

`run_<name>(runner)` for every experiment name in experiments/registry.py; each skips what exists.
"""
from __future__ import annotations

import torch

from ..budget import folder_suffix
from ..results.folder import atomic_write_text, dumps_json
from ..targets import residuals_of_tokens, sample_windows
from .registry import EXP3_ALPHAS, EXP5_FRACTIONS


def run_exp1(r) -> None:
    r.solve("exp1", r.targets, "exp1", tokens=r.tokens,
            row_fields={"window": r.target_idx.tolist(), "text": [r.lm.tokenizer.decode(t) for t in r.tokens]},
            after=lambda res: {"trajectories.json": trajectories(r, res.soft_prompt)})


def trajectories(r, soft: torch.Tensor) -> dict:
    """All-layer residuals of a few solutions beside those of the targets' own tokens."""
    from ..residual import all_layer_residuals

    k = min(r.cfg.trajectory_problems, soft.shape[0])
    emb = r.lm.embedding_matrix.detach()[r.tokens[:k].to(r.lm.device)]
    a = all_layer_residuals(r.lm.model, soft[:k].to(r.lm.device)).float().cpu()  # [L+1, k, T, d]
    b = all_layer_residuals(r.lm.model, emb).float().cpu()
    cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)  # [L+1, k, T]
    return {"layers": list(range(a.shape[0])), "target_layer": r.layer, "problems": list(range(k)),
            "cos_soft_vs_tokens": cos.mean(-1).T.tolist(),
            "cos_soft_vs_tokens_no_pos0": cos[:, :, 1:].mean(-1).T.tolist(),
            "norm_soft": a.norm(dim=-1)[:, :, 1:].mean(-1).T.tolist(),
            "norm_tokens": b.norm(dim=-1)[:, :, 1:].mean(-1).T.tolist(),
            "norms_exclude_pos0": True}


def run_exp1b(r) -> None:
    for budget in r.cfg.run.norm_budgets:
        _project_exp1(r, folder_suffix(budget), budget)


def _project_exp1(r, suffix: str, budget: float) -> None:
    """Exp 1b at one budget: the Exp 1 solutions of that budget projected to their nearest tokens."""
    if r.done("exp1b" + suffix):
        return
    if not r.done("exp1" + suffix):
        run_exp1(r)
    from ..condition import evaluate_inputs
    from ..manifold import manifold_summary, nearest_tokens, project_to_tokens

    soft = r.load_soft_prompt("exp1" + suffix)  # [N, T, d]
    emb = r.lm.embedding_matrix.detach().float().cpu()
    allowed = r.lm.ordinary_token_ids()
    analysis = manifold_summary(soft, emb, r.lm.tokenizer, allowed)
    analysis["nearest_cos_values"] = nearest_tokens(soft, emb, allowed)["cos"].flatten().tolist()
    ids, projected = project_to_tokens(soft, emb, allowed)
    result = evaluate_inputs(r.lm, r.layer, projected, r.targets, r.cfg.run.seed, r.mu,
                             floor_draws=r.cfg.run.floor_draws)
    analysis["projection"] = {k: result.summary[k] for k in ("cos", "cos_no_pos0", "mse", "floor_cos",
                                                              "floor_cos_no_pos0") if k in result.summary}
    rows = {"projected_text": [r.lm.tokenizer.decode(t) for t in ids]}
    # the projected token ids are stored so anyone can re-evaluate them from input_ids alone; real
    # tokens are not held to the budget of the solutions they come from (config says which that was)
    r.finish("exp1b" + suffix, result, "exp1b", 1, r.cfg.run.optim, None, rows, {"analysis.json": analysis},
             extra_tensors={"projected_tokens": ids.long()}, budget=budget, budget_applies=False)


def run_exp4(r) -> None:
    for name in ("exp4_no_attn", "exp4_no_mlp"):
        r.solve(name, r.targets, "exp4", tokens=r.tokens)
    for budget in r.cfg.run.norm_budgets:
        suffix = folder_suffix(budget)
        if r.done("exp1" + suffix):
            atomic_write_text(r.out / f"exp4_analysis{suffix}.json", dumps_json(ablation_correlations(r, suffix)))


def ablation_correlations(r, suffix: str = "") -> dict:
    """Spearman and Pearson correlations of per-target cosines between the full model and its ablations."""
    from ..stats import correlations

    cos = {key: [p["cos"] for p in r.load_problems(name + suffix)]
           for key, name in (("full", "exp1"), ("no_attn", "exp4_no_attn"), ("no_mlp", "exp4_no_mlp"))}
    return {"correlations": [{"a": a, "b": b, **correlations(cos[a], cos[b])}
                             for a, b in (("full", "no_attn"), ("full", "no_mlp"), ("no_attn", "no_mlp"))]}


def run_exp2a(r) -> None:
    if r.all_done("exp2a"):
        return
    from ..synthetic_targets import distribution_matched_targets, fit_position_gaussian

    mean, chol, jitter = fit_position_gaussian(r.moment_residuals(), return_jitter=True)
    target = distribution_matched_targets(mean, chol, r.cfg.run.targets, r.cfg.run.seed + 21)
    check = distribution_matched_targets(mean, chol, 2000, r.cfg.run.seed + 22)  # [2000, T, d]
    emp_cov = torch.einsum("ntd,nte->tde", check - check.mean(0), check - check.mean(0)) / (check.shape[0] - 1)
    cov = chol @ chol.transpose(-1, -2)
    analysis = {"moment_windows": r.cfg.moment_windows, "check_samples": check.shape[0],
                "max_jitter": float(jitter.max()), "positions_jittered": int((jitter > 0).sum()),
                "mean_rel_error": float((check.mean(0) - mean).norm() / mean.norm()),
                # sample mean minus intended mean, in standard errors, worst over positions and dims
                "mean_max_abs_z": float(((check.mean(0) - mean) / (cov.diagonal(dim1=-2, dim2=-1).sqrt()
                                                                   / check.shape[0] ** 0.5)).abs().max()),
                "cov_rel_error": float((emp_cov - cov).norm() / cov.norm())}
    r.solve("exp2a", target, "exp2a", extra_json={"analysis.json": analysis})


def run_exp2b(r) -> None:
    if r.all_done("exp2b"):
        return
    from ..synthetic_targets import raw_random_targets, typical_norms

    norms = typical_norms(r.moment_residuals())  # [T]
    target = raw_random_targets(norms, r.cfg.run.targets, r.lm.d_model, r.cfg.run.seed + 23)
    r.solve("exp2b", target, "exp2b", extra_json={"analysis.json": {"typical_norms": norms.tolist()}})


def run_exp3(r) -> None:
    if r.all_done("exp3"):
        return
    from ..synthetic_targets import interpolated_targets

    idx = sample_windows(r.windows, 2 * r.cfg.exp3_pairs, r.cfg.run.seed + 31)
    res = residuals_of_tokens(r.lm, r.windows.tokens[idx], r.layer)  # [2P, T, d]
    target, pair, alpha = interpolated_targets(res[0::2], res[1::2], list(EXP3_ALPHAS))
    r.solve("exp3", target, "exp3", row_fields={"pair": [int(p) for p in pair], "alpha": [float(a) for a in alpha]})


def run_exp5(r) -> None:
    if r.all_done("exp5_raw") and r.all_done("exp5_pca"):
        return
    from ..synthetic_targets import corrupt_raw_dimensions, corrupt_top_pca

    idx = sample_windows(r.windows, r.cfg.exp5_targets, r.cfg.run.seed + 41)
    base = residuals_of_tokens(r.lm, r.windows.tokens[idx], r.layer)  # [K, T, d]
    ref = r.moment_residuals()
    sigma = ref.std(0)  # [T, d]
    seed = r.cfg.run.seed
    variants = {
        "exp5_raw": lambda f, k: corrupt_raw_dimensions(base, f, sigma, seed + 51 + k),
        "exp5_pca": lambda f, k: corrupt_top_pca(base, f, ref, seed + 71 + k, per_position=True),
    }
    for name, corrupt in variants.items():
        target = torch.cat([corrupt(f, k) for k, f in enumerate(EXP5_FRACTIONS)])
        fractions = [float(f) for f in EXP5_FRACTIONS for _ in range(base.shape[0])]
        source = [int(i) for _ in EXP5_FRACTIONS for i in range(base.shape[0])]
        r.solve(name, target, "exp5", row_fields={"fraction": fractions, "source_target": source})
