"""Reading a suite folder (or one result folder) for the report: its result folders and side files.

A result folder holds config.json and problems.jsonl (one row per target; see docs/result-folders.md).
A folder at an input-norm budget B carries the suffix `_bB` (`exp1_b1`, `exp4_no_mlp_b0.5`); hidden
`.NAME.partial-PID` folders are unfinished writes and are only listed.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..budget import budget_label, folder_suffix
from ..errors import UserError
from ..experiments.registry import CONDITIONS
from ..results.folder import read_json, read_problems

ORDER = tuple(CONDITIONS)
"""The report's order of the known result folders: the registry's conditions, in the log's order."""
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
        known = CONDITIONS.get(self.base)
        return known.label if known else self.base

    @property
    def label(self) -> str:
        return self.base_label if self.free else f"{self.base_label} (budget {budget_label(self.budget)})"

    @property
    def target_type(self) -> str:
        known = CONDITIONS.get(self.base)
        return known.targets if known else self.config.get("experiment", "?")

    def column(self, key: str) -> np.ndarray:
        """`key` of every row as float64 [N], NaN where absent."""
        return np.array([as_float(r.get(key)) for r in self.rows], dtype=np.float64)

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
            c, k = as_float(r.get("cos_no_pos0")), as_float(r.get("copy_cos_no_pos0"))
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


def known_share(flags: np.ndarray) -> float:
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


def as_float(x) -> float:
    """A JSON number as a float; NaN for anything else (None, bool, text)."""
    return float(x) if isinstance(x, (int, float)) and not isinstance(x, bool) else math.nan


def is_result_folder(path: Path) -> bool:
    """Whether path holds config.json and problems.jsonl."""
    return (path / "config.json").is_file() and (path / "problems.jsonl").is_file()


def _read_condition(path: Path, name: str) -> Condition:
    rows = read_problems(path)  # one-line error for a corrupt line
    config = read_json(path / "config.json", missing_ok=True) or {}
    return Condition(name, path, config, read_json(path / "summary.json", missing_ok=True) or {}, rows)


def _single_name(path: Path, config: dict) -> str:
    """Name of a lone result folder: its folder name if known (budget suffix included), else its config's
    experiment with the suffix of its budget."""
    if split_budget(path.name)[0] in CONDITIONS:
        return path.name
    exp = str(config.get("experiment") or path.name)
    if exp == "exp4" and config.get("ablation") not in (None, "none"):
        exp = f"exp4_{config['ablation']}"
    budget = split_budget(exp, config)[1]
    return exp if _SUFFIX.match(exp) else exp + folder_suffix(budget)


def run_order(names) -> list[str]:
    """Known experiments in ORDER, then the others by name; within one experiment its budgets smallest
    first and the free folder last (exp1_b0.5, exp1_b1, exp1, exp1b_b1, exp1b, ...)."""
    known = list(ORDER)

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
        name = _single_name(root.resolve(), read_json(root / "config.json", missing_ok=True) or {})
        return Run(root, True, {name: _read_condition(root, name)}, [])
    subs = sorted(p for p in root.iterdir() if p.is_dir())
    found = {p.name: _read_condition(p, p.name) for p in subs if not p.name.startswith(".") and is_result_folder(p)}
    if not found:
        raise UserError(f"{root} holds no result folders (no config.json and problems.jsonl in it or its "
                        "subfolders); nothing to report")
    order = run_order(found)
    staged = [p.name for p in subs if p.name.startswith(".") and ".partial-" in p.name]  # .NAME.partial-PID
    unfinished = sorted({n[1:].split(".partial-")[0] for n in staged})
    return Run(root, False, {n: found[n] for n in order}, unfinished)


def side_file(run: Run, name: str, file: str) -> Path | None:
    """A file that lives beside a result (exp1/trajectories.json, exp1b/analysis.json), if present."""
    if run.single:
        path = run.conditions[name].path / file if name in run.conditions else None
    else:
        path = run.root / name / file
    return path if path is not None and path.is_file() else None


def best_restart_curve(cond: Condition, key: str = "loss") -> np.ndarray | None:
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


def same_targets(a: Condition, b: Condition) -> bool:
    """Same number of targets, and the same text windows where the rows record them."""
    if len(a.rows) != len(b.rows):
        return False
    wa, wb = [r.get("window") for r in a.rows], [r.get("window") for r in b.rows]
    return None in wa or None in wb or wa == wb
