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
    if not cfg.sweep and not cfg.rungs:
        return [Point("", None, None, cfg.soft, cfg.steer, cfg.distance)]
    out = [Point("soft", None, None, cfg.soft, cfg.steer, cfg.distance)] if cfg.rungs else []
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


def run_steer(cfg: SteerConfig, out: str | Path | None, lm=None, show_progress: bool = True,
              overwrite: bool = False) -> dict:
    """Run every condition of `cfg`: into a result folder (no sweep), a resumable steer folder (sweeps), or,
    with out=None, in memory only. Returns {"results": {point name: (ConditionResult or None when resumed,
    config)}, "lm", "layer", "out"}."""
    from ..models import load_model

    out = None if out is None else Path(out)
    many = bool(cfg.sweep or cfg.rungs)  # a steer folder of result folders, else one result folder
    if out is not None and not many:
        check_destination(out, overwrite)  # refuse an existing folder before any work
    lm = lm or load_model(cfg.model, cfg.device)
    layer = lm.layer(cfg.layer)
    n_before, n_after = cfg.lengths
    wanted = points(cfg, n_after)
    # texts are cut for the largest K the config names (the K sweep's too, run or not), so the same seed
    # gives the same texts whichever sweeps run
    k_max = max([cfg.soft, *cfg.k_values])
    total = n_before + k_max + n_after
    if lm.max_positions is not None and total > lm.max_positions:
        raise UserError(f"{n_before} + {k_max} + {n_after} positions exceed the model's {lm.max_positions} (texts are "
                        "cut for the largest of --soft and --k-values)")
    for p in wanted:  # refuse a bad frame before any work
        steered_positions(n_before, p.soft, n_after, p.steer, p.distance)
    texts, donors = draw_texts(lm, cfg.corpus, n_before, k_max, n_after, cfg.targets, cfg.seed,
                               donors=cfg.targets if cfg.kind == "real" else 0)
    direction = None
    if cfg.kind == "steered" and cfg.direction == "mean_diff":
        direction = mean_difference(lm, layer, cfg.direction_a, cfg.direction_b)
    if out is not None and many:
        open_marked_folder(out, "steer.json", cfg.to_dict(), "steer", overwrite, key="config")
    results = {}
    seen: dict[tuple, Path] = {}  # (K, steered positions) -> the folder that solved them
    for p in wanted:
        folder = None if out is None else out / p.name if p.name else out
        if folder is not None and many and is_done(folder):
            results[p.name] = (None, read_json(folder / "config.json"))
            seen.setdefault((p.soft, tuple(results[p.name][1]["target_positions"])), folder)
            if p.name == "soft" and cfg.rungs:
                run_rungs(lm, layer, cfg, p, texts, donors, direction, out, results, show_progress)
            continue
        frame = texts.frame(p.soft, steered_positions(n_before, p.soft, n_after, p.steer, p.distance))
        key = (p.soft, tuple(frame.positions.tolist()))
        same = seen.get(key)
        if folder is not None and same is not None and is_done(same):  # the same problems: copy, not recompute
            config = copy_point(same, folder, p)
            results[p.name] = (None, config)
            continue
        problems = build_targets(lm, layer, cfg, texts, donors, frame, direction)
        budget = cfg.optim.problem_steps(problems.frame.rows, cfg.restarts)
        with StepBar(budget, p.name or "steer", show_progress) as bar:
            result = solve_steer(lm, layer, cfg, problems, bar.update)
        config = point_config(lm, layer, cfg, p, frame)
        if folder is not None:
            extra = {**problems.frame.context_tensors(), "own_tokens": problems.own_tokens.long()}
            write_condition(folder, result, config, f"steer {p.name}".strip(), overwrite and not many,
                            tokens=problems.source_tokens, extra_tensors=extra)
        results[p.name] = (result, config)
        if folder is not None:
            seen[key] = folder
        if p.name == "soft" and cfg.rungs:
            run_rungs(lm, layer, cfg, p, texts, donors, direction, out, results, show_progress, problems, result)
    if out is not None and many:
        from ..report.steer import write_steer_report

        write_steer_report(out)
    return {"results": results, "lm": lm, "layer": layer, "out": out}


