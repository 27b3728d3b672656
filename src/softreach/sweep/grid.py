"""The grid file of a sweep: read, validate and expand into cells.

    models: [smollm2-135m, /path/to/model]     # hub ids, local folders, .gguf files
    layers: all                                # or [5, 10], or {every: 5}; resolved per model
    preset: quick                              # quick | seed
    experiments: [exp1, exp2b]                 # optional subset
    overrides: {run: {targets: 8}, optim: {lr: 0.05}, suite: {steps: {exp1: 100}}}
    grid: {optim.lr: [0.01, 0.1]}              # optional extra axes: KEY: [values]

Settings (`overrides`, the `grid` axes and the command line's `--set`) are the dotted keys of
softreach.overrides, resolved against SuiteConfig: defaults < preset < overrides < axes and --set.
"""
from __future__ import annotations

import hashlib
import itertools
import json
import re
from dataclasses import dataclass
from pathlib import Path

from .. import overrides as ov
from ..config import SuiteConfig
from ..errors import UserError
from ..experiments.registry import ORDER, experiment
from ..presets import preset as preset_settings

GRID_KEYS = ("models", "layers", "preset", "experiments", "overrides", "grid")
GROUPS = ("run", "optim", "suite")
ALIASES = {"suite.": ""}
FIXED_BY_GRID = {"run.model": "models", "run.layer": "layers", "experiments": "experiments"}


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


# ---------------------------------------------------------------- reading

def load_grid(path: str | Path) -> dict:
    """Read a grid file; one-line UserError when it is missing or not YAML."""
    import yaml

    path = Path(path)
    if not path.is_file():
        raise UserError(f"grid file not found: {path}")
    try:
        return yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise UserError(f"{path}: not valid YAML{where}: {getattr(e, 'problem', None) or type(e).__name__}") from None


def model_n_layers(spec: str) -> int:
    """Number of layers of a model from its config alone (no weights loaded)."""
    from transformers import AutoConfig
    from transformers.utils import logging as hf_logging

    from ..models import _hub_offline, resolve_source

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


# ---------------------------------------------------------------- models and layers

def _model_spec(spec) -> str:
    """A model as given, with local paths made absolute (so the grid means the same from any folder)."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"models: each entry must be a model name or path, got {spec!r}")
    path = Path(spec).expanduser()
    return str(path.resolve()) if path.exists() else spec


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


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
    if _is_int(spec):
        spec = [spec]
    if not isinstance(spec, list) or not spec or not all(_is_int(x) for x in spec):
        raise UserError(f"layers: expected a list of integers, \"all\" or {{every: K}}, got {spec!r}")
    if len(set(spec)) != len(spec):
        raise UserError(f"layers: {spec} lists a layer twice")
    bad = [x for x in spec if not 1 <= x <= n_layers]
    if bad:
        raise UserError(f"layers: layer {bad[0]} is out of range for {model} (valid 1..{n_layers})")
    return sorted(spec)


def _slug_text(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=+-]+", "-", text).strip("-") or "x"


def model_slugs(models: list[str]) -> dict[str, str]:
    """Short folder-safe names: a local folder's name, a hub id with '/' as '--'; clashes get a hash."""
    names = {m: _slug_text(Path(m).name if Path(m).is_absolute() else m.replace("/", "--")) for m in models}
    counts: dict[str, int] = {}
    for n in names.values():
        counts[n] = counts.get(n, 0) + 1
    return {m: n if counts[n] == 1 else f"{n}-{hashlib.sha1(m.encode()).hexdigest()[:6]}" for m, n in names.items()}


def cell_slug(model_slug: str, layer: int, combo: dict) -> str:
    parts = [model_slug, f"L{layer:02d}"]
    for key, value in combo.items():
        shown = value if isinstance(value, str) else json.dumps(value, sort_keys=True)
        parts.append(_slug_text(f"{key}={shown}"))
    return "__".join(parts)


# ---------------------------------------------------------------- settings

def _canonical(key: str) -> str:
    """A dotted key as the full path it names (`lr` -> `run.optim.lr`, `suite.steps.exp1` -> `steps.exp1`)."""
    path, sub = ov.resolve(SuiteConfig, str(key), ALIASES)
    return path + (f".{sub}" if sub else "")


