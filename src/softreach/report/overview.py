"""The parts of the report above the experiment sections: header and setup, synthesis, figures across experiments."""
from __future__ import annotations

import math
import time

import numpy as np

from .. import __version__, plots
from ..budget import budget_label, folder_suffix, parse_budget
from ..errors import UserError
from ..experiments.registry import CONDITIONS
from .blocks import MARKS_NOTE, absent, converged_cell, figure, not_beating, steps_cell
from .format import fmt, pct, table
from ..results.folder import read_json
from .load import ORDER, Run, as_float, best_restart_curve, known_share


def header(run: Run) -> list[str]:
    """Title, setup, a row per result folder, and what the run lacks."""
    conds = list(run.conditions.values())
    main = run.conditions.get("exp1", conds[0])
    c, m, o = main.config, main.config.get("model", {}), main.config.get("optim", {})
    out = ["# Soft prompt reachability report", "",
           f"Run folder `{run.root}`; report written {time.strftime('%Y-%m-%d %H:%M')} by softreach {__version__}.", "",
           "## Setup", "",
           f"- model: `{m.get('source', '?')}`" + (f" (`{m['gguf_file']}`)" if m.get("gguf_file") else "")
           + f", {m.get('n_layers', '?')} layers, d_model {m.get('d_model', '?')}",
           f"- target layer {c.get('layer', '?')} (hidden_states[L] = output of block L-1, raw residual); "
           f"T = {c.get('seq_len', '?')} positions; Adam lr {o.get('lr', '?')}; "
           f"init N(0, {o.get('init_scale', '?')}²); "
           f"loss = mean(1 − cos) + {o.get('mse_weight', '?')}·MSE; seed {c.get('seed', '?')}; "
           f"corpus {c.get('corpus', '?')}; device {c.get('device', '?')}",
           "- every number below is over targets (best restart per target), recomputed from each folder's "
           "problems.jsonl; "
           "the random-token floor is the cosine that uniformly random real tokens already reach", ""]
    sources = {(x.config.get("model", {}).get("source"), x.config.get("layer")) for x in conds}
    if len(sources) > 1:
        out += ["**Warning:** the result folders differ in model or layer: "
                + "; ".join(f"`{x.name}`: {x.config.get('model', {}).get('source')} L{x.config.get('layer')}"
                            for x in conds), ""]
    rows = []
    for x in conds:
        s = x.summary
        rows.append([x.base_label, budget_label(x.budget), f"`{x.path.name}/`" if not run.single else "`.`",
                     str(len(x.rows)),
                     str(x.config.get("restarts", "?")), str(x.config.get("optim", {}).get("steps", "?")),
                     str(x.config.get("optim", {}).get("lr", "?")), str(x.config.get("ablation", "?")),
                     fmt(s.get("seconds"), 1), fmt(s.get("problem_steps_per_second"), 1)])
    out += table(["Experiment", "budget", "folder", "targets", "restarts", "steps", "lr", "ablation", "seconds",
                  "problem-steps/s"], rows) + [""]
    token_norm = next((as_float(x.config.get("token_norm")) for x in conds
                       if math.isfinite(as_float(x.config.get("token_norm")))), math.nan)
    out += ["Budget = cap on each input vector's L2 norm in units of the mean token-embedding norm"
            + (f" ({fmt(token_norm, 3)} for this model)" if math.isfinite(token_norm) else "")
            + "; `inf` = free (no cap).", ""]
    if run.single:
        out += ["This report covers one result folder; the other experiments of the suite are not part of it.", ""]
    else:
        missing = _missing(run)
        if missing:
            out += ["**Missing from this run:** " + ", ".join(missing) + ".", ""]
        if run.unfinished:
            out += ["**Unfinished (staging folder left by a running or interrupted write):** "
                    + ", ".join(f"`{n}`" for n in run.unfinished) + ".", ""]
    return out


def _suite_budgets(run: Run) -> list[float]:
    """The budgets the suite was asked for (suite.json), else those its folders hold; ascending, free last."""
    found = {x.budget for x in run.conditions.values()}
    try:
        asked = (read_json(run.root / "suite.json", missing_ok=True) or {}).get("config", {}).get("run", {}).get("norm_budgets")
    except (ValueError, AttributeError):
        asked = None
    wanted = set()
    for item in asked if isinstance(asked, list) else []:
        try:
            wanted.add(parse_budget(str(item)))
        except UserError:
            continue
    return sorted(wanted or found)