def copy_point(source: Path, folder: Path, point: Point) -> dict:
    """A point whose problems another point already solved (same K and steered positions, hence the same
    targets, starts and result): its folder copied, config.json naming this point. Written atomically."""
    import json
    import os
    import shutil

    from ..report.summary_md import summary_markdown

    stage = folder.parent / f".{folder.name}.partial-{os.getpid()}"
    shutil.rmtree(stage, ignore_errors=True)
    shutil.copytree(source, stage)
    config = read_json(stage / "config.json")
    config.update(steer=point.steer, distance=point.distance, sweep=point.sweep, sweep_value=point.x,
                  copied_from=source.name)
    (stage / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    summary = read_json(stage / "summary.json")
    (stage / "summary.md").write_text(summary_markdown(f"steer {folder.name}", config, summary), encoding="utf-8")
    os.replace(stage, folder)
    return config


def run_rungs(lm, layer: int, cfg: SteerConfig, base: Point, texts, donors, direction, out: Path | None,
              results: dict, show_progress: bool, problems=None, soft_result=None) -> None:
    """The discrete rungs in the base condition's slots, once per vocabulary percent (folders `gcg`,
    `gcg_v10`, ...); the continuous solution comes from memory or from the finished `soft` folder."""
    from safetensors.torch import load_file

    from ..corpus import load_corpus_text
    from ..ladder.rungs import vocab_suffix
    from ..results.folder import read_problems
    from ..vocab import frequent_tokens
    from .rungs import solve_slot_rung

    n_before, n_after = cfg.lengths
    frame = texts.frame(base.soft, steered_positions(n_before, base.soft, n_after, base.steer, base.distance))
    if problems is None:
        problems = build_targets(lm, layer, cfg, texts, donors, frame, direction)
    if soft_result is None:
        saved = load_file(str(out / "soft" / "tensors.safetensors"))
        soft, base_rows = saved["soft_prompt"], read_problems(out / "soft")
        baseline_tokens = {k: v for k, v in saved.items() if k in ("floor_tokens", "near_miss_tokens")}
    else:
        soft, base_rows, baseline_tokens = soft_result.soft_prompt, soft_result.problems, soft_result.baseline_tokens
    corpus = None
    for percent in cfg.vocab_percent:
        vocab = None
        if percent < 100:
            corpus = corpus if corpus is not None else load_corpus_text(cfg.corpus)
            vocab = frequent_tokens(lm, corpus, percent)
        for rung in cfg.rungs:
            name = rung + vocab_suffix(percent)
            folder = None if out is None else out / name
            if folder is not None and is_done(folder):
                results[name] = (None, read_json(folder / "config.json"))
                continue
            per_row = {"gcg": cfg.gcg_budget, "projected": cfg.optim.steps, "causal": 4 * problems.frame.soft}.get(rung, 0)
            bar_kind = {"unit": " slot searches", "figure": "median loss"} if rung == "causal" else {}
            with StepBar(problems.frame.rows * per_row, name, show_progress and per_row > 0, **bar_kind) as bar:
                result, ids = solve_slot_rung(lm, layer, cfg, problems, rung, soft, base_rows, vocab, percent,
                                              bar.update)
            result.baseline_tokens = baseline_tokens  # the rows carry the soft rows' floor and near miss
            config = point_config(lm, layer, cfg, base, frame)
            config.update(rung=rung, vocab_percent=percent, norm_budget=None, norm_budget_tokens=None,
                          discrete=True)  # real tokens: no norm budget applies
            if folder is not None:
                extra = {**problems.frame.context_tensors(), "own_tokens": problems.own_tokens.long(),
                         "solution_tokens": ids.long()}
                write_condition(folder, result, config, f"steer {name}", False, tokens=problems.source_tokens,
                                extra_tensors=extra)
            results[name] = (result, config)