def parse_overrides(raw) -> dict:
    """The grid's `overrides` (groups run/optim/suite, or dotted keys) -> {full dotted key: value}."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"overrides: expected a mapping of {', '.join(GROUPS)}, got {type(raw).__name__}")
    raw = {k: {} if v is None and k in GROUPS else v for k, v in raw.items()}
    bad = next((k for k in GROUPS if k in raw and not isinstance(raw[k], dict)), None)
    if bad is not None:
        raise UserError(f"overrides.{bad}: expected a mapping, got {type(raw[bad]).__name__}")
    try:
        flat = ov.flatten(SuiteConfig, raw, ALIASES)
    except UserError as e:
        raise UserError(f"overrides: {e}") from None
    fixed = next((k for k in flat if k in FIXED_BY_GRID), None)
    if fixed is not None:
        name = f"overrides.{'suite.' * (fixed == 'experiments')}{fixed}"
        raise UserError(f"{name}: set it with the grid's top-level '{FIXED_BY_GRID[fixed]}' key")
    return flat


def parse_axes(raw) -> dict:
    """The grid's `grid` mapping -> {axis as written: [values]}; every axis is a dotted key."""
    if raw is None:
        return {}
    if not isinstance(raw, dict):
        raise UserError(f"grid: expected a mapping of KEY: [values], got {type(raw).__name__}")
    out, seen = {}, {}
    for key, values in raw.items():
        key = str(key)
        path = _canonical_in(key, "grid")
        if path in FIXED_BY_GRID:
            raise UserError(f"grid: axis {key!r} is set by the grid's top-level keys")
        clash = next((k for p, k in seen.items() if _overlap(p, path)), None)
        if clash is not None:
            raise UserError(f"grid: axes {clash!r} and {key!r} set the same setting")
        if not isinstance(values, list) or not values:
            raise UserError(f"grid: axis {key!r} needs a non-empty list of values, got {values!r}")
        if len({json.dumps(v, sort_keys=True) for v in values}) != len(values):
            raise UserError(f"grid: axis {key!r} lists a value twice")
        seen[path], out[key] = key, values
    return out


def _canonical_in(key: str, where: str) -> str:
    """_canonical, its error prefixed with where the key was written."""
    try:
        return _canonical(key)
    except UserError as e:
        raise UserError(f"{where}: {e}") from None


def parse_command_line(settings: dict | None, axes: dict) -> dict:
    """Command-line settings {dotted key: value} -> {full dotted key: value}; an axis of the grid is refused."""
    out = {}
    paths = {_canonical(k): k for k in axes}
    for key, value in (settings or {}).items():
        path = _canonical_in(key, "--set")
        if path in FIXED_BY_GRID:
            raise UserError(f"--set {key}: set it with the grid's top-level '{FIXED_BY_GRID[path]}' key")
        axis = next((a for p, a in paths.items() if _overlap(p, path)), None)
        if axis is not None:
            raise UserError(f"--set {key}: the grid sweeps it as the axis {axis!r}; drop one of them")
        out.update(_flat({path: value}))
    return out


def _overlap(a: str, b: str) -> bool:
    return a == b or a.startswith(f"{b}.") or b.startswith(f"{a}.")


def _flat(settings: dict) -> dict:
    """Settings with dict values of dict fields split into sub-keys, as flatten does for YAML."""
    return ov.flatten(SuiteConfig, settings, ALIASES)


def grouped(flat: dict) -> dict:
    """Full dotted keys -> {"run": {...}, "optim": {...}, "suite": {...}}, as sweep.json records them."""
    out: dict = {g: {} for g in GROUPS}
    for key, value in flat.items():
        if key.startswith("run.optim."):
            group, rest = "optim", key[len("run.optim."):]
        elif key.startswith("run."):
            group, rest = "run", key[len("run."):]
        else:
            group, rest = "suite", key
        node = out[group]
        *parents, last = rest.split(".")
        for p in parents:
            node = node.setdefault(p, {})
        node[last] = value
    return out


