"""The markdown report of a suite folder (or of one result folder), mirroring the research log.

`write_report(run_dir)` reads whichever result folders exist, writes `report.md` and
`figures/*.png` into run_dir, and says in the report what is missing. Every statistic is
recomputed from problems.jsonl (one row per target), so each number can be checked against the
saved rows.

Suite layout read here (any subset may exist):
    exp1/ [trajectories.json]   exp1b/ [analysis.json]   exp2a/  exp2b/   exp3/ (rows: pair, alpha)
    exp4_no_attn/  exp4_no_mlp/  exp4_analysis.json      exp5_raw/  exp5_pca/ (rows: fraction)
Each of them may also exist at input-norm budgets (units of the mean token-embedding norm): the free
folder keeps its name, a budgeted one gets a suffix (`exp1_b1`, `exp1_b0.5`, `exp4_no_mlp_b1`; Exp 4
correlations `exp4_analysis_b1.json`). The experiment sections render the free folders; the synthesis,
the "Norm budgets" section and a block per budgeted folder cover every budget.
A result folder has config.json and problems.jsonl (see DESIGN.md); hidden `.NAME.partial-PID`
folders are unfinished writes and are only mentioned.
"""
from __future__ import annotations

import json
import math
import re
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, plots
from .budget import budget_label, folder_suffix, parse_budget
from .errors import UserError
from .store import atomic_write_text
from .summary_md import ROWS as STATISTICS_ROWS

# folder name -> (label in tables, target type)
EXPERIMENTS = {
    "exp1": ("Exp 1", "real activations"),
    "exp1b": ("Exp 1b", "real activations, reached by the nearest tokens of the Exp 1 solutions"),
    "exp2a": ("Exp 2a", "distribution-matched random"),
    "exp2b": ("Exp 2b", "raw random (norm-matched)"),
    "exp3": ("Exp 3", "interpolations of real pairs (all α pooled)"),
    "exp4_no_attn": ("Exp 4 no attention", "real activations; attention zeroed (FFN only)"),
    "exp4_no_mlp": ("Exp 4 no MLP", "real activations; MLP zeroed (attention only)"),
    "exp5_raw": ("Exp 5A raw", "real activations, raw dimensions corrupted (all fractions pooled)"),
    "exp5_pca": ("Exp 5B PCA", "real activations, top PCA directions corrupted (all fractions pooled)"),
}
# folder name -> short label for figure legends (sweep figures)
SHORT_LABELS = {"exp1": "Exp 1 real", "exp1b": "Exp 1b nearest tokens", "exp2a": "Exp 2a matched random",
                "exp2b": "Exp 2b raw random", "exp3": "Exp 3 interpolation", "exp4_no_attn": "Exp 4 no attention",
                "exp4_no_mlp": "Exp 4 no MLP", "exp5_raw": "Exp 5A raw corruption",
                "exp5_pca": "Exp 5B PCA corruption"}
SWEEPS = ("exp3", "exp5_raw", "exp5_pca")  # rows mix several conditions (alpha or fraction)
ABLATION_LABELS = {"exp1": "Full model", "exp4_no_attn": "No attention (FFN only)",
                   "exp4_no_mlp": "No MLP (attention only)"}
ABLATION_KEYS = {"exp1": "full", "exp4_no_attn": "no_attn", "exp4_no_mlp": "no_mlp"}
RADIUS_COS = 0.99  # reachability radius: smallest budget at which a target's cos w/o pos 0 reaches this
CONVERGED_OK = 0.9  # a share converged below this is flagged in the tables
_SUFFIX = re.compile(r"^(?P<base>.+?)_b(?P<budget>inf|\d+(?:\.\d*)?(?:e[-+]?\d+)?)$")


def split_budget(name: str, config: dict | None = None) -> tuple[str, float]:
    """Folder name -> (experiment folder name at the free budget, relative budget; math.inf when free).

    'exp1_b1' -> ('exp1', 1.0); 'exp4_no_mlp_b0.5' -> ('exp4_no_mlp', 0.5); 'exp1' -> ('exp1', inf).
    Without a suffix, the config's `norm_budget_tokens` (or, for a projection such as exp1b,
    `source_norm_budget_tokens`) decides.
    """
    m = _SUFFIX.match(name)
    if m:
        return m["base"], float(m["budget"])
    for key in ("norm_budget_tokens", "source_norm_budget_tokens"):
        value = (config or {}).get(key)
        if isinstance(value, (int, float)) and not isinstance(value, bool) and value > 0:
            return name, float(value)
    return name, math.inf


