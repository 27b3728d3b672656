"""The Ray backend of `softreach sweep`: one actor per worker slot, each holding one loaded model.

The driver keeps the queue of unfinished cells and hands each idle actor the next cell for the
model it already holds (else the next cell in order), so a model is loaded once per actor, not
once per cell. Actors write their cells' suite folders themselves, so the sweep folder must be
on a filesystem every node sees (one machine, or NFS and the like).

Failures: an actor whose process dies (os._exit, OOM kill, lost node) is restarted by Ray and
its cell retried (max_restarts / max_task_retries); past those, the driver starts a fresh actor
and resubmits the cell, up to `cell_retries` times. A retried cell resumes through SuiteRunner's
own checkpoints. An exception raised by the cell itself (bad input) stops the sweep.

`ray` is imported only inside these functions, so softreach works without it.
"""
from __future__ import annotations

import os
import sys
from pathlib import Path

from ..errors import UserError
from .cell import cell_dir, run_cell

# forwarded to the actors so that a remote worker behaves like this process (the hub is never touched offline)
FORWARD_ENV = ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "HF_HOME", "HF_HUB_CACHE", "TOKENIZERS_PARALLELISM")


class CellWorker:
    """Body of a Ray actor: runs cells, keeping the last model it loaded."""

    def __init__(self, torch_threads: int | None = None, crash: dict | None = None):
        import torch

        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.crash = crash  # tests only: {"cell": slug, "times": K, "marker": path prefix}
        self.key, self.lm = None, None

    def run_cell(self, cfg, folder: str) -> float:
        from ..models import load_model

        if self.crash and Path(folder).name == self.crash["cell"] and _claim(self.crash):
            os._exit(1)  # a worker lost mid-cell, as an OOM kill or a lost node would look
        key = (cfg.run.model, cfg.run.device)
        if key != self.key:
            self.lm = None  # free the previous model first
            self.lm, self.key = load_model(*key), key
        return run_cell(cfg, folder, self.lm, show_progress=False)


def _claim(crash: dict) -> bool:
    """True for the first `times` calls across all processes (each creates one marker file)."""
    for k in range(crash["times"]):
        try:
            os.close(os.open(f"{crash['marker']}.{k}", os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            return True
        except FileExistsError:
            continue
    return False


def _import_ray():
    try:
        import ray
    except ImportError:
        raise UserError("the ray backend needs ray: pip install 'softreach[ray]'") from None
    return ray


def run_ray(out: Path, cells: list, address: str | None = None, workers: int | None = None,
            show_progress: bool = True, max_restarts: int = 3, cell_retries: int = 2,
            torch_threads: int | None = None, crash: dict | None = None) -> None:
    """Run `cells` (grid.Cell) into `out` on a Ray cluster (joined at `address`, else local or already initialised)."""
    ray = _import_ray()
    from tqdm.auto import tqdm

    started = not ray.is_initialized()
    if started:
        try:
            ray.init(address=address, include_dashboard=False, log_to_driver=False)
        except ConnectionError as e:
            raise UserError(f"cannot connect to the Ray cluster at {address}: {str(e).splitlines()[0]}") from None
    actors = []
    try:
        resources = ray.cluster_resources()
        gpus = int(resources.get("GPU", 0))
        use_gpu = gpus > 0 and all(c.config.run.device != "cpu" for c in cells)
        slots = gpus if use_gpu else max(1, int(resources.get("CPU", 1)))
        if workers and workers > slots:  # an actor that never gets its resources would hold its cell forever
            print(f"softreach: the cluster has {slots} {'GPU' if use_gpu else 'CPU'} slots; "
                  f"starting {slots} workers, not {workers}", file=sys.stderr)
        n = min(workers or slots, slots, len(cells))
        options = {"num_cpus": 1, "num_gpus": 1 if use_gpu else 0,
                   "max_restarts": max_restarts, "max_task_retries": max_restarts}
        env = {k: os.environ[k] for k in FORWARD_ENV if k in os.environ}
        if env:
            options["runtime_env"] = {"env_vars": env}
        Worker = ray.remote(**options)(CellWorker)
        threads = torch_threads or (None if use_gpu else 1)

        def new_actor():
            return Worker.remote(threads, crash)

        actors = [new_actor() for _ in range(n)]
        held = [None] * n  # model key each actor holds (as far as the driver knows)
        pending = list(cells)
        inflight = {}  # ObjectRef -> (actor index, cell)
        deaths = {}  # cell slug -> actors lost past Ray's own retries

        def submit(i: int) -> None:
            if not pending:
                return
            j = next((k for k, c in enumerate(pending) if c.model_key == held[i]), 0)
            cell = pending.pop(j)
            held[i] = cell.model_key
            inflight[actors[i].run_cell.remote(cell.config, str(cell_dir(out, cell)))] = (i, cell)

        for i in range(n):
            submit(i)
        with tqdm(total=len(cells), desc="sweep (ray)", unit="cell", disable=not show_progress,
                  file=sys.stderr) as bar:
            while inflight:
                (ref,), _ = ray.wait(list(inflight), num_returns=1)
                i, cell = inflight.pop(ref)
                try:
                    ray.get(ref)
                except ray.exceptions.RayTaskError as e:  # the cell itself raised: stop the sweep
                    if isinstance(e.cause, UserError):
                        raise UserError(f"cell {cell.slug}: {e.cause}") from None
                    raise
                except (ray.exceptions.RayActorError, ray.exceptions.WorkerCrashedError):
                    deaths[cell.slug] = deaths.get(cell.slug, 0) + 1
                    if deaths[cell.slug] > cell_retries:
                        raise UserError(f"cell {cell.slug}: its worker died {deaths[cell.slug]} times "
                                        "(see the Ray logs); run the sweep again to resume") from None
                    ray.kill(actors[i], no_restart=True)
                    actors[i], held[i] = new_actor(), None
                    pending.insert(0, cell)
                    bar.write(f"worker lost on {cell.slug}; resubmitted to a fresh worker", file=sys.stderr)
                else:
                    bar.update(1)
                submit(i)
                running = ", ".join(c.slug for _, c in inflight.values())
                bar.set_postfix_str(f"done {cell.slug}" + (f"; running {running}" if running else ""))
    finally:
        for actor in actors:
            try:
                ray.kill(actor, no_restart=True)
            except Exception:  # already gone
                pass
        if started:
            ray.shutdown()
