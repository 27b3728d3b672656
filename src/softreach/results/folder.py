"""Result folders (the contract in docs/result-folders.md), written atomically and read back.

A folder is staged beside its destination, then renamed into place: an existing folder is never
replaced without `overwrite=True`, and a crash mid-write leaves at most a hidden staging folder, never a
half-written result. Single files (reports, figures, tables) are written to a temporary name and renamed.
"""
from __future__ import annotations

import json
import os
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError

if TYPE_CHECKING:
    import torch

    from ..condition import ConditionResult
    from ..config import RunConfig
    from ..models import LoadedModel


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


@contextmanager
def atomic_file(path: str | os.PathLike):
    """Yield a temporary path beside `path`; once the block has written it, rename it into place.

    For writers that want a file name (matplotlib, pyarrow): a crash leaves the old file or none."""
    path = Path(path)
    tmp = path.with_name(f".{path.stem}.tmp-{os.getpid()}{path.suffix}")
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def dumps_json(obj) -> str:
    return json.dumps(obj, indent=2, sort_keys=False, allow_nan=True) + "\n"


def save_tensors(path: Path, tensors: dict[str, torch.Tensor]) -> None:
    from safetensors.torch import save_file

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


def resolved_config(cfg: RunConfig, lm: LoadedModel, layer: int, experiment: str) -> dict:
    """config.json: the run's settings with everything defaulted made explicit."""
    import torch

    from .. import __version__

    out = cfg.to_dict()
    out["model"] = lm.describe()
    out["model_spec"] = cfg.model
    out["layer"] = layer
    out["experiment"] = experiment
    out["device"] = str(lm.device)
    out["softreach_version"] = __version__
    out["torch_version"] = torch.__version__
    out["created"] = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    return out


def write_condition(out: Path, result: ConditionResult, config: dict, title: str, overwrite: bool,
                    tokens: torch.Tensor | None = None, extra_tensors: dict | None = None,
                    extra_json: dict | None = None) -> Path:
    """Write one result folder, atomically.

    `tokens` are saved only where they produce the targets (`softreach verify` checks that);
    `extra_json` maps file names to JSON-ready objects written beside the contract files.
    """
    from ..report.summary_md import summary_markdown

    folder = StagedFolder(out, overwrite)
    try:
        tensors = {"soft_prompt": result.soft_prompt.float(), "target": result.target.float()}
        if tokens is not None:
            tensors["tokens"] = tokens.long()
        tensors.update({name: ids.int() for name, ids in result.baseline_tokens.items()})  # baseline draws
        tensors.update(extra_tensors or {})
        folder.write_tensors("tensors.safetensors", tensors)
        if result.loss_curve is not None:
            folder.write_tensors("curves.safetensors", {"loss": result.loss_curve, "cos": result.cos_curve,
                                                        "all_soft_prompts": result.all_soft_prompts})
        folder.write_jsonl("problems.jsonl", result.problems)
        for name, obj in (extra_json or {}).items():
            folder.write_json(name, obj)
        folder.write_json("summary.json", result.summary)
        folder.write_json("config.json", config)
        folder.write_text("summary.md", summary_markdown(title, config, result.summary))
        return folder.commit()
    except BaseException:
        folder.abandon()
        raise


def read_json(path: str | os.PathLike, missing_ok: bool = False):
    """The parsed JSON file; None when it does not exist and `missing_ok`."""
    path = Path(path)
    if missing_ok and not path.is_file():
        return None
    return json.loads(path.read_text(encoding="utf-8"))


def read_problems(folder: str | os.PathLike) -> list[dict]:
    """A result folder's problems.jsonl, one dict per row; a one-line UserError for a line that is not JSON."""
    path = Path(folder) / "problems.jsonl"
    rows = []
    for i, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise UserError(f"{path} line {i} is not valid JSON") from None
    return rows


def is_done(folder: str | os.PathLike) -> bool:
    """Whether a result folder is complete (it appears only complete, so: whether it exists)."""
    return (Path(folder) / "problems.jsonl").is_file()