@dataclass
class Condition:
    """One result folder: its config, summary and per-target rows."""

    name: str  # folder name, e.g. "exp1", "exp4_no_attn", "exp1_b1"
    path: Path
    config: dict
    summary: dict
    rows: list[dict]  # problems.jsonl, one per target

    @property
    def base(self) -> str:
        """The experiment's folder name at the free budget ("exp1" for "exp1_b1")."""
        return split_budget(self.name, self.config)[0]

    @property
    def budget(self) -> float:
        """Input-norm budget in units of the mean token-embedding norm; math.inf when free."""
        return split_budget(self.name, self.config)[1]

    @property
    def free(self) -> bool:
        return math.isinf(self.budget)

    @property
    def base_label(self) -> str:
        return EXPERIMENTS.get(self.base, (self.base, ""))[0]

    @property
    def label(self) -> str:
        return self.base_label if self.free else f"{self.base_label} (budget {budget_label(self.budget)})"

    @property
    def target_type(self) -> str:
        return EXPERIMENTS.get(self.base, ("", self.config.get("experiment", "?")))[1]

    def column(self, key: str) -> np.ndarray:
        """`key` of every row as float64 [N], NaN where absent."""
        return np.array([_float(r.get(key)) for r in self.rows], dtype=np.float64)

    def median(self, key: str) -> float:
        """Median over targets of the finite values of `key` (NaN when there are none)."""
        v = self.column(key)
        v = v[np.isfinite(v)]
        return float(np.median(v)) if v.size else math.nan

    def beats_copy(self) -> np.ndarray:
        """Per target 1.0 / 0.0 whether it beats its copy baseline, NaN where unknown [N].

        The row's `beats_copy` where recorded, else cos w/o pos 0 > copy_cos w/o pos 0 where both exist."""
        out = []
        for r in self.rows:
            b = r.get("beats_copy")
            if isinstance(b, bool):
                out.append(float(b))
                continue
            c, k = _float(r.get("cos_no_pos0")), _float(r.get("copy_cos_no_pos0"))
            out.append(float(c > k) if math.isfinite(c) and math.isfinite(k) else math.nan)
        return np.array(out, dtype=np.float64)

    def converged(self) -> np.ndarray:
        """Per target 1.0 / 0.0 whether its optimisation converged, NaN where not recorded [N]."""
        out = []
        for r in self.rows:
            c, v = r.get("converged"), r.get("verdict")
            out.append(float(c) if isinstance(c, bool) else float(v == "converged") if isinstance(v, str) else math.nan)
        return np.array(out, dtype=np.float64)

    def verdicts(self) -> Counter:
        return Counter(r["verdict"] for r in self.rows if isinstance(r.get("verdict"), str))


def _share(flags: np.ndarray) -> float:
    """Mean of the known (finite) 1/0 flags; NaN when none is known."""
    v = flags[np.isfinite(flags)]
    return float(v.mean()) if v.size else math.nan


@dataclass
class Run:
    """What a run folder holds."""

    root: Path
    single: bool  # run_dir is itself one result folder
    conditions: dict[str, Condition]  # in report order
    unfinished: list[str]  # names of staging folders left by unfinished writes


# ---------------------------------------------------------------- reading

def _float(x) -> float:
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def _read_json(path: Path):
    return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None


def is_result_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and (path / "problems.jsonl").is_file()


def _read_condition(path: Path, name: str) -> Condition:
    rows = []
    for i, line in enumerate((path / "problems.jsonl").read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path / 'problems.jsonl'} line {i} is not valid JSON") from None
    return Condition(name, path, _read_json(path / "config.json") or {}, _read_json(path / "summary.json") or {}, rows)


def _single_name(path: Path, config: dict) -> str:
    """Name of a lone result folder: its folder name if known (budget suffix included), else its config's
    experiment with the suffix of its budget."""
    if split_budget(path.name)[0] in EXPERIMENTS:
        return path.name
    exp = str(config.get("experiment") or path.name)
    if exp == "exp4" and config.get("ablation") not in (None, "none"):
        exp = f"exp4_{config['ablation']}"
    budget = split_budget(exp, config)[1]
    return exp if _SUFFIX.match(exp) else exp + folder_suffix(budget)


