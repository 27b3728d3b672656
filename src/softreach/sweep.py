"""Sweeps: models x layers x override combinations, one suite folder per cell, run locally or on Ray.

A grid file (YAML) names the axes:

    models: [smollm2-135m, /path/to/model]     # hub ids, local folders, .gguf files
    layers: all                                # or [5, 10], or {every: 5}; resolved per model
    preset: quick                              # quick | seed
    experiments: [exp1, exp2b]                 # optional subset
    overrides: {run: {targets: 8}, optim: {lr: 0.05}, suite: {steps: {exp1: 100}}}
    grid: {optim.lr: [0.01, 0.1]}              # optional extra axes, GROUP.FIELD: [values]

Sweep folder layout:
    sweep.json              the resolved grid and the cell list; a folder made by another grid is refused
    cells/<slug>/           one suite folder per cell, written by SuiteRunner (resumable, result-folder contract)
    cells.parquet           `softreach collect`: one row per (cell, condition)
    sweep_report.md, figures/sweep_*.png

Every cell is deterministic given its SuiteConfig, so the local and Ray backends write the same tensors.
"""
from __future__ import annotations

import copy
import hashlib
import itertools
import json
import math
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

from .errors import UserError
from .presets import ORDER, SuiteConfig, build_suite_config
from .store import atomic_write_text, dumps_json

GRID_KEYS = ("models", "layers", "preset", "experiments", "overrides", "grid")
GROUPS = ("run", "optim", "suite")
FIXED_BY_GRID = {"run": ("model", "layer"), "suite": ("experiments",)}  # set by the grid's own keys
EXPAND = {"exp4": ("exp4_no_attn", "exp4_no_mlp"), "exp5": ("exp5_raw", "exp5_pca")}


@dataclass
class Cell:
    """One suite run of the sweep: a model, a layer and one value per extra axis."""

    slug: str  # folder name under cells/
    model: str
    layer: int
    combo: dict  # axis -> value, e.g. {"optim.lr": 0.1}; {} without extra axes
    config: SuiteConfig

    @property
    def model_key(self) -> tuple[str, str]:
        """What a loaded model is reused for: (model spec, device)."""
        return self.config.run.model, self.config.run.device

    def to_dict(self) -> dict:
        return {"slug": self.slug, "model": self.model, "layer": self.layer, "combo": self.combo}


@dataclass
class Sweep:
    grid: dict  # the resolved grid, as stored in sweep.json
    cells: list[Cell]

    def record(self) -> dict:
        """sweep.json's content (JSON round-tripped, so it compares equal to what is read back)."""
        return json.loads(json.dumps({"grid": self.grid, "cells": [c.to_dict() for c in self.cells]}))


# ---------------------------------------------------------------- grid parsing

def load_grid(path: str | Path) -> dict:
    """Read a grid file; one-line UserError when it is missing or not YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid file not found: {path}")
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or type(e).__name__}") from None
    return raw


def model_n_layers(spec: str) -> int:
    """Number of layers of a model from its config alone (no weights loaded)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from .models import _hub_offline, resolve_source

    source, gguf_file = resolve_source(spec)
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    is_hub = gguf_file is None and not Path(source).exists()
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        try:
            cfg = AutoConfig.from_pretrained(source, local_files_only=is_hub or _hub_offline(), **kwargs)
        except OSError:
            if not is_hub or _hub_offline():
                raise
            cfg = AutoConfig.from_pretrained(source, **kwargs)
    except (OSError, ValueError, KeyError) as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot read the config of model {spec!r} (offline, pass a local folder or .gguf file): "
                        f"{first}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return int(cfg.num_hidden_layers)