def suite_config(preset: str, settings: list[dict], experiments, model: str, layer: int) -> SuiteConfig:
    """One cell's config: the preset, then each layer of settings, then the cell's model, layer, experiments."""
    fixed = {"run.model": model, "run.layer": layer}
    if experiments is not None:
        fixed["experiments"] = list(experiments)
    base = ov.flatten(SuiteConfig, preset_settings(preset), ALIASES)
    try:
        return ov.build(SuiteConfig, [base, *settings, fixed], ALIASES)
    except (TypeError, ValueError) as e:
        raise UserError(f"bad setting: {str(e).splitlines()[0]}") from None


# ---------------------------------------------------------------- the grid

def _combos(axes: dict) -> list[dict]:
    """Every combination of the extra axes, in the grid's order: [{axis: value}, ...] ([{}] without axes)."""
    keys = list(axes)
    return [dict(zip(keys, values)) for values in itertools.product(*(axes[k] for k in keys))]


def _models(raw) -> list[str]:
    models = [raw] if isinstance(raw, str) else raw
    if not isinstance(models, list) or not models:
        raise UserError("models: expected a non-empty list of hub ids, model folders or .gguf files")
    models = [_model_spec(m) for m in models]
    if len(set(models)) != len(models):
        raise UserError("models: a model is listed twice")
    return models


def _experiments(raw) -> list[str] | None:
    if isinstance(raw, str):
        raw = [e.strip() for e in raw.split(",") if e.strip()]
    if raw is None:
        return None
    if not isinstance(raw, list) or not raw or not all(isinstance(e, str) for e in raw):
        raise UserError(f"experiments: expected a list of experiment names ({', '.join(ORDER)})")
    for name in raw:
        try:
            experiment(name)
        except UserError as e:
            raise UserError(f"experiments: {e}") from None
    return raw


def parse_grid(raw, source: str = "grid", n_layers_of=model_n_layers, overrides: dict | None = None) -> Sweep:
    """Validate a grid (as read from YAML) and expand it into cells. Every error is a one-line UserError.

    `overrides`: dotted-key settings from the command line, applied to every cell above the grid's own."""
    try:
        return _parse_grid(raw, n_layers_of, overrides)
    except UserError as e:
        raise UserError(f"{source}: {e}") from None


def _parse_grid(raw, n_layers_of, command_line) -> Sweep:
    if not isinstance(raw, dict):
        raise UserError(f"expected a mapping with keys {', '.join(GRID_KEYS)}")
    unknown = [k for k in raw if k not in GRID_KEYS]
    if unknown:
        raise UserError(f"unknown key {unknown[0]!r}: choose from {', '.join(GRID_KEYS)}")
    models = _models(raw.get("models"))
    if "layers" not in raw:
        raise UserError('layers: missing; give a list of integers, "all" or {every: K}')
    preset = raw.get("preset", "quick")
    if not isinstance(preset, str):
        raise UserError(f"preset: expected quick or seed, got {preset!r}")
    preset_settings(preset)  # refuses an unknown preset
    experiments = _experiments(raw.get("experiments"))
    axes = parse_axes(raw.get("grid"))
    flat = {**parse_overrides(raw.get("overrides")), **parse_command_line(command_line, axes)}

    def config(combo: dict, model: str, layer: int) -> SuiteConfig:
        return suite_config(preset, [flat, _flat(combo)], experiments, model, layer)

    for combo in _combos(axes):  # settings are checked once, before anything is resolved per model
        config(combo, models[0], 1)
    slugs = model_slugs(models)
    n_layers, layers_by_model, cells = {}, {}, []
    for model in models:
        n = n_layers[model] = n_layers_of(model)
        layers_by_model[model] = resolve_layers(raw["layers"], n, model)
        for layer in layers_by_model[model]:
            for combo in _combos(axes):
                cells.append(Cell(cell_slug(slugs[model], layer, combo), model, layer, combo,
                                  config(combo, model, layer)))
    grid = {"models": models, "n_layers": n_layers, "layers": raw["layers"], "layers_by_model": layers_by_model,
            "preset": preset, "experiments": experiments, "overrides": grouped(flat), "grid": axes}
    return Sweep(grid, cells)


def load_sweep(path: str | Path, overrides: dict | None = None, n_layers_of=model_n_layers) -> Sweep:
    """Read, validate and expand a grid file; `overrides` are command-line settings (dotted keys)."""
    return parse_grid(load_grid(path), str(path), n_layers_of, overrides)