def _run_order(names) -> list[str]:
    """Known experiments in EXPERIMENTS order, then the others by name; within one experiment its budgets
    smallest first and the free folder last (exp1_b0.5, exp1_b1, exp1, exp1b_b1, exp1b, ...)."""
    known = list(EXPERIMENTS)

    def key(name: str):
        base, budget = split_budget(name)
        return (known.index(base) if base in known else len(known), base, budget, name)

    return sorted(names, key=key)


def load_run(run_dir: str | Path) -> Run:
    """Find the result folders of a suite folder (or accept one result folder). Raises UserError if none."""
    root = Path(run_dir)
    if not root.is_dir():
        raise UserError(f"{root} is not a folder")
    if is_result_folder(root):
        name = _single_name(root.resolve(), _read_json(root / "config.json") or {})
        return Run(root, True, {name: _read_condition(root, name)}, [])
    subs = sorted(p for p in root.iterdir() if p.is_dir())
    found = {p.name: _read_condition(p, p.name) for p in subs if not p.name.startswith(".") and is_result_folder(p)}
    if not found:
        raise UserError(f"{root} holds no result folders (no config.json and problems.jsonl in it or its "
                        "subfolders); nothing to report")
    order = _run_order(found)
    staged = [p.name for p in subs if p.name.startswith(".") and ".partial-" in p.name]  # .NAME.partial-PID
    unfinished = sorted({n[1:].split(".partial-")[0] for n in staged})
    return Run(root, False, {n: found[n] for n in order}, unfinished)


def _side_file(run: Run, name: str, file: str) -> Path | None:
    """A file that lives beside a result (exp1/trajectories.json, exp1b/analysis.json), if present."""
    if run.single:
        path = run.conditions[name].path / file if name in run.conditions else None
    else:
        path = run.root / name / file
    return path if path is not None and path.is_file() else None


def _best_restart_curve(cond: Condition, key: str = "loss") -> np.ndarray | None:
    """curves.safetensors[key] at each target's best restart: [N, R, S] -> [N, S]; None if unusable."""
    path = cond.path / "curves.safetensors"
    if not path.is_file():
        return None
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="np") as f:
            if key not in f.keys():
                return None
            c = f.get_tensor(key)  # [N, R, S]
    except Exception:  # unreadable (truncated, or a dtype numpy lacks): the report goes on without it
        return None
    if c.ndim != 3 or c.shape[2] < 2 or c.shape[0] == 0:
        return None
    best = [r.get("best_restart") for r in cond.rows]
    if len(best) == c.shape[0] and all(isinstance(b, int) and 0 <= b < c.shape[1] for b in best):
        idx = np.asarray(best)
    else:  # no usable record: the restart with the lowest final loss
        idx = np.argmin(np.nan_to_num(c[:, :, -1], nan=np.inf), axis=1)
    return c[np.arange(c.shape[0]), idx].astype(np.float64)


# ---------------------------------------------------------------- formatting

def fmt(x, digits: int = 4) -> str:
    """A number for a table: fixed digits, 3 significant figures when tiny or huge, an em dash when missing."""
    if x is None or not isinstance(x, (int, float)) or not math.isfinite(x):
        return "—"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def _stats(values: np.ndarray) -> dict | None:
    v = values[np.isfinite(values)]
    if not v.size:
        return None
    return {"median": float(np.median(v)), "mean": float(v.mean()), "std": float(v.std(ddof=1)) if v.size > 1 else 0.0,
            "min": float(v.min()), "max": float(v.max())}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _figure(run: Run, name: str, caption: str, draw, *args, **kwargs) -> str:
    """Draw one figure into figures/NAME with draw(*args, path=..., **kwargs); return its markdown link."""
    try:
        draw(*args, path=run.root / "figures" / name, **kwargs)
    except Exception as e:  # a figure must never cost the whole report
        return f"_Figure `{name}` could not be drawn ({type(e).__name__}: {e})._"
    return f"![{caption}](figures/{name})"


def _absent(what: str) -> list[str]:
    return [f"_Not in this run: {what}._", ""]


# ---------------------------------------------------------------- sections

