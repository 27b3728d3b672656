"""Checkpoints on disk for optimisation chunks, written atomically so a SIGKILL never corrupts one."""
from __future__ import annotations

import io
import shutil
from pathlib import Path

import torch

from ..optimize import ChunkCheckpoint
from .folder import atomic_write_bytes


class FileCheckpoint(ChunkCheckpoint):
    """One file per chunk under `folder`: chunk_<k>.pt holding prompts, Adam state, curves and step."""

    def __init__(self, folder: str | Path, every: int):
        self.folder = Path(folder)
        self.every = every

    def _path(self, chunk: int) -> Path:
        return self.folder / f"chunk_{chunk:04d}.pt"

    def load(self, chunk: int) -> dict | None:
        path = self._path(chunk)
        if not path.is_file():
            return None
        return torch.load(path, map_location="cpu", weights_only=False)

    def save(self, chunk: int, state: dict) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        buf = io.BytesIO()
        torch.save(state, buf)
        atomic_write_bytes(self._path(chunk), buf.getvalue())

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)
