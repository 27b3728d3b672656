"""The budget-1 solver study (issue 17): solvers compared from the same starts at equal evaluations, and the
reference values they are measured against (long runs). `softreach bench --workloads smollm2
--convergence-targets N` runs the comparison, `--workloads references` the reference runs.
"""
from __future__ import annotations

import torch

from .config import STUDY_CONDITION_KEYS as CONDITION_KEYS, STUDY_RUN_KEYS as RUN_KEYS, check_study_parts
from .errors import UserError
from .models import LoadedModel
from .optimize import OptimConfig
from .progress import StepBar


SOLVERS = {
    # the defaults before norm budgets and verdicts: N(0,1) start, cosine schedule from lr 0.1, fixed steps
    "random start, cosine lr 0.1 (before budgets)": dict(start="random", schedule="cosine", lr=0.1, early_stop=False,
                                                        prune_after=0, step_rule="projected"),
    "projected Adam, plateau lr 0.2, 6 decays (before issue 17)": dict(step_rule="projected", plateau_decays=6),
    "tangent Adam, plateau lr 0.2, 12 decays (default)": dict(),
    # the same steps under a cosine schedule over the run (session 11: the best at 600 on 3 of 4 hard conditions)
    "tangent Adam, cosine lr 0.1": dict(schedule="cosine", lr=0.1),
    # each vector's step times its own RMS (Adafactor's relative step): lr a fraction of the vector's size
    "relative Adam, plateau lr 1, 12 decays": dict(step_rule="relative", lr=1.0),
    # each problem its own history (10 pairs) and backtracking line search, tangent gradients (`--solver lbfgs`)
    "L-BFGS, plateau lr 0.2, 12 decays": dict(solver="lbfgs"),
}


def solver_conditions(lm: LoadedModel, layer: int, targets: int, seed: int = 0) -> dict:
    """The budget-1 conditions the solvers are compared on: name -> (targets [N, T, d], ablation)."""
    from .synthetic_targets import (corrupt_raw_dimensions, distribution_matched_targets, fit_position_gaussian,
                                    raw_random_targets, typical_norms)
    from .targets import corpus_targets, residuals_of_tokens, sample_windows

    windows, _, real, idx = corpus_targets(lm, "default", 20, layer, targets, seed)
    ref = residuals_of_tokens(lm, windows.tokens[sample_windows(windows, min(1000, windows.count - targets), seed + 11,
                                                                  exclude=idx)], layer)  # [M, T, d]
    mean, chol = fit_position_gaussian(ref)
    return {"Exp 1 real": (real, "none"),
            "Exp 2a distribution-matched": (distribution_matched_targets(mean, chol, targets, seed + 21), "none"),
            "Exp 2b raw random": (raw_random_targets(typical_norms(ref), targets, lm.d_model, seed + 23), "none"),
            "Exp 4 no MLP": (real, "no_mlp"),
            "Exp 5A raw corruption 0.5": (corrupt_raw_dimensions(real, 0.5, ref.std(0), seed + 51), "none")}


def solver_comparison(lm: LoadedModel, layer: int, targets: int, steps: int, seed: int = 0, log=print,
                      conditions: tuple = tuple(CONDITION_KEYS), references: dict | None = None) -> dict:
    """Every solver of SOLVERS from the same starts on the same targets of the chosen conditions at budget 1.

    Per problem the reference is the best fidelity (cos w/o position 0) any solver reached, or the long runs'
    reference value where `references` (reference_values' result, same layer, targets and seed) has one and it is
    higher; a solver's evaluations to it are the forward+backward passes until its best-so-far fidelity is within
    0.005 of it (the issue's bar), and its verdicts say whether it converged.
    """
    from .budget import absolute_cap
    from .condition import solve_condition

    check_study_parts(tuple(RUN_KEYS), conditions)
    long_runs = {}
    if references is not None:
        if any(references.get(k, 0 if k == "seed" else None) != v
               for k, v in {"layer": layer, "targets": targets, "seed": seed}.items()):
            raise UserError("the reference values were made with another layer, number of targets or seed than this "
                            "comparison")
        long_runs = {(r["condition"], r["target"]): r["reference"] for r in references["rows"]}
    wanted = {CONDITION_KEYS[k] for k in conditions}
    rows = []
    for cond, (target, ablation) in solver_conditions(lm, layer, targets, seed).items():
        if cond not in wanted:
            continue
        runs = {}
        for name, kw in SOLVERS.items():
            log(f"solvers: {cond}, budget 1, {name} ...")
            cfg = OptimConfig(steps=steps, skip_pos0=True, **kw)
            with StepBar(targets * steps, f"{cond}, {name}") as bar:
                res = solve_condition(lm, layer, target, 1, cfg, seed, ablation=ablation, floor_draws=0,
                                      cap=absolute_cap(lm, 1.0), progress=bar.update)
            runs[name] = (res, torch.cummax(torch.nan_to_num(res.cos_curve[:, 0], nan=-2.0), 1).values)  # [N, S]
        reference = torch.stack([torch.tensor([p["cos_no_pos0"] for p in r.problems])
                                 for r, _ in runs.values()]).max(0).values  # [N]
        from_long_runs = torch.tensor([long_runs.get((cond, i), -2.0) for i in range(targets)])  # [N]
        reference = torch.maximum(reference, from_long_runs)
        for name, (res, best_so_far) in runs.items():
            reached = best_so_far >= (reference - 5e-3).unsqueeze(1)  # [N, S]
            first = torch.where(reached.any(1), reached.float().argmax(1) + 1, torch.full((targets,), -1))
            rows.append({"condition": cond, "budget": "1", "solver": name, "reference": float(reference.quantile(0.5)),
                         "median_cos_no_pos0": res.summary["cos_no_pos0"]["median"],
                         "copy_cos_no_pos0": res.summary["copy_cos_no_pos0"]["median"],
                         "steps_to_reference": [int(x) for x in first],
                         "steps_run": [int(p["steps_run"]) for p in res.problems],
                         "share_converged": res.summary.get("share_converged", 0.0),
                         "seconds": res.seconds})
    return {"layer": layer, "targets": targets, "max_steps": steps, "seed": seed, "rows": rows,
            "references": None if references is None else
            {k: references[k] for k in ("max_steps", "runs") if k in references}}


