"""The experiment sections of the report (Exp 1 to Exp 5), then budgeted and unknown result folders."""
from __future__ import annotations

import json

import numpy as np

from .. import plots
from ..experiments.registry import CONDITIONS, EXPERIMENTS
from ..stats import correlations
from .blocks import absent, condition_block, figure
from .format import fmt, table
from ..results.folder import read_json
from .load import Condition, Run, same_targets, side_file

ABLATION_LABELS = {"exp1": "Full model", "exp4_no_attn": "No attention (FFN only)",
                   "exp4_no_mlp": "No MLP (attention only)"}
ABLATION_KEYS = {"exp1": "full", "exp4_no_attn": "no_attn", "exp4_no_mlp": "no_mlp"}


def exp1(run: Run) -> list[str]:
    """Exp 1: the exp1/ block, then the all-layer trajectories (exp1/trajectories.json)."""
    out = ["## " + EXPERIMENTS["exp1"].heading, ""]
    if "exp1" not in run.conditions:
        return out + absent("Exp 1 (`exp1/`)")
    out += condition_block(run, run.conditions["exp1"])
    path = side_file(run, "exp1", "trajectories.json")
    if path is None:
        return out + absent("all-layer trajectories (`exp1/trajectories.json`)")
    traj = read_json(path, missing_ok=True)
    cos = np.asarray(traj.get("cos_soft_vs_tokens", []), dtype=np.float64)  # [P, layers]
    out += ["### All-layer trajectories", "",
            f"Residual produced by the soft prompt vs by the target's real tokens, at every layer, for "
            f"{cos.shape[0]} targets (problems {traj.get('problems')}); target layer {traj.get('target_layer')}.", ""]
    if cos.size:
        rows = []
        for j, layer in enumerate(traj.get("layers", [])):
            cells = [str(layer), fmt(float(np.nanmedian(cos[:, j])))]
            for key in ("norm_soft", "norm_tokens"):
                n = np.asarray(traj.get(key) or [], dtype=np.float64)
                cells.append(fmt(float(np.nanmedian(n[:, j])), 3) if n.ndim == 2 and n.shape[1] > j else "—")
            rows.append(cells)
        out += table(["layer", "median cos soft vs tokens", "median norm soft", "median norm tokens"], rows) + [""]
        out += [figure(run, "trajectories.png", "all-layer trajectories", plots.trajectories, traj,
                       run.conditions["exp1"].median("floor_cos")), ""]
    return out


def exp1b(run: Run) -> list[str]:
    """Exp 1b: the exp1b/ block, then the embedding-distance analysis (exp1b/analysis.json)."""
    out = ["## " + EXPERIMENTS["exp1b"].heading, ""]
    x = run.conditions.get("exp1b")
    path = side_file(run, "exp1b", "analysis.json")
    if x is None and path is None:
        return out + absent("Exp 1b (`exp1b/`)")
    if x is not None:
        out += condition_block(run, x)
        if "exp1" in run.conditions:
            out += [f"Feeding the nearest tokens instead of the soft prompts reaches median cosine "
                    f"{fmt(x.median('cos'))}, against {fmt(run.conditions['exp1'].median('cos'))} for the soft prompts "
                    f"and a random-token floor of {fmt(x.median('floor_cos'))}.", ""]
    if path is None:
        return out + absent("the embedding-distance analysis (`exp1b/analysis.json`)")
    a = read_json(path, missing_ok=True)
    rows = []
    for label, stats in (("all positions", a), ("without position 0", a.get("no_pos0") or {})):
        if not stats:
            continue
        share = stats.get("share_cos_gt_0_9")
        rows += [[f"cosine to the nearest token embedding, mean / median ({label})",
                  f"{fmt(stats.get('cos_mean'), 3)} / {fmt(stats.get('cos_median'), 3)}"],
                 [f"L2 distance to the nearest token embedding, mean / median ({label})",
                  f"{fmt(stats.get('l2_mean'), 3)} / {fmt(stats.get('l2_median'), 3)}"],
                 [f"optimised input norm, mean ({label})", fmt(stats.get("soft_norm_mean"), 3)],
                 [f"norm ratio, optimised / token ({label})", fmt(stats.get("norm_ratio"), 2)],
                 [f"share of optimised vectors with nearest-token cos > 0.9 ({label})",
                  f"{100 * share:.1f}%" if isinstance(share, (int, float)) else "—"]]
    rows.append(["token embedding norm (mean over ordinary tokens)", fmt(a.get("token_norm_mean"), 3)])
    out += ["### Embedding distance", ""] + table(["quantity", "value"], rows) + [""]
    top = a.get("top_nearest_tokens") or []
    if top:
        shown = [f"{_code(json.dumps(t['token'], ensure_ascii=False))} ×{t['count']}" for t in top[:20]]
        out += ["Most frequent nearest tokens: " + ", ".join(shown), ""]
    pca = a.get("pca_error") or {}
    if pca:
        ks = sorted({k for errs in pca.values() for k in errs}, key=float)
        out += ["Relative error of reconstruction (||x - x_k|| / ||x||, mean over vectors) from the top-k PCA "
                "directions of the (centred) embedding matrix:", ""]
        out += table(["k"] + list(pca), [[k] + [fmt(pca[v].get(k)) for v in pca] for k in ks]) + [""]
    out += [figure(run, "embedding_distance.png", "nearest-token cosine", plots.embedding_distance, a), ""]
    return out


