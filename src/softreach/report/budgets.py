"""The "Norm budgets" section: fidelity against the input-norm budget, reachability radius per target,
and the Exp 4 difficulty correlations at every budget."""
from __future__ import annotations

import math
import re

import numpy as np

from .. import plots
from ..budget import budget_label
from .blocks import absent, figure, not_beating
from .format import fmt, table
from ..results.folder import read_json
from .load import Condition, Run, as_float, same_targets

RADIUS_COS = 0.99  # reachability radius: smallest budget at which a target's cos w/o pos 0 reaches this


def _groups(run: Run) -> dict[str, list[Condition]]:
    """Experiment (free folder name) -> its result folders, ascending budget (free last), in report order."""
    out: dict[str, list[Condition]] = {}
    for x in run.conditions.values():
        out.setdefault(x.base, []).append(x)
    return {base: sorted(xs, key=lambda x: x.budget) for base, xs in out.items()}


def _radius(xs: list[Condition]) -> list[str]:
    """Per target (row index) the smallest budget of xs (ascending) at which cos w/o pos 0 >= RADIUS_COS."""
    n = max(len(x.rows) for x in xs)
    cols = np.full((len(xs), n), np.nan)  # [B, N]
    for j, x in enumerate(xs):
        c = x.column("cos_no_pos0")
        cols[j, :c.size] = c
    out = []
    for i in range(n):
        reached = [j for j in range(len(xs)) if cols[j, i] >= RADIUS_COS]
        out.append(budget_label(xs[reached[0]].budget) if reached
                   else "not reached" if np.isfinite(cols[:, i]).any() else "—")
    return out


def _exp4_budget_correlations(run: Run) -> list[str]:
    """Per-target difficulty correlations of Exp 4 at every budget that has an exp4_analysis*.json."""
    if run.single:
        return []
    found = []
    for path in run.root.glob("exp4_analysis*.json"):
        m = re.fullmatch(r"exp4_analysis(?:_b(?P<b>inf|[0-9.e+-]+))?\.json", path.name)
        if not m:
            continue
        try:
            budget = float(m["b"]) if m["b"] else math.inf
            corr = (read_json(path, missing_ok=True) or {}).get("correlations") or []
        except (ValueError, AttributeError):
            continue
        found += [(budget, c) for c in corr if isinstance(c, dict)]
    if not any(math.isfinite(b) for b, _ in found):
        return []
    found.sort(key=lambda bc: bc[0])
    rows = [[budget_label(b), str(c.get("a")), str(c.get("b")), fmt(c.get("spearman_rho"), 3), fmt(c.get("p_value"), 3),
             fmt(c.get("pearson_r"), 3), fmt(c.get("pearson_p"), 3)] for b, c in found]
    return (["### Exp 4 difficulty correlations by budget", "",
             "From `exp4_analysis.json` (free) and `exp4_analysis_bB.json` (budget B): per-target cosine "
             "correlations between model variants.", ""]
            + table(["budget", "a", "b", "Spearman ρ", "p", "Pearson r", "p"], rows) + [""])