REFERENCE_RUNS = {
    # two long runs per problem: the default from the copy start, and the old default from a random start with a
    # cosine schedule over the whole run (at 600 evaluations it was the best on Exp 2b and 5A)
    RUN_KEYS["plateau"]: dict(),
    RUN_KEYS["cosine"]: dict(start="random", schedule="cosine", lr=0.1, early_stop=False, prune_after=0),
}


def reference_values(lm: LoadedModel, layer: int, targets: int, steps: int, seed: int = 0, log=print,
                     partial=None, resume: dict | None = None, runs: tuple = tuple(RUN_KEYS),
                     conditions: tuple = tuple(CONDITION_KEYS)) -> dict:
    """Reference fidelities at budget 1: per condition of solver_conditions and per target, the best cos without
    position 0 that REFERENCE_RUNS reach in up to `steps` evaluations each (the default stops when converged).

    The number each solver is measured against, as far as anyone here has pushed it; `converged` says whether
    the run that reached it passed the convergence test (else the reference is itself a lower bound).
    `partial(result so far)` is called after each condition, and `resume` (such a result, made with the same layer,
    targets, steps, seed and runs) skips the conditions it finished: long runs can be spread over several sittings.
    `runs` (keys of RUN_KEYS) and `conditions` (keys of CONDITION_KEYS) pick a part, e.g. one condition per process.
    """
    from .budget import absolute_cap
    from .condition import solve_condition

    check_study_parts(runs, conditions)
    chosen_runs = {RUN_KEYS[k]: REFERENCE_RUNS[RUN_KEYS[k]] for k in RUN_KEYS if k in runs}
    settings = {"layer": layer, "targets": targets, "max_steps": steps, "seed": seed, "runs": list(chosen_runs)}
    rows = []
    if resume is not None:
        defaults = {"seed": 0, "runs": list(REFERENCE_RUNS)}  # folders from before these settings existed
        if any(resume.get(k, defaults.get(k)) != v for k, v in settings.items()):
            raise UserError("the reference values to resume were made with other settings (layer, targets, steps, "
                            "seed or runs); remove the .partial file or use the same settings")
        rows = list(resume["rows"])
    wanted = {CONDITION_KEYS[k] for k in conditions}
    conditions = {c: v for c, v in solver_conditions(lm, layer, targets, seed).items() if c in wanted}
    for cond in sorted(conditions, key=lambda c: c == "Exp 1 real"):  # the hard ones first; Exp 1 converges anyway
        if sum(r["condition"] == cond for r in rows) == targets:
            log(f"references: {cond}: done in an earlier sitting")
            continue
        rows = [r for r in rows if r["condition"] != cond]
        target, ablation = conditions[cond]
        runs = {}
        for name, kw in chosen_runs.items():
            log(f"references: {cond}, budget 1, {name}, up to {steps} evaluations ...")
            cfg = OptimConfig(steps=steps, skip_pos0=True, **kw)
            with StepBar(target.shape[0] * steps, f"{cond}, {name.split(',')[1].strip()}") as bar:
                runs[name] = solve_condition(lm, layer, target, 1, cfg, seed, ablation=ablation, floor_draws=0,
                                             cap=absolute_cap(lm, 1.0), progress=bar.update)
        for i in range(target.shape[0]):
            name, res = max(runs.items(), key=lambda kv: kv[1].problems[i]["cos_no_pos0"])
            p = res.problems[i]
            rows.append({"condition": cond, "target": i, "reference": p["cos_no_pos0"], "run": name,
                         "verdict": p["verdict"], "steps_run": int(p["steps_run"]),
                         "copy_cos_no_pos0": p["copy_cos_no_pos0"],
                         "by_run": {n: r.problems[i]["cos_no_pos0"] for n, r in runs.items()},
                         "seconds": sum(r.seconds for r in runs.values()) / target.shape[0]})
        log(f"references: {cond}: " + ", ".join(f"{r['reference']:.4f} ({r['verdict']})" for r in rows
                                                 if r["condition"] == cond))
        if partial:
            partial({**settings, "rows": rows})
    return {**settings, "rows": rows}