def _code(s: str) -> str:
    """An inline code span that survives backticks in token strings."""
    return f"`` {s} ``" if "`" in s else f"`{s}`"


def simple(run: Run, name: str, title: str) -> list[str]:
    """A section holding only the block of one result folder (Exp 2a, Exp 2b, a lone folder)."""
    out = [f"## {title}", ""]
    if name not in run.conditions:
        return out + absent(f"{CONDITIONS[name].label} (`{name}/`)")
    return out + condition_block(run, run.conditions[name])


def _alpha_note(a: float) -> str:
    if a == 0:
        return "target B (real)"
    if a == 1:
        return "target A (real)"
    if a == 0.5:
        return "midpoint"
    if 0 < a < 1:
        return "interpolation"
    return "extrapolation beyond " + ("B" if a < 0 else "A")


def exp3(run: Run) -> list[str]:
    """Exp 3: the exp3/ block, the median cosine by α and the α figure."""
    out = ["## " + EXPERIMENTS["exp3"].heading, ""]
    x = run.conditions.get("exp3")
    if x is None:
        return out + absent("Exp 3 (`exp3/`)")
    out += condition_block(run, x)
    alpha, pair, cos = x.column("alpha"), x.column("pair"), x.column("cos")
    if not np.isfinite(alpha).any():
        return out + ["_The rows carry no `alpha`; no table by α._", ""]
    rows = []
    for a in np.unique(alpha[np.isfinite(alpha)]):
        m = alpha == a
        sub = Condition(x.name, x.path, x.config, {}, [r for r, k in zip(x.rows, m) if k])
        rows.append([f"{a:.2f}", fmt(sub.median("cos")), fmt(sub.median("cos_no_pos0")), fmt(sub.median("mse")),
                     fmt(sub.median("floor_cos")), str(len(np.unique(pair[m]))), _alpha_note(float(a))])
    out += ["### Median cosine by α", "", "Target = α·A + (1 − α)·B for pairs (A, B) of real targets.", ""]
    out += table(["alpha", "median cos", "median cos w/o pos 0", "median MSE", "floor", "pairs", "description"],
                 rows) + [""]
    by_pair = {}
    for p, a, c in zip(pair, alpha, cos):
        by_pair.setdefault(p, {})[a] = c
    full = [d for d in by_pair.values() if {0.0, 0.5, 1.0} <= set(d)]
    if full:
        dips = sum(d[0.5] < min(d[0.0], d[1.0]) for d in full)
        out += [f"Midpoint (α = 0.5) below both endpoints in {dips} of {len(full)} pairs.", ""]
    out += [figure(run, "alpha.png", "reachability vs alpha", plots.alpha_curve, alpha, pair, cos,
                   x.column("floor_cos")), ""]
    return out


def _correlation_rows(run: Run) -> tuple[list[dict], str]:
    """Per-target difficulty correlations between model variants: from exp4_analysis.json, else computed here."""
    saved = read_json(run.root / "exp4_analysis.json", missing_ok=True) if not run.single else None
    if saved and saved.get("correlations"):
        return saved["correlations"], "from `exp4_analysis.json`"
    names = [n for n in ABLATION_KEYS if n in run.conditions]
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ca, cb = run.conditions[a].column("cos"), run.conditions[b].column("cos")
            m = np.isfinite(ca) & np.isfinite(cb)
            if ca.size != cb.size or m.sum() < 3:
                continue
            out.append({"a": ABLATION_KEYS[a], "b": ABLATION_KEYS[b], **correlations(ca[m], cb[m])})
    return out, "computed by the report (`exp4_analysis.json` absent)"


