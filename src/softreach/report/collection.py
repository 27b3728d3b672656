"""The report of a folder that holds several runs (suite, ladder, steer and sweep folders side by side).

`softreach report DIR` on such a folder rewrites each run's own report, then writes DIR/report.md: a contents list
linking every run's report, and, for every sweep (K, M, distance) that two or more steer folders ran, one figure
with a line per folder (layout, target kind and c, norm budget) and a table of the same numbers, so target kinds
and layouts read side by side.
"""
from __future__ import annotations

import math
from pathlib import Path

from ..errors import UserError
from ..results.folder import atomic_write_text, read_json
from ..stats import field_mean
from .format import fmt, pct, table
from .load import is_result_folder
from .steer import SWEEP_TITLES, load_points



def run_kind(path: Path) -> str | None:
    """What a folder holds: steer, ladder, sweep, result (one result folder), suite (result folders), or None."""
    if (path / "steer.json").is_file():
        return "steer"
    if (path / "frontier.json").is_file():
        return "ladder"
    if (path / "sweep.json").is_file():
        return "sweep"
    if is_result_folder(path):
        return "result"
    if any(p.is_dir() and not p.name.startswith(".") and is_result_folder(p) for p in path.iterdir()):
        return "suite"
    return None


def is_collection(path: Path) -> bool:
    """A folder of runs: not a run itself (or only a suite's result folders), holding a steer, ladder, sweep or
    suite folder."""
    kind = run_kind(path)
    return kind in (None, "suite") and any(k not in (None, "result") for _, k in runs_in(path))


def runs_in(root: Path) -> list[tuple[Path, str]]:
    """The runs directly under root (hidden folders skipped), by name."""
    found = [(p, run_kind(p)) for p in sorted(root.iterdir()) if p.is_dir() and not p.name.startswith(".")]
    return [(p, kind) for p, kind in found if kind]


def write_run_report(path: Path, kind: str) -> Path:
    """Rewrite one run's own report; return its path."""
    if kind == "steer":
        from .steer import write_steer_report

        return write_steer_report(path)
    if kind == "ladder":
        from .ladder import write_ladder_report

        return write_ladder_report(path)
    if kind == "sweep":
        from ..sweep.collect import collect

        collect(path)
        return path / "sweep_report.md"
    from . import write_report

    return write_report(path)


def series_label(cfg: dict, coefficient: float | None) -> str:
    """How a steer folder's line is named: layout, target kind (with c), norm budget."""
    kind = cfg["kind"] + (f" c={coefficient:g}" if coefficient is not None else "")
    budget = "free" if math.isinf(float(cfg["norm_budget"])) else f"budget {float(cfg['norm_budget']):g}"
    return f"{cfg['layout']}, {kind}, {budget}"


def steer_series(folders: list[Path], sweep: str) -> list[tuple[str, dict]]:
    """Per steer folder (and coefficient, for steered targets at several c): label -> {sweep value: problems}."""
    series = []
    for folder in folders:
        cfg = read_json(folder / "steer.json")["config"]
        points = [(c["sweep_value"], rows) for _, c, rows in load_points(folder) if c.get("sweep") == sweep]
        if not points:
            continue
        coefficients = cfg["coefficients"] if cfg["kind"] == "steered" else [None]
        for c in coefficients:
            by_value = {v: [r for r in rows if c is None or r.get("coefficient") == c] for v, rows in points}
            series.append((series_label(cfg, c), {v: rows for v, rows in by_value.items() if rows}))
    return series


def _ordered(values) -> list:
    """Sweep values in order, "all" last."""
    return sorted(set(values), key=lambda v: math.inf if v == "all" else float(v))


def steer_lines(root: Path, folders: list[Path]) -> list[str]:
    """A figure and a table per sweep that two or more steer folders ran."""
    from ..plots.steer import plot_series

    lines = []
    for sweep, (title, xlabel) in SWEEP_TITLES.items():
        series = steer_series(folders, sweep)
        if len(series) < 2:
            continue
        labels = _ordered(v for _, points in series for v in points)
        rows = []
        for name, points in series:
            rows.append([f"{name}: soft slots (converged)"] + [
                f"{fmt(field_mean(points[v], 'cos'))} ({pct(field_mean(points[v], 'converged'))})" if v in points
                else "-" for v in labels])
            baselines = [("own_cos", "own tokens"), ("floor_cos", "random tokens"), ("kl", "next-token KL")]
            if any("near_miss_cos" in r for rs in points.values() for r in rs):  # real targets: the known answer
                baselines.insert(2, ("near_miss_cos", "source tokens, one slot random"))
            for key, what in baselines:
                rows.append([f"{name}: {what}"] + [fmt(field_mean(points[v], key)) if v in points else "-"
                                                    for v in labels])
        figure = plot_series(series, labels, root / f"steer_{sweep}_all.png", title, xlabel)
        lines += [f"## {title}, every steer folder", "",
                  "Means over each folder's texts; the soft slots' share converged in brackets (under 90%: a lower "
                  "bound); no copy baseline exists (the steered positions hold fixed text).", "",
                  *table([xlabel] + [str(v) for v in labels], rows), "", f"![{title}]({figure.name})", ""]
    return lines


def write_collection_report(root: str | Path) -> Path:
    """Every run's own report, then ROOT/report.md with a contents list and the steer folders side by side."""
    root = Path(root)
    runs = runs_in(root)
    if not runs:
        raise UserError(f"{root} holds no result folder, suite, ladder, steer or sweep folder; nothing to report")
    contents, written = [], {}
    for path, kind in runs:
        try:
            written[path] = write_run_report(path, kind)
            contents.append(f"- [{path.name}]({written[path].relative_to(root).as_posix()}): {kind}")
        except UserError as e:
            contents.append(f"- {path.name}: {kind}, not reported ({e})")
    steer = [p for p, kind in runs if kind == "steer" and p in written]
    across = steer_lines(root, steer)
    if across:
        contents.insert(0, "- [Steering across folders](#steering-across-folders)")
        across = ["# Steering across folders", ""] + across
    lines = [f"# softreach runs in {root.name}", "", "## Contents", "", *contents, "", *across]
    path = root / "report.md"
    atomic_write_text(path, "\n".join(lines).rstrip() + "\n")
    return path