def _header(run: Run) -> list[str]:
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
    out += _table(["Experiment", "budget", "folder", "targets", "restarts", "steps", "lr", "ablation", "seconds",
                   "problem-steps/s"], rows) + [""]
    token_norm = next((_float(x.config.get("token_norm")) for x in conds
                       if math.isfinite(_float(x.config.get("token_norm")))), math.nan)
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
        asked = (_read_json(run.root / "suite.json") or {}).get("config", {}).get("run", {}).get("norm_budgets")
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
    missing = [f"`{n}{suffix[b]}/`" for n in EXPERIMENTS for b in budgets if (n, b) not in present]
    for name, file in (("exp1", "trajectories.json"), ("exp1b", "analysis.json")):
        for b in budgets:
            if (name, b) in present and not (run.root / f"{name}{suffix[b]}" / file).is_file():
                missing.append(f"`{name}{suffix[b]}/{file}`")
    for b in budgets:
        if not (run.root / f"exp4_analysis{suffix[b]}.json").is_file():
            missing.append(f"`exp4_analysis{suffix[b]}.json`")
    return missing


def _pct(share: float) -> str:
    return f"{100 * share:.0f}%" if math.isfinite(share) else "—"


def _converged_cell(x: Condition) -> str:
    """Share converged, flagged '⚠' under CONVERGED_OK."""
    share = _share(x.converged())
    return f"⚠ {_pct(share)}" if math.isfinite(share) and share < CONVERGED_OK else _pct(share)


def _not_beating(x: Condition) -> bool:
    """Fewer than half of the targets (with a known copy baseline) beat it."""
    share = _share(x.beats_copy())
    return math.isfinite(share) and share < 0.5


def _steps_cell(x: Condition) -> str:
    v = x.median("steps_run")
    return f"{v:.0f}" if math.isfinite(v) else "—"


MARKS_NOTE = ("† after a cosine (and a bold share beating copy): fewer than half of the targets beat their copy "
              "baseline, the best scaled copy of the target fed as input within the same budget, so the residual "
              f"bypass alone explains that result. ⚠ before a share converged: under {100 * CONVERGED_OK:.0f}% of "
              "the targets converged (the others ran out of steps while still improving or growing their input "
              "norm; see the verdicts in the condition's section), so the medians are lower bounds.")


def _synthesis(run: Run) -> list[str]:
    rows = []
    for x in run.conditions.values():
        mark = " †" if _not_beating(x) else ""
        beats = _pct(_share(x.beats_copy()))
        rows.append([x.base_label, budget_label(x.budget), x.target_type, fmt(x.median("cos_no_pos0")) + mark,
                     fmt(x.median("copy_cos_no_pos0")), fmt(x.median("floor_cos_no_pos0")),
                     f"**{beats}**" if mark else beats, _converged_cell(x), _steps_cell(x),
                     fmt(x.median("cos")), fmt(x.median("copy_cos")), fmt(x.median("floor_cos")),
                     fmt(x.median("mse"))])
    return (["## Synthesis", ""]
            + _table(["Experiment", "budget", "target type", "median cos w/o pos 0", "copy baseline w/o pos 0",
                      "floor w/o pos 0", "beats copy", "converged", "median steps", "median cos", "copy baseline",
                      "floor", "median MSE"], rows)
            + ["", "Medians over targets. Budget: cap on each input vector's norm in units of the mean token-embedding "
               "norm (`inf` = free). Copy baseline = median over targets of the best cosine reached by feeding a scaled "
               "copy of the target itself (clipped to the budget): what the residual bypass gives with no optimisation. "
               "Floor = median random-token cosine for the same targets and model. Beats copy = share of targets whose "
               "cosine (w/o pos 0 where the loss skips it) exceeds their copy baseline (the rows' `beats_copy`); "
               "converged = share whose optimisation met the convergence criterion; median steps = steps run. Exp 1b projects the Exp 1 solutions at that budget onto their "
               "nearest tokens (no optimisation, so no copy or convergence columns). Exp 3 and Exp 5 rows pool every "
               "α or corruption fraction (see their tables). — = not recorded in that folder.", "",
               MARKS_NOTE, ""])