def exp4(run: Run) -> list[str]:
    """Exp 4: each ablation against the full model (Exp 1), difficulty correlations, then its blocks."""
    out = ["## " + EXPERIMENTS["exp4"].heading, ""]
    variants = [n for n in ("exp4_no_attn", "exp4_no_mlp") if n in run.conditions]
    if not variants:
        return out + absent("Exp 4 (`exp4_no_attn/`, `exp4_no_mlp/`)")
    full = run.conditions.get("exp1")
    corr, source = _correlation_rows(run)
    by_b = {c.get("b"): c for c in corr if c.get("a") == "full"}
    rows = []
    for name in (["exp1"] if full else []) + variants:
        x = run.conditions[name]
        delta, better, rho, r = "—", "—", "—", "—"
        if name != "exp1" and full is not None:
            delta = f"{x.median('cos') - full.median('cos'):+.4f}"
            if same_targets(x, full):
                k = int(np.sum(x.column("cos") > full.column("cos")))
                better = f"{k}/{len(x.rows)} ({100 * k / max(1, len(x.rows)):.0f}%)"
            else:
                better = "n/a (different targets)"
        c = by_b.get(ABLATION_KEYS[name])
        if c:
            rho = f"{fmt(c.get('spearman_rho'), 3)} (p {fmt(c.get('p_value'), 3)})"
            r = f"{fmt(c.get('pearson_r'), 3)} (p {fmt(c.get('pearson_p'), 3)})"
        rows.append([ABLATION_LABELS[name], f"`{name}/`", fmt(x.median("cos")), fmt(x.median("cos_no_pos0")), delta,
                     better, rho, r])
    out += table(["Variant", "folder", "median cos", "median cos w/o pos 0", "Δ median from full",
                  "better than full", "Spearman ρ vs full (p)", "Pearson r vs full (p)"], rows) + [""]
    if full is None:
        out += ["_Exp 1 (the full model on the same targets) is missing, so there are no deltas._", ""]
    if corr:
        out += [f"Per-target difficulty correlations ({source}):", ""]
        out += table(["a", "b", "Spearman ρ", "p", "Pearson r", "p"],
                     [[str(c.get("a")), str(c.get("b")), fmt(c.get("spearman_rho"), 3), fmt(c.get("p_value"), 3),
                       fmt(c.get("pearson_r"), 3), fmt(c.get("pearson_p"), 3)] for c in corr]) + [""]
    shown = {ABLATION_LABELS[n]: (run.conditions[n].column("cos"), run.conditions[n].median("floor_cos"))
             for n in (["exp1"] if full else []) + variants}
    paired = full is None or all(same_targets(run.conditions[n], full) for n in variants)
    out += [figure(run, "ablation.png", "ablation comparison", plots.ablation_comparison, shown, paired=paired), ""]
    for name in variants:
        out += condition_block(run, run.conditions[name])
    return out


def exp5(run: Run) -> list[str]:
    """Exp 5: medians by corrupted fraction for both variants, the corruption figure, then their blocks."""
    out = ["## " + EXPERIMENTS["exp5"].heading, ""]
    variants = {n: run.conditions[n] for n in ("exp5_raw", "exp5_pca") if n in run.conditions}
    if not variants:
        return out + absent("Exp 5 (`exp5_raw/`, `exp5_pca/`)")
    fractions = sorted({float(f) for x in variants.values() for f in x.column("fraction") if np.isfinite(f)})
    header, rows = ["fraction"], []
    for name in ("exp5_raw", "exp5_pca"):
        short = "raw (A)" if name == "exp5_raw" else "PCA (B)"
        header += [f"{short} median cos", f"{short} w/o pos 0", f"{short} floor"]
    for f in fractions:
        cells = [f"{f:.2f}"]
        for name in ("exp5_raw", "exp5_pca"):
            x = variants.get(name)
            if x is None:
                cells += ["—"] * 3
                continue
            sub = Condition(x.name, x.path, x.config, {}, [r for r, v in zip(x.rows, x.column("fraction")) if v == f])
            cells += [fmt(sub.median("cos")), fmt(sub.median("cos_no_pos0")), fmt(sub.median("floor_cos"))]
        rows.append(cells)
    out += ["(A) replaces a fraction of raw dimensions with N(0, σ_dim); (B) replaces the top fraction of PCA "
            "directions of real residuals with draws from their empirical distribution.", ""]
    for name in ("exp5_raw", "exp5_pca"):
        if name not in variants:
            out += absent(f"{CONDITIONS[name].label} (`{name}/`)")
    if not fractions:
        out += ["_The rows carry no `fraction`; no table by fraction._", ""]
    else:
        out += table(header, rows) + [""]
        shown = {("raw dimensions (A)" if n == "exp5_raw" else "PCA directions (B)"):
                 (x.column("fraction"), x.column("cos"), x.column("floor_cos")) for n, x in variants.items()}
        out += [figure(run, "corruption.png", "corruption curves", plots.corruption_curves, shown), ""]
    for x in variants.values():
        out += condition_block(run, x)
    return out


def others(run: Run) -> list[str]:
    """One block per result folder of no known experiment."""
    extra = [x for x in run.conditions.values() if x.base not in CONDITIONS]
    if not extra:
        return []
    out = ["## Other result folders", ""]
    for x in extra:
        out += condition_block(run, x)
    return out


def budgeted(run: Run) -> list[str]:
    """One generic block per result folder of a known experiment at a finite norm budget."""
    shown = [x for x in run.conditions.values() if not x.free and x.base in CONDITIONS]
    if not shown:
        return []
    out = ["## Conditions at a norm budget", "",
           "One block per budgeted result folder; the experiment sections above cover the free folders.", ""]
    for x in shown:
        out += condition_block(run, x)
    return out