def _missing(run: Run) -> list[str]:
    """Folders and side files a complete suite would hold at its budgets but this run lacks."""
    budgets = _suite_budgets(run)
    suffix = {b: folder_suffix(b) for b in budgets}
    present = {(x.base, x.budget) for x in run.conditions.values()}
    missing = [f"`{n}{suffix[b]}/`" for n in ORDER for b in budgets if (n, b) not in present]
    for name, file in (("exp1", "trajectories.json"), ("exp1b", "analysis.json")):
        for b in budgets:
            if (name, b) in present and not (run.root / f"{name}{suffix[b]}" / file).is_file():
                missing.append(f"`{name}{suffix[b]}/{file}`")
    for b in budgets:
        if not (run.root / f"exp4_analysis{suffix[b]}.json").is_file():
            missing.append(f"`exp4_analysis{suffix[b]}.json`")
    return missing


def synthesis(run: Run) -> list[str]:
    """One row per result folder: medians beside the copy baseline and floor, shares, marks."""
    rows = []
    for x in run.conditions.values():
        mark = " †" if not_beating(x) else ""
        beats = pct(known_share(x.beats_copy()))
        rows.append([x.base_label, budget_label(x.budget), x.target_type, fmt(x.median("cos_no_pos0")) + mark,
                     fmt(x.median("copy_cos_no_pos0")), fmt(x.median("floor_cos_no_pos0")),
                     f"**{beats}**" if mark else beats, converged_cell(x), steps_cell(x),
                     fmt(x.median("cos")), fmt(x.median("copy_cos")), fmt(x.median("floor_cos")),
                     fmt(x.median("mse"))])
    return (["## Synthesis", ""]
            + table(["Experiment", "budget", "target type", "median cos w/o pos 0", "copy baseline w/o pos 0",
                     "floor w/o pos 0", "beats copy", "converged", "median steps", "median cos", "copy baseline",
                     "floor", "median MSE"], rows)
            + ["", "Medians over targets. Budget: cap on each input vector's norm in units of the mean token-embedding "
               "norm (`inf` = free). Copy baseline = median over targets of the best cosine reached by feeding a scaled "
               "copy of the target itself (clipped to the budget): what the residual bypass gives with no optimisation. "
               "Floor = median random-token cosine for the same targets and model. Beats copy = share of targets whose "
               "cosine (w/o pos 0 where the loss skips it) exceeds their copy baseline (the rows' `beats_copy`); "
               "converged = share whose optimisation met the convergence criterion; median steps = steps run. "
               "Exp 1b projects the Exp 1 solutions at that budget onto their nearest tokens (no optimisation, so no copy or convergence columns). Exp 3 and Exp 5 rows pool every "
               "α or corruption fraction (see their tables). — = not recorded in that folder.", "",
               MARKS_NOTE, ""])


def across(run: Run) -> list[str]:
    """Loss curves and cosine by position for the single-condition experiments, one pair of figures per budget."""
    singles = [x for x in run.conditions.values() if not (x.base in CONDITIONS and CONDITIONS[x.base].pooled)]
    budgets = sorted({x.budget for x in singles})
    out = ["## Across experiments", "",
           "Single-condition experiments only: Exp 3 and Exp 5 mix several α or fractions and have their own "
           "figures." + (" One pair of figures per norm budget." if len(budgets) > 1 else ""), ""]
    for budget in budgets:
        shown = [x for x in singles if x.budget == budget]
        suffix = folder_suffix(budget)
        where = "free input" if math.isinf(budget) else f"budget {budget_label(budget)}"
        if len(budgets) > 1:
            out += [f"### {'Free input' if math.isinf(budget) else f'Budget {budget_label(budget)}'}", ""]
        curves = {x.base_label: c for x in shown if (c := best_restart_curve(x)) is not None}
        if curves:
            out += [figure(run, f"loss_curves{suffix}.png", f"loss curves, {where}", plots.loss_curves, curves,
                           title=f"Loss during optimisation, {where}"), ""]
        else:
            out += absent(f"loss curves at {where} (no curves.safetensors with more than one step)")
        series = {}
        for x in shown:
            cpp = [r.get("cos_per_position") for r in x.rows]
            if cpp and all(isinstance(v, list) and len(v) == len(cpp[0]) > 0 for v in cpp):
                series[x.base_label] = (np.array(cpp, dtype=np.float64), x.median("floor_cos"))
        if series:
            out += [figure(run, f"cos_by_position{suffix}.png", f"cosine by position, {where}",
                           plots.cosine_by_position, series), ""]
        else:
            out += absent(f"cosine by position at {where} (no cos_per_position in the rows)")
    return out
