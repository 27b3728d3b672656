"""The constraint ladder's frontier: frontier.json, its markdown table, and the folder's report.md.

frontier.json holds one point per result folder of a ladder folder (softreach.ladder describes the
layout): the means over targets of the row fields in POINT_FIELDS, in ladder order, beside the model,
layer, target shape (from the ladder.json marker) and the random-token floor.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from ..ladder.config import RUNGS
from ..errors import UserError
from ..plots.ladder import frontier_figure
from ..results.folder import atomic_write_text, dumps_json, is_done, read_json, read_problems
from .format import fmt, table

MARKER = "ladder.json"
"""The marker file of a ladder folder: what made it (model, layer, seed, targets, settings)."""
FRONTIER = "frontier.json"

POINT_FIELDS = ("cos", "cos_no_pos0", "mse", "mse_no_pos0", "nearest_cos", "nearest_cos_no_pos0", "norm_ratio",
                "kl", "kl_no_pos0", "top1", "top1_no_pos0", "forward_passes", "seconds", "floor_cos",
                "floor_cos_no_pos0", "token_recovery", "exact_recovery")
"""What frontier.json keeps per folder: the mean over targets of these row fields."""

_MISSING = "–"  # what a missing number prints as in the frontier table


def _folder_order(name: str, rung: str) -> tuple:
    return (RUNGS.index(rung) if rung in RUNGS else len(RUNGS), name)


def write_frontier(out_dir) -> Path:
    """frontier.json: one point per result folder (means over targets), in ladder order."""
    out = Path(out_dir)
    points = []
    for folder in sorted(p for p in out.iterdir() if is_done(p)):
        rows = read_problems(folder)
        config = read_json(folder / "config.json")
        point = {"name": folder.name, "rung": rows[0].get("rung", config.get("rung")),
                 "setting": rows[0].get("setting"), "discrete": bool(rows[0].get("discrete")), "n_targets": len(rows)}
        for key in POINT_FIELDS:
            values = [r[key] for r in rows if key in r]
            point[key] = float(np.mean(values)) if values else None
        points.append(point)
    points.sort(key=lambda p: _folder_order(p["name"], p["rung"]))
    marker = read_json(out / MARKER, missing_ok=True) or {}
    floor = {k: points[0][f"floor_{k}"] for k in ("cos", "cos_no_pos0")} if points else {}
    frontier = {"model": marker.get("model"), "layer": marker.get("layer"),
                "targets_shape": marker.get("targets_shape"), "floor": floor, "points": points}
    path = out / FRONTIER
    atomic_write_text(path, dumps_json(frontier))
    return path


def load_frontier(out_dir) -> dict:
    """A ladder folder's frontier.json (written first if missing)."""
    path = Path(out_dir) / FRONTIER
    if not path.is_file():
        if not Path(out_dir).is_dir():
            raise UserError(f"{out_dir} is not a ladder folder")
        write_frontier(out_dir)
    return read_json(path)


def frontier_table(out_dir) -> str:
    """The frontier as a markdown table: one row per rung setting, means over targets."""
    f = load_frontier(out_dir)

    def num(x, digits: int = 4) -> str:
        return fmt(x, digits, missing=_MISSING)

    header = ["rung setting", "discrete", "cos", "cos w/o pos 0", "MSE", "MSE w/o pos 0", "nearest-token cos",
              "norm ratio", "KL (nats)", "KL w/o pos 0", "top-1 w/o pos 0", "tokens recovered", "exactly recovered",
              "fwd passes / target", "s / target"]
    rows = [[p["name"], "yes" if p["discrete"] else "no", num(p["cos"]), num(p["cos_no_pos0"]), num(p["mse"], 3),
             num(p["mse_no_pos0"], 3), num(p["nearest_cos"], 3), num(p["norm_ratio"], 2), num(p["kl"], 3),
             num(p["kl_no_pos0"], 3), num(p["top1_no_pos0"], 2), num(p.get("token_recovery"), 3),
             num(p.get("exact_recovery"), 2), f"{p['forward_passes']:.0f}", num(p["seconds"], 2)]
            for p in f["points"]]
    lines = table(header, rows)
    floor = f.get("floor") or {}
    if floor.get("cos") is not None:
        lines.append("")
        lines.append(f"Random-token floor: cos {num(floor['cos'])}, "
                     f"without position 0 {num(floor.get('cos_no_pos0'))}. "
                     "Means over targets; nearest-token cos and norm ratio describe the input vectors; "
                     "KL is KL(target's next-token distribution || reached's). Tokens recovered: share of positions "
                     "whose token is the target's own (known-answer targets, discrete rungs); exactly recovered: share "
                     "of targets with every token. Forward passes in full-sequence equivalents (causal: positions "
                     "processed / T).")
    return "\n".join(lines)


def write_ladder_report(out_dir) -> Path:
    """frontier.png and report.md (the frontier table and figure) for a ladder folder; returns report.md."""
    out = Path(out_dir)
    frontier_figure(load_frontier(out), out / "frontier.png")
    text = ("# Constraint ladder: fidelity against distance from the token manifold\n\n"
            + frontier_table(out) + "\n\n![frontier](frontier.png)\n")
    atomic_write_text(out / "report.md", text)
    return out / "report.md"
