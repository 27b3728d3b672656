"""The suite runner: experiments of the log, in their order, resumable after any crash.

Layout of a suite folder (each subfolder follows docs/result-folders.md):
  suite.json            the resolved SuiteConfig; a folder made by another config is never resumed
  exp1/                 real targets (+ trajectories.json: all-layer residuals of a few problems)
  exp1b/                exp1 solutions projected to their nearest tokens (+ analysis.json)
  exp4_no_attn/, exp4_no_mlp/, exp4_analysis.json    ablations on exp1's targets, correlations
  exp2a/, exp2b/        distribution-matched and raw random targets (+ analysis.json)
  exp3/                 interpolation between pairs of real targets (rows carry pair, alpha)
  exp5_raw/, exp5_pca/  corruption sweeps (rows carry fraction)
  .checkpoints/NAME/    mid-experiment optimiser state, removed once NAME's folder is written
Each condition also runs at every norm budget (`NAME_bB`, free keeps `NAME`). A folder appears only
complete (staged, then renamed), so "done" means "exists".

`softreach run exp1 --out DIR` is the same runner writing its one folder at DIR, with its marker and
checkpoints in a hidden sibling folder: there is one Exp 1 path.
"""
from __future__ import annotations

import dataclasses
import math
import shutil
import tempfile
from pathlib import Path

import torch

from ..budget import absolute_cap, budget_fields, budget_label, folder_suffix
from ..condition import ConditionResult, solve_condition
from ..config import RunConfig, SuiteConfig
from ..errors import UserError
from ..models import LoadedModel, load_model
from ..progress import StepBar
from ..results.checkpoint import FileCheckpoint
from ..results.folder import check_destination, is_done, read_problems, resolved_config, write_condition
from ..results.markers import open_marked_folder
from ..targets import corpus_targets, mean_residual, residuals_of_tokens, sample_windows
from . import builders
from .registry import CONDITIONS, EXPERIMENTS


def open_suite_folder(out: str | Path, cfg: SuiteConfig, overwrite: bool = False) -> bool:
    """Create the suite folder with its suite.json, or accept one made by the same config (True: resuming)."""
    return open_marked_folder(out, "suite.json", cfg.to_dict(), "suite", overwrite, key="config")