def _model_spec(spec) -> str:
    """A model as given, with local paths made absolute (so the grid means the same from any folder)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"models: each entry must be a model name or path, got {spec!r}")
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def resolve_layers(spec, n_layers: int, model: str) -> list[int]:
    """`layers` of the grid for one model: a list, "all" or {every: K} (K, 2K, ... <= n_layers)."""
    if spec == "all":
        return list(range(1, n_layers + 1))
    if isinstance(spec, dict):
        every = spec.get("every")
        if set(spec) != {"every"} or not _is_int(every) or every < 1:
            raise UserError(f"layers: a mapping must be {{every: K}} with K >= 1, got {spec!r}")
        layers = list(range(every, n_layers + 1, every))
        if not layers:
            raise UserError(f"layers: {{every: {every}}} selects no layer of {model} ({n_layers} layers)")
        return layers
    if isinstance(spec, int) and not isinstance(spec, bool):
        spec = [spec]
    if not isinstance(spec, list) or not spec or not all(_is_int(x) for x in spec):
        raise UserError(f"layers: expected a list of integers, \"all\" or {{every: K}}, got {spec!r}")
    if len(set(spec)) != len(spec):
        raise UserError(f"layers: {spec} lists a layer twice")
    bad = [x for x in spec if not 1 <= x <= n_layers]
    if bad:
        raise UserError(f"layers: layer {bad[0]} is out of range for {model} (valid 1..{n_layers})")
    return sorted(spec)


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _check_overrides(overrides) -> dict:
    if overrides is None:
        overrides = {}
    if not isinstance(overrides, dict):
        raise UserError(f"overrides: expected a mapping of {', '.join(GROUPS)}, got {type(overrides).__name__}")
    unknown = [g for g in overrides if g not in GROUPS]
    if unknown:
        raise UserError(f"overrides: unknown group {unknown[0]!r}: choose from {', '.join(GROUPS)}")
    out = {}
    for group in GROUPS:
        values = overrides.get(group) or {}
        if not isinstance(values, dict):
            raise UserError(f"overrides.{group}: expected a mapping, got {type(values).__name__}")
        for key in FIXED_BY_GRID.get(group, ()):
            if key in values:
                top = "models" if key == "model" else "layers" if key == "layer" else key
                raise UserError(f"overrides.{group}.{key}: set it with the grid's top-level '{top}' key")
        out[group] = copy.deepcopy(values)
    return out


def _check_axes(axes) -> dict:
    if axes is None:
        return {}
    if not isinstance(axes, dict):
        raise UserError(f"grid: expected a mapping of GROUP.FIELD: [values], got {type(axes).__name__}")
    out = {}
    for key, values in axes.items():
        parts = str(key).split(".")
        if len(parts) < 2 or parts[0] not in GROUPS or not all(parts):
            raise UserError(f"grid: axis {key!r} must be GROUP.FIELD with GROUP one of {', '.join(GROUPS)}")
        if parts[1] in FIXED_BY_GRID.get(parts[0], ()):
            raise UserError(f"grid: axis {key!r} is set by the grid's top-level keys")
        if not isinstance(values, list) or not values:
            raise UserError(f"grid: axis {key!r} needs a non-empty list of values, got {values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise UserError(f"grid: axis {key!r} lists a value twice")
        out[str(key)] = values
    return out


def _set_path(groups: dict, key: str, value) -> None:
    """groups["optim"]["lr"] = value for key "optim.lr" (deeper keys like suite.steps.exp1 too)."""
    parts = key.split(".")
    node = groups[parts[0]]
    for p in parts[1:-1]:
        node = node.setdefault(p, {})
        if not isinstance(node, dict):
            raise UserError(f"grid: axis {key!r} goes inside a setting that is not a mapping")
    node[parts[-1]] = value


def _slug_text(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-") or "x"


def model_slugs(models: list[str]) -> dict[str, str]:
    """Short folder-safe names: a local folder's name, a hub id with '/' as '--'; clashes get a hash."""
    names = {m: _slug_text(Path(m).name if Path(m).is_absolute() else m.replace("/", "--")) for m in models}
    counts = {}
    for n in names.values():
        counts[n] = counts.get(n, 0) + 1
    return {m: n if counts[n] == 1 else f"{n}-{hashlib.sha1(m.encode()).hexdigest()[:6]}" for m, n in names.items()}