def _across(run: Run) -> list[str]:
    """Loss curves and cosine by position for the single-condition experiments, one pair of figures per budget."""
    singles = [x for x in run.conditions.values() if x.base not in SWEEPS]
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
        curves = {x.base_label: c for x in shown if (c := _best_restart_curve(x)) is not None}
        if curves:
            out += [_figure(run, f"loss_curves{suffix}.png", f"loss curves, {where}", plots.loss_curves, curves,
                            title=f"Loss during optimisation, {where}"), ""]
        else:
            out += _absent(f"loss curves at {where} (no curves.safetensors with more than one step)")
        series = {}
        for x in shown:
            cpp = [r.get("cos_per_position") for r in x.rows]
            if cpp and all(isinstance(v, list) and len(v) == len(cpp[0]) > 0 for v in cpp):
                series[x.base_label] = (np.array(cpp, dtype=np.float64), x.median("floor_cos"))
        if series:
            out += [_figure(run, f"cos_by_position{suffix}.png", f"cosine by position, {where}",
                            plots.cosine_by_position, series), ""]
        else:
            out += _absent(f"cosine by position at {where} (no cos_per_position in the rows)")
    return out


STAT_ROWS = STATISTICS_ROWS  # one list of rows for summary.md and the report


def _stats_table(x: Condition) -> list[str]:
    """Median / mean / std / min / max over targets of every STAT_ROWS field the rows carry."""
    rows = []
    for label, key, *digits in STAT_ROWS:  # optional third item: decimal places (default 4)
        st = _stats(x.column(key))
        if st is not None:
            rows.append([label] + [fmt(st[k], *digits) for k in ("median", "mean", "std", "min", "max")])
    return _table(["metric", "median", "mean", "std", "min", "max"], rows)


def _budget_phrase(x: Condition) -> str:
    if x.free:
        return "free input norm (no budget)"
    cap = _float(x.config.get("norm_budget"))
    text = f"input-norm budget {budget_label(x.budget)} × the mean token-embedding norm"
    if math.isfinite(cap):
        return text + f" (cap {fmt(cap, 3)})"
    if x.config.get("source_norm_budget_tokens") is not None:
        return f"inputs projected from solutions found at {text}"
    return text


def _verdict_line(x: Condition) -> str:
    """Verdict counts, share converged and share beating the copy baseline, in one sentence."""
    n = len(x.rows)
    parts = []
    counts = x.verdicts()
    if counts:
        names = ["converged", "norm_limited", "improving"] + sorted(set(counts) - {"converged", "norm_limited",
                                                                                  "improving"})
        parts.append("Verdicts: " + ", ".join(f"{v.replace('_', '-')} {counts.get(v, 0)}" for v in names)
                     + f" of {n} (share converged {_converged_cell(x)})")
    elif np.isfinite(x.converged()).any():
        parts.append(f"Share converged {_converged_cell(x)}")
    beats = x.beats_copy()
    if np.isfinite(beats).any():
        k, m = int(np.nansum(beats)), int(np.isfinite(beats).sum())
        parts.append(f"beats its copy baseline: {k} of {m} ({_pct(k / m)})"
                     + (" †" if _not_beating(x) else ""))
    at = [r["at_budget"] for r in x.rows if isinstance(r.get("at_budget"), bool)]
    if at and not x.free:
        parts.append(f"inputs at the budget: {sum(at)} of {len(at)}")
    if not parts:
        return "_No verdicts or copy baseline recorded in this folder._"
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def _condition_block(run: Run, x: Condition) -> list[str]:
    """Settings line, statistics table, verdicts and final-cosine histogram of one result folder."""
    o = x.config.get("optim", {})
    out = [f"### {x.label}: {x.target_type} (`{x.path.name}/`)", "",
           f"{len(x.rows)} targets x {x.config.get('restarts', '?')} restarts, {o.get('steps', '?')} steps, "
           f"layer {x.config.get('layer', '?')}, ablation {x.config.get('ablation', '?')}, {_budget_phrase(x)}.", ""]
    if not x.rows:
        return out + ["_problems.jsonl is empty._", ""]
    out += _stats_table(x) + ["", _verdict_line(x), ""]
    if np.isfinite(x.column("cos")).any():
        out += [_figure(run, f"hist_{x.name}.png", f"{x.label} final cosine", plots.cosine_histogram,
                        x.column("cos"), x.column("floor_cos"), f"{x.label}: final cosine per target"), ""]
    return out


def _exp1(run: Run) -> list[str]:
    out = ["## Exp 1: reachability of real activations", ""]
    if "exp1" not in run.conditions:
        return out + _absent("Exp 1 (`exp1/`)")
    out += _condition_block(run, run.conditions["exp1"])
    path = _side_file(run, "exp1", "trajectories.json")
    if path is None:
        return out + _absent("all-layer trajectories (`exp1/trajectories.json`)")
    traj = _read_json(path)
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
        out += _table(["layer", "median cos soft vs tokens", "median norm soft", "median norm tokens"], rows) + [""]
        out += [_figure(run, "trajectories.png", "all-layer trajectories", plots.trajectories, traj,
                        run.conditions["exp1"].median("floor_cos")), ""]
    return out


