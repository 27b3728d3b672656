"""The "Norm budgets" section: fidelity against the input-norm budget, reachability radius per target,
and the Exp 4 difficulty correlations at every budget."""
from __future__ import annotations

import math
import re

import numpy as np

from .. import plots
from ..budget import budget_label
from ..experiments.registry import EXPERIMENTS
from .blocks import CONVERGED_OK, absent, converged_cell, figure, not_beating
from .format import fmt, table
from ..results.folder import read_json
from .load import Condition, Run, as_float, known_share, same_targets

_NOT_OPTIMISED = {c.name for e in EXPERIMENTS.values() if not e.optimised for c in e.conditions}
RADIUS_COS = (0.99, 0.95)
"""Reachability radius of a target at threshold c: the smallest budget at which its cos w/o position 0 reaches c."""


def _groups(run: Run) -> dict[str, list[Condition]]:
    """Experiment (free folder name) -> its result folders, ascending budget (free last), in report order."""
    out: dict[str, list[Condition]] = {}
    for x in run.conditions.values():
        out.setdefault(x.base, []).append(x)
    return {base: sorted(xs, key=lambda x: x.budget) for base, xs in out.items()}


def _radius(xs: list[Condition], threshold: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Per target (row index): the smallest budget of xs (ascending) at which cos w/o pos 0 >= threshold (NaN: no
    budget of this run reaches it), whether that is settled (every smaller budget's problem converged: otherwise
    more steps there might reach it, and the radius is an upper bound), and whether any cosine was recorded [N]."""
    n = max(len(x.rows) for x in xs)
    cos, conv = np.full((len(xs), n), np.nan), np.full((len(xs), n), np.nan)  # [B, N]
    for j, x in enumerate(xs):
        c, k = x.column("cos_no_pos0"), x.converged()
        cos[j, :c.size], conv[j, :k.size] = c, k
    radius, settled = np.full(n, np.nan), np.zeros(n, dtype=bool)
    for i in range(n):
        reached = np.flatnonzero(cos[:, i] >= threshold)
        first = int(reached[0]) if reached.size else len(xs)
        if reached.size:
            radius[i] = xs[first].budget
        settled[i] = bool(np.all(conv[:first, i] == 1.0))
    return radius, settled, np.isfinite(cos).any(axis=0)


def _radius_cell(r: float, settled: bool, recorded: bool) -> str:
    """A radius as the report prints it: "2", "≤2" (an upper bound), "not reached", "—" (no value)."""
    if not recorded:
        return "—"
    if math.isnan(r):
        return "not reached"
    return ("" if settled else "≤") + budget_label(r)


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
    # (not for projections such as Exp 1b: their budget is the one their source solutions were found at)
    groups = {b: xs for b, xs in groups.items() if b not in _NOT_OPTIMISED}
    corresponds = {b: bool(xs[0].rows) and all(same_targets(x, xs[0]) for x in xs) for b, xs in groups.items()}
    skipped = [groups[b][0].base_label for b, ok in corresponds.items() if not ok]
    groups = {b: xs for b, xs in groups.items() if corresponds[b]}
    out += ["### Reachability radius per target", "",
            "Radius of a target at threshold c = the smallest budget (token-norm units) at which its cosine w/o "
            f"position 0 is ≥ c ({' and '.join(map(str, RADIUS_COS))} here); `inf` = only the free input reaches "
            "it; \"not reached\" = no budget in this run does (a budget not run might). `≤B`: reached at B, but a "
            "smaller budget's problem did not converge, so the radius may be smaller (an upper bound). Row i of every "
            "budget folder of an experiment is the same target (checked: same number of targets and the same text "
            "windows where recorded).", ""]
    if skipped:
        out += [f"_Left out (targets differ across budgets): {', '.join(skipped)}._", ""]
    if not groups:
        return out + absent("a radius (no experiment with corresponding targets)") + _exp4_budget_correlations(run)
    radii = {xs[0].base_label: (xs, {c: _radius(xs, c) for c in RADIUS_COS}) for xs in groups.values()}
    converged = []
    for label, (xs, _) in radii.items():
        by_b = {x.budget: x for x in xs}
        converged.append([label] + [converged_cell(by_b[b]) if b in by_b else "—" for b in budgets])
    out += [f"Share of problems converged in each budget folder (under {CONVERGED_OK:.0%}: marked ⚠ here and drawn "
            "hollow in the figure):", ""]
    out += table(["Experiment"] + ["free" if math.isinf(b) else f"budget {budget_label(b)}" for b in budgets],
                 converged) + [""]
    series = {}
    for c in RADIUS_COS:
        counts = []
        for label, (xs, by_c) in radii.items():
            radius, settled, recorded = by_c[c]
            own, n = {x.budget for x in xs}, int(recorded.sum())
            reached = [int(np.sum(radius <= b)) for b in budgets]  # NaN compares False: not reached
            counts.append([label] + [f"{k}/{n}" if b in own else "—" for k, b in zip(reached, budgets)]
                          + [f"{int(settled[recorded].sum())}/{n}"])
            s = series.setdefault(label, {"budget": [x.budget for x in xs], "reached": {},
                                          "converged": [known_share(x.converged()) for x in xs]})
            s["reached"][c] = [k / max(n, 1) for k, b in zip(reached, budgets) if b in own]  # xs's budgets
        out += [f"Targets reached (cos w/o pos 0 ≥ {c}) at or below each budget; settled = radii that are not upper "
                "bounds:", ""]
        out += table(["Experiment"] + ["free" if math.isinf(b) else f"≤ {budget_label(b)}" for b in budgets]
                     + ["settled"], counts) + [""]
    out += [figure(run, "radius.png", "share of targets reached against the input-norm budget",
                   plots.radius_curves, series, RADIUS_COS, converged_ok=CONVERGED_OK), ""]
    n = max(by_c[RADIUS_COS[0]][0].size for _, by_c in radii.values())
    for c in RADIUS_COS:
        cells = {label: [_radius_cell(*v) for v in zip(*by_c[c])] for label, (_, by_c) in radii.items()}
        if n <= 20:  # experiments as rows, targets as columns
            lines = table(["Experiment"] + [f"t{i}" for i in range(n)],
                          [[label] + r + ["—"] * (n - len(r)) for label, r in cells.items()])
        else:  # targets as rows
            lines = table(["target"] + list(cells),
                          [[str(i)] + [r[i] if i < len(r) else "—" for r in cells.values()] for i in range(n)])
        out += [f"Radius per target (t{{i}} = row i of problems.jsonl, threshold cos w/o pos 0 ≥ {c}):", ""]
        out += lines + [""]
    return out + _exp4_budget_correlations(run)
