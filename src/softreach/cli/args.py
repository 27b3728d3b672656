"""The command line derived from the config dataclasses: one flag per field, one override syntax.

Flags come from the fields (name, type, `Literal` choices, docstring as help); `--set KEY=VALUE` takes
any field by its dotted key (see overrides.py), `--config FILE.yaml` a mapping of them. Precedence:
defaults < preset < YAML < command line (flags and --set; the same key given twice differently is refused).
"""
from __future__ import annotations

import argparse
import ast
import dataclasses
import inspect
import textwrap
import typing
from functools import lru_cache
from operator import attrgetter
from typing import Literal

from ..errors import UserError
from ..overrides import build, flatten, leaves, parse_assignments

SUITE_ALIASES = {"suite.": ""}  # the sweep grid's group name for SuiteConfig's own fields
DEST = "cfg:"  # prefix of the argparse dest of a config flag: "cfg:run.optim.lr"


@lru_cache(maxsize=None)
def field_docs(cls) -> dict[str, str]:
    """Field name -> the docstring written under it in the class body."""
    tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    body = tree.body[0].body
    docs = {}
    for node, nxt in zip(body, body[1:]):
        if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def _field(cls, path: str) -> tuple[type, dataclasses.Field]:
    """The dataclass that owns a dotted path's last field, and that field."""
    owner = cls
    for name in path.split(".")[:-1]:
        owner = typing.get_type_hints(owner)[name]
    return owner, next(f for f in dataclasses.fields(owner) if f.name == path.rsplit(".", 1)[-1])


def _shown(value) -> str:
    if isinstance(value, (tuple, list)):
        return ",".join(f"{v:g}" if isinstance(v, float) else str(v) for v in value)
    return str(value)


def add_config_flags(parser: argparse.ArgumentParser, cls, skip: tuple[str, ...] = ()) -> None:
    """One flag per settable field of `cls` (dict fields only through --set); unset flags stay None. The help
    shows the default as `cls()` has it (a parent may set its own, as SteerConfig's optimiser does)."""
    defaults = cls()
    for path, tp in leaves(cls).items():
        owner, f = _field(cls, path)
        if f.name in skip or (typing.get_origin(tp) or tp) is dict:
            continue
        flag = f.metadata.get("flag", "--" + f.name.replace("_", "-"))
        doc = field_docs(owner).get(f.name, "").replace("%", "%%")
        kw: dict = {"dest": DEST + path, "default": None, "help": f"{doc} (default: {_shown(attrgetter(path)(defaults))})"}
        base = next((a for a in typing.get_args(tp) if a is not type(None)), tp) if typing.get_origin(tp) is \
            typing.Union else tp
        if base is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif typing.get_origin(base) is Literal:  # checked by the config, for a one-line error
            kw["metavar"] = "{" + ",".join(map(str, typing.get_args(base))) + "}"
        elif (typing.get_origin(base) or base) is tuple:
            kw.update(nargs="+", metavar="V")
        else:
            kw.update(type=base, metavar=f.name.upper())
        parser.add_argument(flag, **kw)


def add_settings_options(parser: argparse.ArgumentParser) -> None:
    """--set and --config, for every command with settings."""
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[],
                        help="any setting by its dotted key, e.g. optim.lr=0.05, steps.exp2b=3000 (repeatable)")
    parser.add_argument("--config", metavar="FILE.yaml", default=None,
                        help="a YAML mapping of settings (nested groups or dotted keys); flags and --set win")


def add_output_options(parser: argparse.ArgumentParser, what: str, required: bool = True) -> None:
    parser.add_argument("--out", required=required, default=None, help=f"{what} to create (or resume)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing folder")
    parser.add_argument("--no-progress", action="store_true", help="hide progress bars")


def refuse_settings(parser: argparse.ArgumentParser, command: str) -> None:
    """Commands without settings still accept --set, and refuse it with a one-line error."""
    parser.add_argument("--set", action="append", metavar="KEY=VALUE", default=[], help=argparse.SUPPRESS)
    parser.set_defaults(no_settings=command)


def _flag_values(a: argparse.Namespace) -> dict[str, object]:
    out = {}
    for dest, value in vars(a).items():
        if dest.startswith(DEST) and value is not None:
            if isinstance(value, list):  # tuple fields: "1,2" and "1 2" both give [1, 2]
                value = [p.strip() for item in value for p in str(item).split(",") if p.strip()]
            out[dest[len(DEST):]] = value
    return out


def _yaml_layer(cls, path: str | None, aliases) -> dict:
    if path is None:
        return {}
    import yaml

    try:
        with open(path, encoding="utf-8") as f:
            raw = yaml.safe_load(f)
    except OSError as e:
        raise UserError(f"cannot read --config {path}: {e.strerror}") from None
    except yaml.YAMLError as e:
        raise UserError(f"--config {path} is not valid YAML: {str(e).splitlines()[0]}") from None
    return flatten(cls, raw or {}, aliases)


def settings(a: argparse.Namespace, cls, preset: dict | None = None, aliases: dict | None = None,
             fixed: dict | None = None):
    """The command's config: defaults < preset < --config YAML < flags and --set (< `fixed` by the command)."""
    command_line = parse_assignments(a.set, aliases, cls)
    for key, value in _flag_values(a).items():
        if key in command_line and command_line[key] != value:
            raise UserError(f"{key} is given twice: {value!r} by its flag and {command_line[key]!r} by --set")
        command_line[key] = value
    layers = [flatten(cls, preset or {}, aliases), _yaml_layer(cls, a.config, aliases), command_line]
    return build(cls, layers + [fixed or {}], aliases)