def _exp1b(run: Run) -> list[str]:
    out = ["## Exp 1b: distance of the optimised inputs to the token embeddings", ""]
    x = run.conditions.get("exp1b")
    path = _side_file(run, "exp1b", "analysis.json")
    if x is None and path is None:
        return out + _absent("Exp 1b (`exp1b/`)")
    if x is not None:
        out += _condition_block(run, x)
        if "exp1" in run.conditions:
            out += [f"Feeding the nearest tokens instead of the soft prompts reaches median cosine "
                    f"{fmt(x.median('cos'))}, against {fmt(run.conditions['exp1'].median('cos'))} for the soft prompts "
                    f"and a random-token floor of {fmt(x.median('floor_cos'))}.", ""]
    if path is None:
        return out + _absent("the embedding-distance analysis (`exp1b/analysis.json`)")
    a = _read_json(path)
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
    out += ["### Embedding distance", ""] + _table(["quantity", "value"], rows) + [""]
    top = a.get("top_nearest_tokens") or []
    if top:
        shown = [f"{_code(json.dumps(t['token'], ensure_ascii=False))} ×{t['count']}" for t in top[:20]]
        out += ["Most frequent nearest tokens: " + ", ".join(shown), ""]
    pca = a.get("pca_error") or {}
    if pca:
        ks = sorted({k for errs in pca.values() for k in errs}, key=float)
        out += ["Relative error of reconstruction (||x - x_k|| / ||x||, mean over vectors) from the top-k PCA "
                "directions of the (centred) embedding matrix:", ""]
        out += _table(["k"] + list(pca), [[k] + [fmt(pca[v].get(k)) for v in pca] for k in ks]) + [""]
    out += [_figure(run, "embedding_distance.png", "nearest-token cosine", plots.embedding_distance, a), ""]
    return out


def _code(s: str) -> str:
    """An inline code span that survives backticks in token strings."""
    return f"`` {s} ``" if "`" in s else f"`{s}`"


def _simple(run: Run, name: str, title: str) -> list[str]:
    out = [f"## {title}", ""]
    if name not in run.conditions:
        return out + _absent(f"{EXPERIMENTS[name][0]} (`{name}/`)")
    return out + _condition_block(run, run.conditions[name])


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


def _exp3(run: Run) -> list[str]:
    out = ["## Exp 3: interpolation and extrapolation between real targets", ""]
    x = run.conditions.get("exp3")
    if x is None:
        return out + _absent("Exp 3 (`exp3/`)")
    out += _condition_block(run, x)
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
    out += _table(["alpha", "median cos", "median cos w/o pos 0", "median MSE", "floor", "pairs", "description"],
                  rows) + [""]
    by_pair = {}
    for p, a, c in zip(pair, alpha, cos):
        by_pair.setdefault(p, {})[a] = c
    full = [d for d in by_pair.values() if {0.0, 0.5, 1.0} <= set(d)]
    if full:
        dips = sum(d[0.5] < min(d[0.0], d[1.0]) for d in full)
        out += [f"Midpoint (α = 0.5) below both endpoints in {dips} of {len(full)} pairs.", ""]
    out += [_figure(run, "alpha.png", "reachability vs alpha", plots.alpha_curve, alpha, pair, cos,
                    x.column("floor_cos")), ""]
    return out


def _correlation_rows(run: Run) -> tuple[list[dict], str]:
    """Per-target difficulty correlations between model variants: from exp4_analysis.json, else computed here."""
    saved = _read_json(run.root / "exp4_analysis.json") if not run.single else None
    if saved and saved.get("correlations"):
        return saved["correlations"], "from `exp4_analysis.json`"
    from scipy import stats

    names = [n for n in ABLATION_KEYS if n in run.conditions]
    out = []
    for i, a in enumerate(names):
        for b in names[i + 1:]:
            ca, cb = run.conditions[a].column("cos"), run.conditions[b].column("cos")
            m = np.isfinite(ca) & np.isfinite(cb)
            if ca.size != cb.size or m.sum() < 3:
                continue
            rho, p = stats.spearmanr(ca[m], cb[m])
            r, pp = stats.pearsonr(ca[m], cb[m])
            out.append({"a": ABLATION_KEYS[a], "b": ABLATION_KEYS[b], "spearman_rho": float(rho), "p_value": float(p),
                        "pearson_r": float(r), "pearson_p": float(pp)})
    return out, "computed by the report (`exp4_analysis.json` absent)"