def cell_slug(model_slug: str, layer: int, combo: dict) -> str:
    parts = [model_slug, f"L{layer:02d}"]
    for key, value in combo.items():
        shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        parts.append(_slug_text(f"{key}={shown}"))
    return "__".join(parts)


def parse_grid(raw, source: str = "grid", n_layers_of=model_n_layers) -> Sweep:
    """Validate a grid (as read from YAML) and expand it into cells. Every error is a one-line UserError."""
    try:
        return _parse_grid(raw, n_layers_of)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def _parse_grid(raw, n_layers_of) -> Sweep:
    if not isinstance(raw, dict):
        raise UserError(f"expected a mapping with keys {', '.join(GRID_KEYS)}")
    unknown = [k for k in raw if k not in GRID_KEYS]
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}: choose from {', '.join(GRID_KEYS)}")
    models = raw.get("models")
    if isinstance(models, str):
        models = [models]
    if not isinstance(models, list) or not models:
        raise UserError("models: expected a non-empty list of hub ids, model folders or .gguf files")
    models = [_model_spec(m) for m in models]
    if len(set(models)) != len(models):
        raise UserError("models: a model is listed twice")
    if "layers" not in raw:
        raise UserError('layers: missing; give a list of integers, "all" or {every: K}')
    preset = raw.get("preset", "quick")
    if not isinstance(preset, str):
        raise UserError(f"preset: expected quick or seed, got {preset!r}")
    experiments = raw.get("experiments")
    if isinstance(experiments, str):
        experiments = [e.strip() for e in experiments.split(",") if e.strip()]
    if experiments is not None:
        if not isinstance(experiments, list) or not experiments or not all(isinstance(e, str) for e in experiments):
            raise UserError(f"experiments: expected a list of experiment names ({', '.join(ORDER)})")
        bad = [e for e in experiments if e not in ORDER]
        if bad:
            raise UserError(f"experiments: unknown experiment {bad[0]!r}: choose from {', '.join(ORDER)}")
    overrides = _check_overrides(raw.get("overrides"))
    axes = _check_axes(raw.get("grid"))
    # settings are checked once, before anything is resolved per model
    for combo in _combos(axes):
        _suite_config(preset, overrides, experiments, combo, model=models[0], layer=1)
    slugs = model_slugs(models)
    n_layers, layers_by_model, cells = {}, {}, []
    for model in models:
        n = n_layers[model] = n_layers_of(model)
        layers_by_model[model] = resolve_layers(raw["layers"], n, model)
        for layer in layers_by_model[model]:
            for combo in _combos(axes):
                cfg = _suite_config(preset, overrides, experiments, combo, model, layer)
                cells.append(Cell(cell_slug(slugs[model], layer, combo), model, layer, combo, cfg))
    grid = {"models": models, "n_layers": n_layers, "layers": raw["layers"], "layers_by_model": layers_by_model,
            "preset": preset, "experiments": experiments, "overrides": overrides, "grid": axes}
    return Sweep(grid, cells)