class SuiteRunner:
    """Runs the experiments of a SuiteConfig into one folder, skipping what is already there.

    single=True: the config holds Exp 1 alone at one budget, and `out` is that result folder itself.
    """

    def __init__(self, cfg: SuiteConfig, out: str | Path, lm: LoadedModel | None = None,
                 show_progress: bool = True, overwrite: bool = False, single: bool = False):
        self.cfg, self.out, self.show_progress, self.single = cfg, Path(out), show_progress, single
        if single and (cfg.experiments != ("exp1",) or len(cfg.run.norm_budgets) != 1):
            raise UserError("a single result folder holds Exp 1 at one norm budget (a suite runs several)")
        if single:
            check_destination(self.out, overwrite)
        self.overwrite = overwrite
        self.lm = lm or load_model(cfg.run.model, cfg.run.device)
        run = cfg.run
        self.layer = self.lm.layer(run.layer)
        self.windows, self.tokens, self.targets, self.target_idx = corpus_targets(
            self.lm, run.corpus, run.seq_len, self.layer, run.targets, run.seed)  # tokens [N, T], targets [N, T, d]
        self.mu = mean_residual(self.lm, self.windows, self.layer, run.mean_windows, run.seed)  # [T, d]
        # the folder (or a single result's hidden state folder) is made once the input has been checked
        if single:
            self.state = self.out.parent / f".{self.out.name}.run"
            self.resumed = self._open_state()
        else:
            self.state = self.out
            self.resumed = open_suite_folder(self.out, cfg, overwrite)
        self._moments = None
        self.results: dict[str, tuple[ConditionResult, dict]] = {}

    def _open_state(self) -> bool:
        """The hidden sibling of a single result folder: its marker and checkpoints; a stale one is replaced."""
        try:
            return open_marked_folder(self.state, "run.json", self.cfg.to_dict(), "run", key="config")
        except UserError:
            shutil.rmtree(self.state, ignore_errors=True)
            return open_marked_folder(self.state, "run.json", self.cfg.to_dict(), "run", key="config")

    # ----- folders ------------------------------------------------------------------------
    def folder(self, name: str) -> Path:
        return self.out if self.single else self.out / name

    def done(self, name: str) -> bool:
        if self.single:
            return name in self.results
        return is_done(self.folder(name))

    def all_done(self, name: str) -> bool:
        """Whether the condition's folders exist at every budget."""
        return all(self.done(name + folder_suffix(b)) for b in self.cfg.run.norm_budgets)

    def load_problems(self, name: str) -> list[dict]:
        return read_problems(self.folder(name))

    def load_soft_prompt(self, name: str) -> torch.Tensor:
        from safetensors.torch import load_file

        return load_file(str(self.folder(name) / "tensors.safetensors"))["soft_prompt"]

    def condition_names(self) -> list[str]:
        """Every folder the suite writes, in the order it writes them."""
        return [c.name + folder_suffix(b) for e in self.cfg.experiments for c in EXPERIMENTS[e].conditions
                for b in self.cfg.run.norm_budgets]

    def moment_residuals(self) -> torch.Tensor:
        """Residuals of `moment_windows` real windows (disjoint from the targets): [M, T, d]."""
        if self._moments is None:
            idx = sample_windows(self.windows, self.cfg.moment_windows, self.cfg.run.seed + 11, exclude=self.target_idx)
            self._moments = residuals_of_tokens(self.lm, self.windows.tokens[idx], self.layer)
        return self._moments

    # ----- solving and writing ------------------------------------------------------------------
    def solve(self, name: str, target: torch.Tensor, experiment: str, tokens: torch.Tensor | None = None,
              row_fields: dict | None = None, extra_json=None, after=None) -> None:
        """Optimise one condition at every norm budget, smallest first, each warm-started from the one
        before (checkpointed); write one folder per budget and skip those that exist."""
        run = self.cfg.run
        optim = dataclasses.replace(run.optim, steps=self.cfg.steps_for(experiment))
        restarts = self.cfg.restarts_for(experiment)
        ablation = CONDITIONS[name].ablation
        warm = None
        for budget in run.norm_budgets:
            folder = name + folder_suffix(budget)
            if self.done(folder):
                warm = self.load_soft_prompt(folder)
                continue
            ckpt = FileCheckpoint(self.state / ".checkpoints" / folder, self.cfg.checkpoint_every)
            total = optim.problem_steps(target.shape[0], restarts)
            with StepBar(total, self._label(folder), self.show_progress) as bar:
                result = solve_condition(self.lm, self.layer, target, restarts, optim, run.seed, self.mu, ablation,
                                         run.floor_draws, progress=bar.update, checkpoint=ckpt,
                                         cap=absolute_cap(self.lm, budget), warm_start=warm)
            self.finish(folder, result, experiment, restarts, optim, tokens, row_fields, extra_json, after,
                        budget=budget)
            ckpt.clear()
            warm = result.soft_prompt

    def finish(self, folder: str, result: ConditionResult, experiment: str, restarts: int, optim, tokens=None,
               row_fields=None, extra_json=None, after=None, extra_tensors=None, budget: float = math.inf,
               budget_applies: bool = True) -> None:
        """Write one condition's result folder (rows extended by `row_fields`, side files by `extra_json`)."""
        name = folder[: len(folder) - len(folder_suffix(budget))]
        for key, values in (row_fields or {}).items():
            for rec, v in zip(result.problems, values):
                rec[key] = v.item() if hasattr(v, "item") else v
        run = dataclasses.replace(self.cfg.run, restarts=restarts, optim=optim, ablation=CONDITIONS[name].ablation,
                                  targets=result.target.shape[0])
        config = resolved_config(run, self.lm, self.layer, experiment)
        config["condition"] = folder
        config.update(budget_fields(self.lm, budget if budget_applies else math.inf))
        if not budget_applies:
            config["source_norm_budget_tokens"] = None if math.isinf(budget) else budget
        extra = dict(extra_json or {})
        if after is not None:
            extra.update(after(result))
        title = CONDITIONS[name].title + ("" if math.isinf(budget) else
                                          f", norm budget {budget_label(budget)} x the mean token norm")
        write_condition(self.folder(folder), result, config, title, overwrite=self.single and self.overwrite,
                        tokens=tokens, extra_tensors={"corpus_mean": self.mu, **(extra_tensors or {})},
                        extra_json=extra)
        self.results[folder] = (result, config)

    def _label(self, name: str) -> str:
        names = self.condition_names()
        return f"[{names.index(name) + 1}/{len(names)}] {name}"

    def run(self) -> Path:
        for name in self.cfg.experiments:
            getattr(builders, f"run_{name}")(self)
        if self.single:
            shutil.rmtree(self.state, ignore_errors=True)
        else:
            shutil.rmtree(self.out / ".checkpoints", ignore_errors=True)
        return self.out


def run_suite(cfg: SuiteConfig, out: str | Path, lm: LoadedModel | None = None, show_progress: bool = True,
              overwrite: bool = False) -> Path:
    """Every experiment of `cfg` into the suite folder `out` (resumed if it exists with the same config)."""
    return SuiteRunner(cfg, out, lm, show_progress, overwrite).run()


def run_exp1(cfg: RunConfig, out: str | Path | None = None, overwrite: bool = False,
             lm: LoadedModel | None = None, show_progress: bool = True) -> tuple[ConditionResult, dict]:
    """Experiment 1 at one norm budget into the result folder `out` (a temporary one if None).

    Returns the result and its resolved config. The same code as the suite's Exp 1."""
    suite = SuiteConfig(run=cfg, experiments=("exp1",))
    with tempfile.TemporaryDirectory() as tmp:
        runner = SuiteRunner(suite, Path(tmp) / "exp1" if out is None else out, lm, show_progress, overwrite,
                             single=True)
        runner.run()
    return runner.results["exp1" + folder_suffix(cfg.norm_budgets[0])]


def run_and_report(cfg: SuiteConfig, out: str | Path, overwrite: bool = False, show_progress: bool = True) -> int:
    """The suite into `out` (resumed if it exists), its report written and its synthesis printed."""
    import sys

    from ..report import write_report

    runner = SuiteRunner(cfg, out, show_progress=show_progress, overwrite=overwrite)
    if runner.resumed:
        print(f"resuming {out}: finished experiments are kept, the rest continue from their checkpoints",
              file=sys.stderr)
    runner.run()
    report = write_report(out)
    print(f"\nreport: {report}")
    synthesis = report.read_text().split("## Synthesis", 1)
    if len(synthesis) == 2:
        print("## Synthesis" + synthesis[1].split("\n## ", 1)[0])
    return 0