def _same_targets(a: Condition, b: Condition) -> bool:
    """Same number of targets, and the same text windows where the rows record them."""
    if len(a.rows) != len(b.rows):
        return False
    wa, wb = [r.get("window") for r in a.rows], [r.get("window") for r in b.rows]
    return None in wa or None in wb or wa == wb


def _exp4(run: Run) -> list[str]:
    out = ["## Exp 4: attention and FFN ablations", ""]
    variants = [n for n in ("exp4_no_attn", "exp4_no_mlp") if n in run.conditions]
    if not variants:
        return out + _absent("Exp 4 (`exp4_no_attn/`, `exp4_no_mlp/`)")
    full = run.conditions.get("exp1")
    corr, source = _correlation_rows(run)
    by_b = {c.get("b"): c for c in corr if c.get("a") == "full"}
    rows = []
    for name in (["exp1"] if full else []) + variants:
        x = run.conditions[name]
        delta, better, rho, r = "—", "—", "—", "—"
        if name != "exp1" and full is not None:
            delta = f"{x.median('cos') - full.median('cos'):+.4f}"
            if _same_targets(x, full):
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
    out += _table(["Variant", "folder", "median cos", "median cos w/o pos 0", "Δ median from full",
                   "better than full", "Spearman ρ vs full (p)", "Pearson r vs full (p)"], rows) + [""]
    if full is None:
        out += ["_Exp 1 (the full model on the same targets) is missing, so there are no deltas._", ""]
    if corr:
        out += [f"Per-target difficulty correlations ({source}):", ""]
        out += _table(["a", "b", "Spearman ρ", "p", "Pearson r", "p"],
                      [[str(c.get("a")), str(c.get("b")), fmt(c.get("spearman_rho"), 3), fmt(c.get("p_value"), 3),
                        fmt(c.get("pearson_r"), 3), fmt(c.get("pearson_p"), 3)] for c in corr]) + [""]
    shown = {ABLATION_LABELS[n]: (run.conditions[n].column("cos"), run.conditions[n].median("floor_cos"))
             for n in (["exp1"] if full else []) + variants}
    paired = full is None or all(_same_targets(run.conditions[n], full) for n in variants)
    out += [_figure(run, "ablation.png", "ablation comparison", plots.ablation_comparison, shown, paired=paired), ""]
    for name in variants:
        out += _condition_block(run, run.conditions[name])
    return out


def _exp5(run: Run) -> list[str]:
    out = ["## Exp 5: target corruption sweep", ""]
    variants = {n: run.conditions[n] for n in ("exp5_raw", "exp5_pca") if n in run.conditions}
    if not variants:
        return out + _absent("Exp 5 (`exp5_raw/`, `exp5_pca/`)")
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
            out += _absent(f"{EXPERIMENTS[name][0]} (`{name}/`)")
    if not fractions:
        out += ["_The rows carry no `fraction`; no table by fraction._", ""]
    else:
        out += _table(header, rows) + [""]
        shown = {("raw dimensions (A)" if n == "exp5_raw" else "PCA directions (B)"):
                 (x.column("fraction"), x.column("cos"), x.column("floor_cos")) for n, x in variants.items()}
        out += [_figure(run, "corruption.png", "corruption curves", plots.corruption_curves, shown), ""]
    for x in variants.values():
        out += _condition_block(run, x)
    return out


def _others(run: Run) -> list[str]:
    extra = [x for x in run.conditions.values() if x.base not in EXPERIMENTS]
    if not extra:
        return []
    out = ["## Other result folders", ""]
    for x in extra:
        out += _condition_block(run, x)
    return out


def _budgeted(run: Run) -> list[str]:
    """One generic block per result folder of a known experiment at a finite norm budget."""
    shown = [x for x in run.conditions.values() if not x.free and x.base in EXPERIMENTS]
    if not shown:
        return []
    out = ["## Conditions at a norm budget", "",
           "One block per budgeted result folder; the experiment sections above cover the free folders.", ""]
    for x in shown:
        out += _condition_block(run, x)
    return out


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
            corr = (_read_json(path) or {}).get("correlations") or []
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
            + _table(["budget", "a", "b", "Spearman ρ", "p", "Pearson r", "p"], rows) + [""])