def budgets(run: Run) -> list[str]:
    """Fidelity against the input-norm budget beside the copy baseline and floor; reachability radius per target."""
    out = ["## Norm budgets", ""]
    conds = list(run.conditions.values())
    if all(x.free for x in conds):
        return out + absent("norm-budgeted result folders (`NAME_bB/`, e.g. `exp1_b1/`): every folder is free")
    groups = _groups(run)
    budgets = sorted({x.budget for x in conds})
    token_norm = next((as_float(x.config.get("token_norm")) for x in conds
                       if math.isfinite(as_float(x.config.get("token_norm")))), math.nan)
    out += ["Budget = cap on each input vector's L2 norm in units of the mean token-embedding norm"
            + (f" ({fmt(token_norm, 3)} here)" if math.isfinite(token_norm) else "") + "; free = no cap. "
            "Each cell: median over targets of the cosine w/o position 0, then (in brackets) the median copy "
            "baseline (best scaled copy of the target as input, clipped to the same budget) and the median "
            "random-token floor, both w/o position 0. — = no folder (or no value) at that budget; † as in the "
            "synthesis (fewer than half of the targets beat their copy baseline).", ""]
    rows, series = [], {}
    for base, xs in groups.items():
        by_b = {x.budget: x for x in xs}
        cells = [xs[0].base_label]
        for b in budgets:
            x = by_b.get(b)
            if x is None:
                cells.append("—")
                continue
            cells.append(f"{fmt(x.median('cos_no_pos0'))}{' †' if not_beating(x) else ''} "
                         f"(copy {fmt(x.median('copy_cos_no_pos0'))}, floor {fmt(x.median('floor_cos_no_pos0'))})")
        rows.append(cells)
        cos = [x.median("cos_no_pos0") for x in xs]
        if any(math.isfinite(c) for c in cos):
            series[xs[0].base_label] = {"budget": [x.budget for x in xs], "cos": cos,
                                        "copy": [x.median("copy_cos_no_pos0") for x in xs],
                                        "floor": [x.median("floor_cos_no_pos0") for x in xs]}
    out += table(["Experiment"] + ["free" if math.isinf(b) else f"budget {budget_label(b)}" for b in budgets],
                 rows) + [""]
    if series:
        out += [figure(run, "budgets.png", "fidelity against norm budget", plots.budget_curves, series), ""]

    # reachability radius: rows correspond across budgets within an experiment (same row index = same target)
    radii, skipped = {}, []
    for base, xs in groups.items():
        if xs[0].rows and all(same_targets(x, xs[0]) for x in xs):
            radii[xs[0].base_label] = (xs, _radius(xs))
        else:
            skipped.append(xs[0].base_label)
    out += ["### Reachability radius per target", "",
            f"Radius of a target = the smallest budget (token-norm units) at which its cosine w/o position 0 is "
            f"≥ {RADIUS_COS}; `inf` = only the free input reaches it; \"not reached\" = no budget in this run does "
            "(a budget not run might). Row i of every budget folder of an experiment is the same target (checked: "
            "same number of targets and the same text windows where recorded).", ""]
    if skipped:
        out += [f"_Left out (targets differ across budgets): {', '.join(skipped)}._", ""]
    if not radii:
        return out + absent("a radius (no experiment with corresponding targets)") + _exp4_budget_correlations(run)
    counts = []
    for label, (xs, rad) in radii.items():
        own = {x.budget for x in xs}
        cells = [label]
        for b in budgets:
            if b not in own:
                cells.append("—")
                continue
            k = sum(r not in ("not reached", "—") and float(r) <= b for r in rad)  # float("inf") is inf
            cells.append(f"{k}/{len(rad)}")
        counts.append(cells)
    out += [f"Targets reached (cos w/o pos 0 ≥ {RADIUS_COS}) at or below each budget:", ""]
    out += table(["Experiment"] + ["free" if math.isinf(b) else f"≤ {budget_label(b)}" for b in budgets],
                 counts) + [""]
    n = max(len(rad) for _, rad in radii.values())
    if n <= 20:  # experiments as rows, targets as columns
        lines = table(["Experiment"] + [f"t{i}" for i in range(n)],
                      [[label] + rad + ["—"] * (n - len(rad)) for label, (_, rad) in radii.items()])
    else:  # targets as rows
        lines = table(["target"] + list(radii),
                      [[str(i)] + [rad[i] if i < len(rad) else "—" for _, rad in radii.values()] for i in range(n)])
    out += [f"Radius per target (t{{i}} = row i of problems.jsonl, threshold cos w/o pos 0 ≥ {RADIUS_COS}):", ""]
    out += lines + [""]
    return out + _exp4_budget_correlations(run)
