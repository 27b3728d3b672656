"""Result folders written atomically: staged beside the destination, then renamed into place.

An existing folder is never replaced without `overwrite=True`, and a crash mid-write leaves at
most a hidden staging folder, never a half-written result.
"""
from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import save_file

from .errors import UserError


def check_destination(out: str | os.PathLike, overwrite: bool) -> Path:
    """Fail before any work when the result folder exists and may not be replaced."""
    out = Path(out)
    if out.exists() and not overwrite:
        raise UserError(f"{out} already exists; pass --overwrite to replace it or choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"{out} exists and is not a folder")
    return out


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> None:
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    save_file({k: v.detach().cpu().contiguous() for k, v in tensors.items()}, str(path))


class StagedFolder:
    """Write files into a hidden staging folder, then `commit()` renames it to the destination."""

    def __init__(self, out: str | os.PathLike, overwrite: bool = False):
        self.out = check_destination(out, overwrite)
        self.out.parent.mkdir(parents=True, exist_ok=True)
        self.stage = self.out.parent / f".{self.out.name}.partial-{os.getpid()}"
        if self.stage.exists():
            shutil.rmtree(self.stage)
        self.stage.mkdir()

    def path(self, name: str) -> Path:
        return self.stage / name

    def write_text(self, name: str, text: str) -> None:
        (self.stage / name).write_text(text, encoding="utf-8")

    def write_json(self, name: str, obj) -> None:
        self.write_text(name, dumps_json(obj))

    def write_jsonl(self, name: str, rows: list[dict]) -> None:
        self.write_text(name, "".join(json.dumps(r, allow_nan=True) + "\n" for r in rows))

    def write_tensors(self, name: str, tensors: dict[str, torch.Tensor]) -> None:
        save_tensors(self.stage / name, tensors)

    def commit(self) -> Path:
        for f in self.stage.iterdir():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if self.out.exists():
            old = self.out.parent / f".{self.out.name}.old-{os.getpid()}"
            os.replace(self.out, old)
        os.replace(self.stage, self.out)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
        return self.out

    def abandon(self) -> None:
        shutil.rmtree(self.stage, ignore_errors=True)
