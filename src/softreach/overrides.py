"""Settings from several layers (defaults < preset < YAML < command line) into one config dataclass.

Every layer is a mapping of dotted keys to values. A key names a field by its path from the root
config (`run.optim.lr`) or by any unique tail of that path (`optim.lr`, `lr`); a dict field takes a
sub-key (`steps.exp2b=3000`). Nested mappings (YAML, presets) are flattened to the same keys. Unknown
or ambiguous keys and values of the wrong type are refused with a one-line error.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import typing
from functools import lru_cache
from typing import Literal

from .errors import UserError


def _is_config(tp) -> bool:
    return isinstance(tp, type) and dataclasses.is_dataclass(tp)


@lru_cache(maxsize=None)
def leaves(cls, prefix: str = "") -> dict[str, type]:
    """Every settable field below `cls`: dotted path -> annotated type (dataclass fields are walked into).

    Cached per class: callers must not change the dict."""
    out = {}
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        tp = hints[f.name]
        if _is_config(tp):
            out.update(leaves(tp, f"{prefix}{f.name}."))
        else:
            out[prefix + f.name] = tp
    return out


def resolve(cls, key: str, aliases: dict[str, str] | None = None) -> tuple[str, str | None]:
    """A key -> (leaf path, sub-key of a dict field or None). Refuses unknown and ambiguous keys."""
    paths = leaves(cls)
    for old, new in (aliases or {}).items():
        if key.startswith(old):
            key = new + key[len(old):]
    parts = key.split(".")
    found = []
    for path, tp in paths.items():
        names = path.split(".")
        for cut in (len(parts), len(parts) - 1):  # the whole key, or the key minus a dict sub-key
            if 0 < cut and parts[:cut] == names[len(names) - cut:] and (cut == len(parts) or _origin(tp) is dict):
                found.append((path, ".".join(parts[cut:]) or None))
                break
    exact = [f for f in found if f[0] == key or (f[1] and f"{f[0]}.{f[1]}" == key)]
    found = exact or found
    if len(found) == 1:
        return found[0]
    if found:
        raise UserError(f"setting {key!r} is ambiguous: say {' or '.join(p for p, _ in found)}")
    close = difflib.get_close_matches(key, list(paths) + [p.rsplit(".", 1)[-1] for p in paths], n=1)
    hint = f" (did you mean {close[0]}?)" if close else f"; settings: {', '.join(p.rsplit('.', 1)[-1] for p in paths)}"
    raise UserError(f"unknown setting {key!r}{hint}")


def _origin(tp):
    return typing.get_origin(tp) or tp


def flatten(cls, nested: dict, aliases: dict[str, str] | None = None, where: str = "") -> dict[str, object]:
    """A nested mapping (YAML, preset) -> {dotted key: value}, each key resolved against `cls`."""
    if not isinstance(nested, dict):
        raise UserError(f"{where or 'settings'}: expected a mapping of settings, got {nested!r}")
    out = {}
    for k, v in nested.items():
        key = f"{where}.{k}" if where else str(k)
        try:
            path, sub = resolve(cls, key, aliases)
        except UserError:
            if not isinstance(v, dict):
                raise
            if not _is_group(cls, key, aliases):
                if where or "." in key:
                    raise
                raise UserError(f"unknown group {key!r}: choose from {', '.join(groups(cls, aliases))}, "
                                "or dotted keys") from None
            out.update(flatten(cls, v, aliases, key))
            continue
        if sub is None and _origin(leaves(cls)[path]) is dict and isinstance(v, dict):
            out.update({f"{path}.{a}": b for a, b in v.items()})
        else:
            out[path + (f".{sub}" if sub else "")] = v
    return out


def groups(cls, aliases: dict[str, str] | None = None) -> list[str]:
    """Names that hold settings rather than name one: config-valued fields (run, optim) and aliases (suite)."""
    names = {part for path in leaves(cls) for part in path.split(".")[:-1]}
    return sorted(names | {old.rstrip(".") for old in (aliases or {})})


def _is_group(cls, key: str, aliases: dict[str, str] | None) -> bool:
    """Whether `key` (e.g. run, optim, suite, run.optim) is a group of settings, i.e. a tail of a path's prefix."""
    for old, new in (aliases or {}).items():
        if f"{key}.".startswith(old):
            key = (new + f"{key}."[len(old):]).rstrip(".")
    return not key or any(f".{path}".find(f".{key}.") >= 0 for path in leaves(cls))


