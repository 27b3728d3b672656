"""The markdown report of a suite folder (or of one result folder), mirroring the research log.

`write_report(run_dir)` reads whichever result folders exist, writes `report.md` and
`figures/*.png` into run_dir, and says in the report what is missing. Every statistic is
recomputed from problems.jsonl (one row per target), so each number can be checked against the
saved rows.

Suite layout read here (any subset may exist):
    exp1/ [trajectories.json]   exp1b/ [analysis.json]   exp2a/  exp2b/   exp3/ (rows: pair, alpha)
    exp4_no_attn/  exp4_no_mlp/  exp4_analysis.json      exp5_raw/  exp5_pca/ (rows: fraction)
A result folder has config.json and problems.jsonl (see DESIGN.md); hidden `.NAME.partial-PID`
folders are unfinished writes and are only mentioned.
"""
from __future__ import annotations

import json
import math
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from . import __version__, plots
from .errors import UserError
from .store import atomic_write_text
from .summary_md import summary_table

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


@dataclass
class Condition:
    """One result folder: its config, summary and per-target rows."""

    name: str  # e.g. "exp1", "exp4_no_attn"
    path: Path
    config: dict
    summary: dict
    rows: list[dict]  # problems.jsonl, one per target

    @property
    def label(self) -> str:
        return EXPERIMENTS.get(self.name, (self.name, ""))[0]

    @property
    def target_type(self) -> str:
        return EXPERIMENTS.get(self.name, ("", self.config.get("experiment", "?")))[1]

    def column(self, key: str) -> np.ndarray:
        """`key` of every row as float64 [N], NaN where absent."""
        return np.array([_float(r.get(key)) for r in self.rows], dtype=np.float64)

    def median(self, key: str) -> float:
        """Median over targets of the finite values of `key` (NaN when there are none)."""
        v = self.column(key)
        v = v[np.isfinite(v)]
        return float(np.median(v)) if v.size else math.nan


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
    """Name of a lone result folder: its folder name if known, else its config's experiment."""
    if path.name in EXPERIMENTS:
        return path.name
    exp = str(config.get("experiment") or path.name)
    if exp == "exp4" and config.get("ablation") not in (None, "none"):
        exp = f"exp4_{config['ablation']}"
    return exp


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
    order = [n for n in EXPERIMENTS if n in found] + sorted(n for n in found if n not in EXPERIMENTS)
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
        rows.append([x.label, f"`{x.path.name}/`" if not run.single else "`.`", str(len(x.rows)),
                     str(x.config.get("restarts", "?")), str(x.config.get("optim", {}).get("steps", "?")),
                     str(x.config.get("optim", {}).get("lr", "?")), str(x.config.get("ablation", "?")),
                     fmt(s.get("seconds"), 1), fmt(s.get("problem_steps_per_second"), 1)])
    out += _table(["Experiment", "folder", "targets", "restarts", "steps", "lr", "ablation", "seconds",
                   "problem-steps/s"], rows) + [""]
    if run.single:
        out += ["This report covers one result folder; the other experiments of the suite are not part of it.", ""]
    else:
        missing = [f"`{n}/`" for n in EXPERIMENTS if n not in run.conditions]
        for name, file in (("exp1", "trajectories.json"), ("exp1b", "analysis.json")):
            if _side_file(run, name, file) is None:
                missing.append(f"`{name}/{file}`")
        if not (run.root / "exp4_analysis.json").is_file():
            missing.append("`exp4_analysis.json`")
        if missing:
            out += ["**Missing from this run:** " + ", ".join(missing) + ".", ""]
        if run.unfinished:
            out += ["**Unfinished (staging folder left by a running or interrupted write):** "
                    + ", ".join(f"`{n}`" for n in run.unfinished) + ".", ""]
    return out


def _synthesis(run: Run) -> list[str]:
    rows = [[x.label, x.target_type, fmt(x.median("cos")), fmt(x.median("cos_no_pos0")), fmt(x.median("mse")),
             fmt(x.median("floor_cos"))] for x in run.conditions.values()]
    return (["## Synthesis", ""]
            + _table(["Experiment", "target type", "median cos", "median cos w/o pos 0", "median MSE", "floor"], rows)
            + ["", "Medians over targets; floor = median random-token cosine for the same targets and model. "
               "Exp 3 and Exp 5 rows pool every α or corruption fraction (see their tables).", ""])


def _across(run: Run) -> list[str]:
    """Loss curves and cosine by position for the single-condition experiments."""
    singles = [x for x in run.conditions.values() if x.name not in SWEEPS]
    out = ["## Across experiments", "",
           "Single-condition experiments only: Exp 3 and Exp 5 mix several α or fractions and have their own "
           "figures.", ""]
    curves = {x.label: c for x in singles if (c := _best_restart_curve(x)) is not None}
    if curves:
        out += [_figure(run, "loss_curves.png", "loss curves", plots.loss_curves, curves), ""]
    else:
        out += _absent("loss curves (no curves.safetensors with more than one step)")
    series = {}
    for x in singles:
        cpp = [r.get("cos_per_position") for r in x.rows]
        if cpp and all(isinstance(v, list) and len(v) == len(cpp[0]) > 0 for v in cpp):
            series[x.label] = (np.array(cpp, dtype=np.float64), x.median("floor_cos"))
    if series:
        out += [_figure(run, "cos_by_position.png", "cosine by position", plots.cosine_by_position, series), ""]
    else:
        out += _absent("cosine by position (no cos_per_position in the rows)")
    return out


def _condition_block(run: Run, x: Condition) -> list[str]:
    """Settings line, statistics table and final-cosine histogram of one result folder."""
    o = x.config.get("optim", {})
    s = {key: st for key in x.rows[0] if (st := _stats(x.column(key))) is not None} if x.rows else {}
    out = [f"### {x.label}: {x.target_type} (`{x.path.name}/`)", "",
           f"{len(x.rows)} targets x {x.config.get('restarts', '?')} restarts, {o.get('steps', '?')} steps, "
           f"layer {x.config.get('layer', '?')}, ablation {x.config.get('ablation', '?')}.", ""]
    if not x.rows:
        return out + ["_problems.jsonl is empty._", ""]
    out += [summary_table(s), ""]
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
    extra = [x for x in run.conditions.values() if x.name not in EXPERIMENTS]
    if not extra:
        return []
    out = ["## Other result folders", ""]
    for x in extra:
        out += _condition_block(run, x)
    return out


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
        else:
            body = [_others(run)]
    else:
        body = [_exp1(run), _exp1b(run), _simple(run, "exp2a", "Exp 2a: distribution-matched random targets"),
                _simple(run, "exp2b", "Exp 2b: raw random targets"), _exp3(run), _exp4(run), _exp5(run), _others(run)]
    parts = [_header(run), _synthesis(run), _across(run)] + body
    text = "\n".join(line for part in parts for line in part).rstrip() + "\n"
    path = run.root / "report.md"
    atomic_write_text(path, text)
    return path