def _combos(axes: dict) -> list[dict]:
    """Every combination of the extra axes, in the grid's order: [{axis: value}, ...] ([{}] without axes)."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def _suite_config(preset, overrides, experiments, combo, model, layer) -> SuiteConfig:
    from dataclasses import fields

    from .config import RunConfig

    groups = copy.deepcopy(overrides)
    for key, value in combo.items():
        _set_path(groups, key, value)
    run_fields = {f.name for f in fields(RunConfig)} - {"optim"}
    unknown = sorted(set(groups["run"]) - run_fields)
    if unknown:
        raise UserError(f"unknown run setting {unknown[0]!r}: choose from {', '.join(sorted(run_fields))}")
    groups["run"].update(model=model, layer=layer)
    if experiments is not None:
        groups["suite"]["experiments"] = list(experiments)
    try:
        return build_suite_config(preset, groups["run"], groups["optim"], groups["suite"])
    except TypeError as e:  # an unknown run field, or a value of the wrong type
        raise UserError(f"bad setting: {str(e).splitlines()[0]}") from None


def load_sweep(path: str | Path, n_layers_of=model_n_layers) -> Sweep:
    """Read, validate and expand a grid file."""
    return parse_grid(load_grid(path), str(path), n_layers_of)


# ---------------------------------------------------------------- the sweep folder

def cell_dir(out: Path, cell: Cell) -> Path:
    return Path(out) / "cells" / cell.slug


def expected_files(cfg: SuiteConfig) -> list[str]:
    """Files a finished suite of this config holds: each result folder's problems.jsonl (written last)."""
    files = ["suite.json"] + [f"{n}/problems.jsonl" for e in cfg.experiments for n in EXPAND.get(e, (e,))]
    if "exp4" in cfg.experiments and {"exp1", "exp1b"} & set(cfg.experiments):  # exp1 exists when exp4 ends
        files.append("exp4_analysis.json")
    return files


def cell_complete(out: Path, cell: Cell) -> bool:
    folder = cell_dir(out, cell)
    return all((folder / f).is_file() for f in expected_files(cell.config))