def parse_assignments(items, aliases: dict[str, str] | None = None, cls=None) -> dict[str, object]:
    """--set KEY=VALUE items -> {key: value}; values are JSON where they parse (3, 0.5, true), else text."""
    out: dict = {}
    for item in items or []:
        if "=" not in item:
            raise UserError(f"--set needs KEY=VALUE, got {item!r}")
        key, raw = item.split("=", 1)
        try:
            value = json.loads(raw)
        except ValueError:
            value = raw
        if cls is not None:
            path, sub = resolve(cls, key.strip(), aliases)
            key = path + (f".{sub}" if sub else "")
        if key in out and out[key] != value:
            raise UserError(f"conflicting values for {key}: {out[key]!r} and {value!r}")
        out[key] = value
    return out


def coerce(tp, value, key: str):
    """A value (JSON, YAML or text) as the field's type, or a one-line error naming the key."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is typing.Union:  # Optional[X]
        if value is None or (isinstance(value, str) and value.lower() in ("none", "null")):
            return None
        return coerce(next(a for a in args if a is not type(None)), value, key)
    if origin is Literal:
        if value not in args:
            raise UserError(f"{key} must be one of {', '.join(map(str, args))}, got {value!r}")
        return value
    try:
        if tp is bool:
            if isinstance(value, str) and value.lower() in ("true", "false", "yes", "no", "on", "off", "1", "0"):
                return value.lower() in ("true", "yes", "on", "1")
            if not isinstance(value, bool):
                raise ValueError
            return value
        if tp is int:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if tp is float:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
        if tp is str:
            return str(value)
    except (TypeError, ValueError):
        raise UserError(f"{key} must be {'an integer' if tp is int else 'a number' if tp is float else tp.__name__}, "
                        f"got {value!r}") from None
    if _origin(tp) is dict and not isinstance(value, dict):
        raise UserError(f"{key} takes sub-keys, e.g. {key}.NAME=VALUE, got {value!r}")
    return value  # tuples and dicts: the config's own validation takes them


def build(cls, layers: list[dict[str, object]], aliases: dict[str, str] | None = None):
    """The config from layers of {dotted key: value}, later layers winning."""
    types = leaves(cls)
    nested: dict = {}
    for layer in layers:
        for key, value in layer.items():
            path, sub = resolve(cls, key, aliases)
            names = path.split(".")
            node = nested
            for name in names[:-1]:
                node = node.setdefault(name, {})
            if sub is not None:
                node.setdefault(names[-1], {})[sub] = value
            else:
                node[names[-1]] = coerce(types[path], value, key)
    return _construct(cls, nested)


def _construct(cls, nested: dict, base=None):
    """cls from nested values; fields not given keep `base`'s value (the parent field's default instance,
    e.g. SteerConfig's own optimiser defaults) where it differs from the class default."""
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for f in dataclasses.fields(cls):
        default = _field_default(f)
        if f.name in nested:
            v = nested[f.name]
            kwargs[f.name] = _construct(hints[f.name], v, default) if _is_config(hints[f.name]) else v
        elif base is not None and getattr(base, f.name) != default:
            kwargs[f.name] = getattr(base, f.name)
    return cls(**kwargs)


def _field_default(f: dataclasses.Field):
    if f.default is not dataclasses.MISSING:
        return f.default
    return f.default_factory() if f.default_factory is not dataclasses.MISSING else None


def parse_list(values, flag: str, kind=float) -> tuple:
    """A list setting: comma-separated text, one value or a sequence -> a non-empty tuple of `kind`."""
    if isinstance(values, str):
        values = [v for v in values.split(",") if v.strip()]
    if isinstance(values, (int, float)):
        values = [values]
    noun = "value" if kind is str else "number"
    try:
        out = tuple(kind(v.strip() if isinstance(v, str) else v) for v in values)
    except (TypeError, ValueError):
        raise UserError(f"--{flag} needs {noun}s, got {values!r}") from None
    if not out:
        raise UserError(f"--{flag} needs at least one {noun}")
    return out
