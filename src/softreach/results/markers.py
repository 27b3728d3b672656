"""Create-or-resume of a folder that holds many results under one marker file (suite, ladder, sweep).

The marker records what made the folder; the same command run again resumes it, another one is
refused with the settings that differ; `overwrite` starts again.
"""
from __future__ import annotations

import json
import shutil
import time
from pathlib import Path

from ..errors import UserError
from .folder import atomic_write_text, dumps_json


def differences(a, b, prefix: str = "") -> list[str]:
    """Dotted keys at which two JSON-like values differ."""
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


def open_marked_folder(out: str | Path, marker: str, record: dict, kind: str, overwrite: bool = False,
                       key: str | None = None, made_by: str = "config") -> bool:
    """Create `out` with `out/marker` holding `record`, or accept an existing folder made by an equal record.

    The marker file holds the record's keys (or the record under `key`) beside the version and time of
    creation, which are not compared. `kind` names the folder (suite, ladder, sweep) in the refusal of an
    unrelated folder, `made_by` what made it (config, grid) in the refusal of another one. Returns True when resuming. An unrelated non-empty folder is never
    touched.
    """
    from .. import __version__

    out = Path(out)
    path = out / marker
    wanted = json.loads(json.dumps({key: record} if key else record))  # as it reads back from JSON
    if out.exists() and overwrite:
        shutil.rmtree(out) if out.is_dir() else out.unlink()
    if path.is_file():
        try:
            stored = json.loads(path.read_text())
            stored = {k: stored[k] for k in wanted}
        except (ValueError, KeyError, TypeError):
            raise UserError(f"{path} is unreadable; pass --overwrite to start again or choose another --out") from None
        diff = [d[len(key) + 1:] if key and d.startswith(key + ".") else d for d in differences(stored, wanted)]
        if diff:
            raise UserError(f"{out} was made by another {made_by} (differs in {', '.join(diff[:4])}); refusing to "
                            "resume: use the same settings, another --out, or --overwrite")
        return True
    if out.exists() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a softreach {kind} folder; choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, dumps_json({**wanted, "softreach_version": __version__,
                                        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z")}))
    return False