def prepare_sweep_folder(out: Path, sweep: Sweep) -> bool:
    """Create DIR/sweep.json, or check that DIR was made by this grid. Returns True when resuming."""
    from .suite import _differences

    out = Path(out)
    marker = out / "sweep.json"
    wanted = sweep.record()
    if marker.is_file():
        try:
            stored = json.loads(marker.read_text())
            stored = {"grid": stored["grid"], "cells": stored["cells"]}
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{marker} is unreadable; choose another --out") from None
        diff = _differences(stored["grid"], wanted["grid"])
        if diff or stored["cells"] != wanted["cells"]:
            raise UserError(f"{out} was made by another grid (differs in {', '.join(diff[:4]) or 'cells'}); "
                            "refusing to resume: use the same grid or another --out")
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a softreach sweep folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    from . import __version__

    atomic_write_text(marker, dumps_json({**wanted, "softreach_version": __version__,
                                          "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return False


def run_cell(cfg: SuiteConfig, folder: str | Path, lm, show_progress: bool = False) -> float:
    """Run (or resume) one cell's suite with an already-loaded model. Returns seconds spent."""
    from .suite import SuiteRunner

    start = time.perf_counter()
    SuiteRunner(cfg, folder, lm=lm, show_progress=show_progress).run()
    return time.perf_counter() - start


def pending_cells(out: Path, sweep: Sweep) -> list[Cell]:
    """Cells still to run; finished ones are only checked against their suite.json."""
    from .suite import prepare_suite_folder

    todo = []
    for cell in sweep.cells:
        if cell_complete(out, cell):
            prepare_suite_folder(cell_dir(out, cell), cell.config, overwrite=False)  # refuses a foreign config
        else:
            todo.append(cell)
    return todo


def run_sweep(sweep: Sweep, out: str | Path, backend: str = "local", address: str | None = None,
              workers: int | None = None, show_progress: bool = True, **backend_options) -> dict:
    """Run every unfinished cell into `out`. Returns counts: cells, skipped, ran."""
    if backend not in ("local", "ray"):
        raise UserError(f"unknown backend {backend!r}: choose local or ray")
    if backend == "local" and (address is not None or workers is not None):
        raise UserError("--address and --workers apply to --backend ray only")
    if workers is not None and workers < 1:
        raise UserError(f"--workers must be at least 1, got {workers}")
    out = Path(out).resolve()
    prepare_sweep_folder(out, sweep)
    todo = pending_cells(out, sweep)
    if todo and backend == "local":
        run_local(out, todo, show_progress)
    elif todo:
        from .ray_backend import run_ray

        run_ray(out, todo, address=address, workers=workers, show_progress=show_progress, **backend_options)
    return {"cells": len(sweep.cells), "skipped": len(sweep.cells) - len(todo), "ran": len(todo)}


def run_local(out: Path, cells: list[Cell], show_progress: bool = True) -> None:
    """Run cells in order in this process, loading each model once for its consecutive cells."""
    from tqdm.auto import tqdm

    from .models import load_model

    lm, key = None, None
    with tqdm(total=len(cells), desc="sweep", unit="cell", disable=not show_progress, file=sys.stderr) as bar:
        for cell in cells:
            if cell.model_key != key:
                lm = None  # free the previous model before loading the next
                lm, key = load_model(*cell.model_key), cell.model_key
            bar.set_postfix_str(cell.slug, refresh=True)
            run_cell(cell.config, cell_dir(out, cell), lm, show_progress)
            bar.update(1)


# ---------------------------------------------------------------- cost on paper

def problem_steps(cfg: SuiteConfig) -> int:
    """Optimiser problem-steps (targets x restarts x steps, restart pruning included) of one cell's suite."""
    import dataclasses

    from .synthetic_targets import EXP3_ALPHAS, EXP5_FRACTIONS

    targets = {"exp1": cfg.run.targets, "exp4": 2 * cfg.run.targets, "exp2a": cfg.run.targets,
               "exp2b": cfg.run.targets, "exp3": cfg.exp3_pairs * len(EXP3_ALPHAS),
               "exp5": 2 * cfg.exp5_targets * len(EXP5_FRACTIONS)}
    names = set(cfg.experiments) | ({"exp1"} if "exp1b" in cfg.experiments else set())  # exp1b needs exp1
    return sum(dataclasses.replace(cfg.run.optim, steps=cfg.steps_for(e)).problem_steps(targets[e], cfg.restarts_for(e))
               for e in names if e in targets)


def plan(sweep: Sweep, rate: float | None = None) -> list[dict]:
    """Per cell: problem-steps and, given `rate` (problem-steps/s at full depth), estimated seconds.

    Cost model: a step runs the model up to layer L only, so a cell at layer L of an n-layer model
    costs problem_steps * (L / n) / rate seconds.
    """
    n_layers = sweep.grid["n_layers"]
    rows = []
    for c in sweep.cells:
        ps = problem_steps(c.config)
        rows.append({"cell": c.slug, "problem_steps": ps,
                     "seconds": ps * c.layer / n_layers[c.model] / rate if rate else None})
    return rows


# ---------------------------------------------------------------- collect

COLUMNS = ["cell", "model", "n_layers", "layer", "depth", "experiment", "condition", "ablation", "norm_budget",
           "overrides", "median_cos", "mean_cos", "median_cos_no_pos0", "median_mse", "floor_cos",
           "floor_cos_no_pos0", "copy_cos_no_pos0", "share_converged", "cos_minus_floor", "cos_minus_floor_no_pos0",
           "n_targets", "seconds", "problem_steps_per_second"]


def read_sweep_record(out: str | Path) -> dict:
    marker = Path(out) / "sweep.json"
    if not marker.is_file():
        raise UserError(f"{out} is not a sweep folder (no sweep.json)")
    try:
        return json.loads(marker.read_text())
    except ValueError:
        raise UserError(f"{marker} is unreadable") from None


def _import_pandas():
    try:
        import pandas as pd
        import pyarrow  # noqa: F401  (the parquet engine)
    except ImportError:
        raise UserError("collect needs pandas and pyarrow: pip install 'softreach[ray]'") from None
    return pd


def collect_rows(out: str | Path) -> tuple[list[dict], dict, list[str]]:
    """Rows of the table (one per cell and condition), the sweep record, and the cells not finished."""
    import numpy as np

    from .report import is_result_folder, load_run

    out = Path(out)
    record = read_sweep_record(out)
    axes = list(record["grid"].get("grid") or {})
    rows, missing = [], []
    for cell in record["cells"]:
        folder = out / "cells" / cell["slug"]
        subs = [p for p in folder.iterdir() if is_result_folder(p)] if folder.is_dir() else []
        if not subs:
            missing.append(cell["slug"])
            continue
        for name, cond in load_run(folder).conditions.items():
            cfg, s = cond.config, cond.summary
            cos = cond.column("cos")
            n_layers = cfg.get("model", {}).get("n_layers")
            row = {"cell": cell["slug"], "model": cell["model"], "n_layers": n_layers, "layer": cell["layer"],
                   "depth": cell["layer"] / n_layers if n_layers else math.nan,
                   "experiment": cfg.get("experiment", name), "condition": name,
                   "ablation": cfg.get("ablation", "none"), "norm_budget": cond.budget,
                   "overrides": ",".join(f"{k}={json.dumps(v)}" for k, v in cell["combo"].items()),
                   "median_cos": cond.median("cos"),
                   "mean_cos": float(np.mean(cos[np.isfinite(cos)])) if np.isfinite(cos).any() else math.nan,
                   "median_cos_no_pos0": cond.median("cos_no_pos0"), "median_mse": cond.median("mse"),
                   "floor_cos": cond.median("floor_cos"), "floor_cos_no_pos0": cond.median("floor_cos_no_pos0"),
                   "copy_cos_no_pos0": cond.median("copy_cos_no_pos0"),
                   "share_converged": s.get("share_converged", math.nan),
                   "n_targets": len(cond.rows), "seconds": s.get("seconds", math.nan),
                   "problem_steps_per_second": s.get("problem_steps_per_second", math.nan)}
            row["cos_minus_floor"] = row["median_cos"] - row["floor_cos"]
            row["cos_minus_floor_no_pos0"] = row["median_cos_no_pos0"] - row["floor_cos_no_pos0"]
            for key in axes:
                row[key] = cell["combo"].get(key)
            rows.append(row)
    return rows, record, missing


def collect(out: str | Path, figures: bool = True):
    """Write DIR/cells.parquet and DIR/sweep_report.md; return the table as a pandas DataFrame."""
    pd = _import_pandas()
    out = Path(out)
    rows, record, missing = collect_rows(out)
    axes = list(record["grid"].get("grid") or {})
    df = pd.DataFrame(rows, columns=COLUMNS + axes)
    tmp = out / ".cells.parquet.tmp"
    df.to_parquet(tmp, index=False)
    tmp.replace(out / "cells.parquet")
    write_sweep_report(out, df, record, missing, figures)
    return df


# ---------------------------------------------------------------- the sweep report

def _series(df, model: str, column: str) -> dict[str, tuple[list, list]]:
    """label -> (layers, values) for one model: one line per condition and override combination."""
    from .report import SHORT_LABELS

    out = {}
    sub = df[df["model"] == model]
    for (cond, combo), g in sub.groupby(["condition", "overrides"], sort=False):
        g = g.sort_values("layer")
        label = SHORT_LABELS.get(cond, cond) + (f" [{combo}]" if combo else "")
        out[label] = (g["layer"].tolist(), g[column].tolist())
    return out


def _label(model: str) -> str:
    return Path(model).name if Path(model).is_absolute() else model


def plot_by_layer(df, conditions: list[str] | None, path, title: str, floor: bool = True) -> Path:
    """Median cosine (top row) and median cosine minus the floor (bottom row) against layer, a column per model."""
    from matplotlib.figure import Figure
    from matplotlib.ticker import MaxNLocator

    from .plots import _cosine_axis, _save

    models = list(dict.fromkeys(df["model"]))
    sub = df if conditions is None else df[df["condition"].isin(conditions)]
    fig = Figure(figsize=(5.2 * len(models), 7.6), layout="constrained")
    axes = fig.subplots(2, len(models), squeeze=False)
    for j, model in enumerate(models):
        top, bottom = axes[0][j], axes[1][j]
        cos = _series(sub, model, "median_cos")
        floors = _series(sub, model, "floor_cos")
        corrected = _series(sub, model, "cos_minus_floor")
        values = []
        for k, (label, (x, y)) in enumerate(cos.items()):
            color = f"C{k % 10}"
            top.plot(x, y, marker="o", color=color, label=label)
            values += y
            if floor and label in floors:
                fx, fy = floors[label]
                top.plot(fx, fy, linestyle="--", color=color, linewidth=1, alpha=0.7)
                values += fy
            bottom.plot(*corrected[label], marker="o", color=color, label=label)
        _cosine_axis(top, values, label="median cosine")
        top.set_title(f"{_label(model)}" + (" (dashed: random-token floor)" if floor else ""), fontsize=9)
        bottom.axhline(0, color="black", linewidth=0.8)
        bottom.set_ylabel("median cos − floor")
        layers = sorted(set(sub[sub["model"] == model]["layer"]))
        for ax in (top, bottom):
            ax.set_xlabel("layer L")
            if len(layers) <= 16:  # tick exactly the layers that were run
                ax.set_xticks(layers)
            else:
                ax.xaxis.set_major_locator(MaxNLocator(integer=True))
            ax.grid(alpha=0.3)
        top.legend(fontsize=7)
    fig.suptitle(title)
    return _save(fig, path)


def write_sweep_report(out: Path, df, record: dict, missing: list[str], figures: bool = True) -> Path:
    """DIR/sweep_report.md: what ran, figures against layer, and a table of median cosines."""
    from . import __version__
    from .report import _table, fmt

    grid = record["grid"]
    lines = ["# Sweep report", "",
             f"Sweep folder `{out}`; written {time.strftime('%Y-%m-%d %H:%M')} by softreach {__version__}.", "",
             f"- models: " + ", ".join(f"`{m}` (layers {grid['layers_by_model'][m]})" for m in grid["models"]),
             f"- preset `{grid['preset']}`; experiments {grid['experiments'] or 'all of the preset'}; "
             f"extra axes {grid['grid'] or 'none'}; overrides `{json.dumps(grid['overrides'])}`",
             f"- {len(record['cells']) - len(missing)} of {len(record['cells'])} cells have results; "
             f"{len(df)} rows in `cells.parquet` (one per cell and condition)", ""]
    if missing:
        lines += [f"**Cells without results yet:** {', '.join(f'`{m}`' for m in missing)}.", ""]
    if df.empty:
        atomic_write_text(out / "sweep_report.md", "\n".join(lines) + "\n")
        return out / "sweep_report.md"
    figs = [("sweep_cos_by_layer.png", None, "Median cosine against layer, every condition", True)]
    present = set(df["condition"])
    if present & {"exp4_no_attn", "exp4_no_mlp"}:
        figs.append(("sweep_ablation_by_layer.png", ["exp1", "exp4_no_attn", "exp4_no_mlp"],
                     "Ablations against layer: full model, attention zeroed, MLP zeroed", False))
    if "exp1b" in present:
        figs.append(("sweep_projection_by_layer.png", ["exp1", "exp1b"],
                     "Token constraint against layer: soft prompts (exp1) and their nearest tokens (exp1b)", True))
    if figures:
        lines += ["## Against layer", "",
                  "Top: median cosine over targets (nines axis); bottom: median cosine minus the median "
                  "random-token floor of the same targets.", ""]
        for name, conditions, title, floor in figs:
            try:
                plot_by_layer(df, conditions, out / "figures" / name, title, floor)
                lines += [f"![{title}](figures/{name})", ""]
            except Exception as e:  # a figure must never cost the table
                lines += [f"_Figure `{name}` could not be drawn ({type(e).__name__}: {e})._", ""]
    conditions = list(dict.fromkeys(df["condition"]))
    table = []
    for cell, g in df.groupby("cell", sort=False):
        by = {r["condition"]: r for _, r in g.iterrows()}
        first = g.iloc[0]
        table.append([f"`{_label(first['model'])}`", str(first["layer"]), first["overrides"] or "—"]
                     + [f"{fmt(by[c]['median_cos'])} ({fmt(by[c]['floor_cos'])})" if c in by else "—"
                        for c in conditions])
    lines += ["## Median cosine per cell", "", "Median over targets, random-token floor in brackets.", ""]
    lines += _table(["model", "layer", "overrides"] + conditions, table) + [""]
    atomic_write_text(out / "sweep_report.md", "\n".join(lines) + "\n")
    return out / "sweep_report.md"


# ---------------------------------------------------------------- command line

def cmd_sweep(a) -> int:
    sweep = load_sweep(a.grid)
    if a.dry_run:
        rows = plan(sweep, rate=a.rate)
        for r in rows:
            est = f"  ~{r['seconds'] / 3600:.2f} h" if r["seconds"] is not None else ""
            print(f"{r['cell']}  {r['problem_steps']:,} problem-steps{est}")
        total = sum(r["problem_steps"] for r in rows)
        hours = sum(r["seconds"] for r in rows) / 3600 if a.rate else None
        print(f"{len(rows)} cells, {total:,} problem-steps" + (f", ~{hours:.1f} device-hours" if hours else ""))
        return 0
    if a.out is None:
        raise UserError("sweep needs --out DIR (or --dry-run)")
    counts = run_sweep(sweep, a.out, backend=a.backend, address=a.address, workers=a.workers,
                       show_progress=not a.no_progress)
    print(f"{counts['cells']} cells: {counts['ran']} run, {counts['skipped']} already complete; results in "
          f"{Path(a.out) / 'cells'}")
    try:
        _import_pandas()
    except UserError as e:
        print(f"softreach: not collecting the table: {e}", file=sys.stderr)
        return 0
    df = collect(a.out)
    print(f"table: {Path(a.out) / 'cells.parquet'} ({len(df)} rows); report: {Path(a.out) / 'sweep_report.md'}")
    return 0


def cmd_collect(a) -> int:
    df = collect(a.sweep_dir)
    print(f"{Path(a.sweep_dir) / 'cells.parquet'} ({len(df)} rows); {Path(a.sweep_dir) / 'sweep_report.md'}")
    return 0


def add_sweep_parsers(sub) -> None:
    """Add `sweep` and `collect` to the CLI's subparsers."""
    p = sub.add_parser("sweep", help="run a grid of models x layers x settings, one suite folder per cell")
    p.add_argument("grid", help="grid file (YAML): models, layers, preset, experiments, overrides, grid")
    p.add_argument("--out", default=None, help="sweep folder to create or resume")
    p.add_argument("--backend", choices=("local", "ray"), default="local",
                   help="local (default: in this process) or ray (one actor per GPU, or per CPU without GPUs)")
    p.add_argument("--address", default=None, help="Ray cluster address (default: start a local one)")
    p.add_argument("--workers", type=int, default=None, help="Ray actors (default: one per GPU, else per CPU)")
    p.add_argument("--no-progress", action="store_true", help="hide progress bars")
    p.add_argument("--dry-run", action="store_true", help="list the cells and their problem-steps; run nothing")
    p.add_argument("--rate", type=float, default=None,
                   help="with --dry-run: measured problem-steps/s at full depth, for a time estimate")
    p.set_defaults(func=cmd_sweep)
    c = sub.add_parser("collect", help="write cells.parquet and sweep_report.md for a sweep folder")
    c.add_argument("sweep_dir")
    c.set_defaults(func=cmd_collect)