def _budgets(run: Run) -> list[str]:
    """Fidelity against the input-norm budget beside the copy baseline and floor; reachability radius per target."""
    out = ["## Norm budgets", ""]
    conds = list(run.conditions.values())
    if all(x.free for x in conds):
        return out + _absent("norm-budgeted result folders (`NAME_bB/`, e.g. `exp1_b1/`): every folder is free")
    groups = _groups(run)
    budgets = sorted({x.budget for x in conds})
    token_norm = next((_float(x.config.get("token_norm")) for x in conds
                       if math.isfinite(_float(x.config.get("token_norm")))), math.nan)
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
            cells.append(f"{fmt(x.median('cos_no_pos0'))}{' †' if _not_beating(x) else ''} "
                         f"(copy {fmt(x.median('copy_cos_no_pos0'))}, floor {fmt(x.median('floor_cos_no_pos0'))})")
        rows.append(cells)
        cos = [x.median("cos_no_pos0") for x in xs]
        if any(math.isfinite(c) for c in cos):
            series[xs[0].base_label] = {"budget": [x.budget for x in xs], "cos": cos,
                                        "copy": [x.median("copy_cos_no_pos0") for x in xs],
                                        "floor": [x.median("floor_cos_no_pos0") for x in xs]}
    out += _table(["Experiment"] + ["free" if math.isinf(b) else f"budget {budget_label(b)}" for b in budgets],
                  rows) + [""]
    if series:
        out += [_figure(run, "budgets.png", "fidelity against norm budget", plots.budget_curves, series), ""]

    # reachability radius: rows correspond across budgets within an experiment (same row index = same target)
    radii, skipped = {}, []
    for base, xs in groups.items():
        if xs[0].rows and all(_same_targets(x, xs[0]) for x in xs):
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
        return out + _absent("a radius (no experiment with corresponding targets)") + _exp4_budget_correlations(run)
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
    out += _table(["Experiment"] + ["free" if math.isinf(b) else f"≤ {budget_label(b)}" for b in budgets],
                  counts) + [""]
    n = max(len(rad) for _, rad in radii.values())
    if n <= 20:  # experiments as rows, targets as columns
        table = _table(["Experiment"] + [f"t{i}" for i in range(n)],
                       [[label] + rad + ["—"] * (n - len(rad)) for label, (_, rad) in radii.items()])
    else:  # targets as rows
        table = _table(["target"] + list(radii),
                       [[str(i)] + [rad[i] if i < len(rad) else "—" for _, rad in radii.values()] for i in range(n)])
    out += [f"Radius per target (t{{i}} = row i of problems.jsonl, threshold cos w/o pos 0 ≥ {RADIUS_COS}):", ""]
    out += table + [""]
    return out + _exp4_budget_correlations(run)


def write_report(run_dir: str | Path) -> Path:
    """Write RUN/report.md and RUN/figures/*.png for a suite or single result folder; return the report's path."""
    run = load_run(run_dir)
    if run.single:  # one result folder: only the section about what it holds
        name = next(iter(run.conditions))
        section = {"exp1": _exp1, "exp1b": _exp1b, "exp3": _exp3, "exp4_no_attn": _exp4, "exp4_no_mlp": _exp4,
                   "exp5_raw": _exp5, "exp5_pca": _exp5}.get(name)
        if section is not None:
            body = [section(run)]
        elif name in EXPERIMENTS:
            body = [_simple(run, name, EXPERIMENTS[name][0])]
        elif split_budget(name)[0] in EXPERIMENTS:
            body = [_budgeted(run)]
        else:
            body = [_others(run)]
        budgets = [] if run.conditions[name].free else [_budgets(run)]
    else:
        body = [_exp1(run), _exp1b(run), _simple(run, "exp2a", "Exp 2a: distribution-matched random targets"),
                _simple(run, "exp2b", "Exp 2b: raw random targets"), _exp3(run), _exp4(run), _exp5(run),
                _budgeted(run), _others(run)]
        budgets = [_budgets(run)]
    parts = [_header(run), _synthesis(run)] + budgets + [_across(run)] + body
    text = "\n".join(line for part in parts for line in part).rstrip() + "\n"
    path = run.root / "report.md"
    atomic_write_text(path, text)
    return path