def read_references(paths) -> dict | None:
    """Reference values from the JSON files of one or more reference runs (a bench --json file or its .partial),
    made with the same layer, targets and seed, as one result: per target the best of the files (None: no files)."""
    import json

    if not paths:
        return None
    parts = []
    for path in paths:
        try:
            data = json.loads(open(path, encoding="utf-8").read())
        except (OSError, ValueError) as e:
            raise UserError(f"cannot read reference values from {path}: {e}") from None
        if not isinstance(data, dict) or not isinstance(data.get("references"), dict):
            raise UserError(f"{path} holds no reference values (write them with --workloads references --json)")
        parts.append(data["references"])
    settings = {(p["layer"], p["targets"], p.get("seed", 0)) for p in parts}
    if len(settings) > 1:
        raise UserError(f"the reference files were made with different layers, numbers of targets or seeds: {settings}")
    best = {}
    for part in parts:
        for r in part["rows"]:
            key = (r["condition"], r["target"])
            if key not in best or r["reference"] > best[key]["reference"]:
                best[key] = r
    layer, targets, seed = settings.pop()
    return {"layer": layer, "targets": targets, "seed": seed, "max_steps": max(p["max_steps"] for p in parts),
            "runs": list(dict.fromkeys(n for p in parts for n in p.get("runs", REFERENCE_RUNS))),
            "rows": sorted(best.values(), key=lambda r: (r["condition"] == "Exp 1 real", r["condition"], r["target"]))}


def reference_table(refs: dict) -> str:
    """The reference values as markdown: one line per condition (median and range over its targets)."""
    import numpy as np

    runs = refs.get("runs", list(REFERENCE_RUNS))
    lines = [f"reference values on SmolLM2 layer {refs['layer']} at budget 1 (cos without position 0), "
             f"{refs['targets']} targets per condition, the best of {len(runs)} run(s) of up to {refs['max_steps']} "
             "evaluations each (" + "; ".join(runs) + "):",
             "| condition | median reference | min | max | copy baseline | converged | best run (count) |",
             "|---|---|---|---|---|---|---|"]
    for cond in dict.fromkeys(r["condition"] for r in refs["rows"]):
        rows = [r for r in refs["rows"] if r["condition"] == cond]
        ref = np.array([r["reference"] for r in rows])
        best = {n: sum(r["run"] == n for r in rows) for n in runs}
        lines.append(f"| {cond} | {np.median(ref):.4f} | {ref.min():.4f} | {ref.max():.4f} | "
                     f"{np.median([r['copy_cos_no_pos0'] for r in rows]):.4f} | "
                     f"{sum(r['verdict'] == 'converged' for r in rows)}/{len(rows)} | "
                     + ", ".join(f"{n.split(',')[1].strip()} ({c})" for n, c in best.items() if c) + " |")
    return "\n".join(lines) + "\n"


def solver_table(comp: dict) -> str:
    """The solver comparison as markdown: evaluations to within 0.005 of the best fidelity found."""
    import numpy as np

    long_runs = comp.get("references")
    against = (f"the reference value (the best of long runs of up to {long_runs['max_steps']} evaluations, or of any "
               "solver here where higher)" if long_runs else "the best fidelity any solver found")
    lines = [f"solvers on SmolLM2 layer {comp['layer']} at budget 1, {comp['targets']} targets per condition, the same "
             f"starts, at most {comp['max_steps']} forward+backward evaluations per problem (to reach: median over "
             f"targets of the evaluations until within 0.005 of {against}; 'not reached' counts as never):",
             "| condition | solver | reference | final cos w/o pos 0 | copy baseline | evaluations to reach | "
             "reached | evaluations run | converged | seconds |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in comp["rows"]:
        steps = np.array(r["steps_to_reference"], dtype=float)
        reached = steps > 0
        med = np.median(np.where(reached, steps, np.inf))
        med_text = f"{med:.0f}" if np.isfinite(med) else f"> {comp['max_steps']}"
        lines.append(f"| {r['condition']} | {r['solver']} | {r['reference']:.4f} | "
                     f"{r['median_cos_no_pos0']:.4f} | {r['copy_cos_no_pos0']:.4f} | {med_text} | "
                     f"{int(reached.sum())}/{len(steps)} | {np.median(r['steps_run']):.0f} | "
                     f"{100 * r['share_converged']:.0f}% | {r['seconds']:.0f} |")
    return "\n".join(lines) + "\n"
