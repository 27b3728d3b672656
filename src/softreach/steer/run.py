"""Run a steering condition into a result folder, or sweeps over K, M and distance into a steer folder.

Layout of a steer folder (each subfolder follows docs/result-folders.md, with context tensors):
  steer.json            the resolved SteerConfig; a folder made by another config is never resumed
  k1/ k2/ ...           the K sweep (the base --steer and --distance)
  m1/ ... m_all/        the M sweep (the last M positions, K = --soft)
  distance1/ ...        the distance sweep (one position at that distance from the slots, K = --soft)
  report.md, steer_*.png
A point's folder appears only complete, so a rerun resumes at the first point not done.
"""
from __future__ import annotations

import dataclasses
from pathlib import Path

from ..budget import budget_fields
from ..errors import UserError
from ..progress import StepBar
from ..results.folder import check_destination, is_done, read_json, write_condition
from ..results.markers import open_marked_folder
from .config import SteerConfig
from .solve import solve_steer
from .targets import build_targets, mean_difference
from .template import draw_texts, steered_positions


@dataclasses.dataclass
class Point:
    """One condition of a steer run: its folder name, sweep, x value and frame settings."""

    name: str
    sweep: str | None
    x: object
    soft: int
    steer: str
    distance: int | None


def points(cfg: SteerConfig, n_after: int) -> list[Point]:
    """The conditions a config asks for (one when it sweeps nothing); those that do not fit the text are dropped."""
    if not cfg.sweep:
        return [Point("", None, None, cfg.soft, cfg.steer, cfg.distance)]
    out = []
    if "k" in cfg.sweep:
        out += [Point(f"k{k}", "k", k, k, cfg.steer, cfg.distance) for k in cfg.k_values]
    if "m" in cfg.sweep:
        for m in cfg.m_values:
            if m == "all" or int(m) <= n_after:
                out.append(Point(f"m_{m}" if m == "all" else f"m{m}", "m", m, cfg.soft,
                                 "all" if m == "all" else f"last:{m}", cfg.distance if m != "all" else None))
    if "distance" in cfg.sweep:
        out += [Point(f"distance{d}", "distance", d, cfg.soft, "last", d) for d in cfg.distances if d <= n_after]
    return out


def point_config(lm, layer: int, cfg: SteerConfig, point: Point, frame) -> dict:
    """config.json of one condition: the settings, the model, the frame and the absolute norm budget."""
    from ..results.folder import resolved_config

    out = resolved_config(cfg, lm, layer, "steer")
    out.update(ablation="none", soft=point.soft, steer=point.steer, distance=point.distance, sweep=point.sweep,
               sweep_value=point.x, n_before=frame.n_before, n_after=frame.n_after,
               target_positions=frame.positions.tolist(), **budget_fields(lm, cfg.norm_budget))
    return out


def run_steer(cfg: SteerConfig, out: str | Path, lm=None, show_progress: bool = True, overwrite: bool = False) -> dict:
    """Run every condition of `cfg` (resuming a steer folder); returns {point name: (result, config)} and the model."""
    from ..models import load_model

    out = Path(out)
    if not cfg.sweep:
        check_destination(out, overwrite)  # refuse an existing folder before any work
    else:
        open_marked_folder(out, "steer.json", cfg.to_dict(), "steer", overwrite, key="config")
    lm = lm or load_model(cfg.model, cfg.device)
    layer = lm.layer(cfg.layer)
    n_before, n_after = cfg.lengths
    wanted = points(cfg, n_after)
    k_max = max(p.soft for p in wanted)
    total = n_before + k_max + n_after
    if lm.max_positions is not None and total > lm.max_positions:
        raise UserError(f"{n_before} + {k_max} + {n_after} positions exceed the model's {lm.max_positions}")
    for p in wanted:  # refuse a bad frame before any work
        steered_positions(n_before, p.soft, n_after, p.steer, p.distance)
    texts, donors = draw_texts(lm, cfg.corpus, n_before, k_max, n_after, cfg.targets, cfg.seed,
                               donors=cfg.targets if cfg.kind == "real" else 0)
    direction = None
    if cfg.kind == "steered" and cfg.direction == "mean_diff":
        direction = mean_difference(lm, layer, cfg.direction_a, cfg.direction_b)
    results = {}
    for p in wanted:
        folder = out / p.name if p.name else out
        if cfg.sweep and is_done(folder):
            results[p.name] = (None, read_json(folder / "config.json"))
            continue
        frame = texts.frame(p.soft, steered_positions(n_before, p.soft, n_after, p.steer, p.distance))
        problems = build_targets(lm, layer, cfg, texts, donors, frame, direction)
        budget = cfg.optim.problem_steps(problems.frame.rows, cfg.restarts)
        with StepBar(budget, p.name or "steer", show_progress) as bar:
            result = solve_steer(lm, layer, cfg, problems, bar.update)
        config = point_config(lm, layer, cfg, p, frame)
        extra = {**problems.frame.context_tensors(), "own_tokens": problems.own_tokens.long()}
        write_condition(folder, result, config, f"steer {p.name or ''}".strip(), overwrite and not cfg.sweep,
                        tokens=problems.source_tokens, extra_tensors=extra)
        results[p.name] = (result, config)
    if cfg.sweep:
        from ..report.steer import write_steer_report

        write_steer_report(out)
    return {"results": results, "lm": lm, "layer": layer, "out": out}
