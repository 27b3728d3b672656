"""The suite runner: every experiment of the log, in its order, resumable after any crash.

Layout of a suite folder (each subfolder follows the result-folder contract of DESIGN.md):
  suite.json            the resolved SuiteConfig; a folder made by another config is never resumed
  exp1/                 real targets (+ trajectories.json: all-layer residuals of a few problems)
  exp1b/                exp1 solutions projected to their nearest tokens (+ analysis.json)
  exp4_no_attn/, exp4_no_mlp/, exp4_analysis.json    ablations on exp1's targets, correlations
  exp2a/, exp2b/        distribution-matched and raw random targets (+ analysis.json)
  exp3/                 interpolation between pairs of real targets (rows carry pair, alpha)
  exp5_raw/, exp5_pca/  corruption sweeps (rows carry fraction)
  .checkpoints/NAME/    mid-experiment optimiser state, removed once NAME's folder is written
A folder appears only complete (staged, then renamed), so "done" means "exists".
"""
from __future__ import annotations

import dataclasses
import json
import math
import shutil
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from .budget import absolute_cap, budget_fields, budget_label, folder_suffix
from .checkpoint import FileCheckpoint
from .condition import ConditionResult, evaluate_inputs, solve_condition
from .corpus import load_corpus_text
from .errors import UserError
from .exp1 import resolved_config, write_condition
from .floor import ordinary_token_ids
from .models import LoadedModel, load_model
from .presets import SuiteConfig
from .progress import StepBar
from .residual import all_layer_residuals, check_layer
from .store import atomic_write_text, dumps_json
from .targets import mean_residual, residuals_of_tokens, sample_windows, tokenize_windows

TITLES = {
    "exp1": "Experiment 1: reachability of real activations",
    "exp1b": "Experiment 1b: Exp 1 solutions projected to their nearest tokens",
    "exp4_no_attn": "Experiment 4: every attention output zeroed (FFN only)",
    "exp4_no_mlp": "Experiment 4: every MLP output zeroed (attention only)",
    "exp2a": "Experiment 2a: distribution-matched random targets",
    "exp2b": "Experiment 2b: raw random targets (norm-matched)",
    "exp3": "Experiment 3: interpolation and extrapolation between real targets",
    "exp5_raw": "Experiment 5A: corruption of raw dimensions",
    "exp5_pca": "Experiment 5B: corruption of top PCA directions",
}


def _comparable(config: dict) -> dict:
    return json.loads(json.dumps(config))


def prepare_suite_folder(out: Path, cfg: SuiteConfig, overwrite: bool) -> bool:
    """Create or validate the suite folder. Returns True when resuming an earlier run."""
    marker = out / "suite.json"
    wanted = _comparable(cfg.to_dict())
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if out.exists():
        if not marker.is_file():
            if any(out.iterdir()):
                raise UserError(f"{out} exists and is not a softreach suite folder; choose another --out")
        else:
            try:
                stored = json.loads(marker.read_text())["config"]
            except (ValueError, KeyError):
                raise UserError(f"{marker} is unreadable; pass --overwrite to start again") from None
            diff = _differences(stored, wanted)
            if diff:
                raise UserError(f"{out} was made by another config (differs in {', '.join(diff[:4])}); "
                                "refusing to resume: use the same settings, another --out, or --overwrite")
            return True
    out.mkdir(parents=True, exist_ok=True)
    from . import __version__

    atomic_write_text(marker, dumps_json({"config": wanted, "softreach_version": __version__}))
    return False


def _differences(a, b, prefix="") -> list[str]:
    if isinstance(a, dict) and isinstance(b, dict):
        out = []
        for k in sorted(set(a) | set(b)):
            out += _differences(a.get(k), b.get(k), f"{prefix}{k}.")
        return out
    return [] if a == b else [prefix.rstrip(".")]


class SuiteRunner:
    """Runs the experiments of a SuiteConfig into one folder, skipping what is already there."""

    def __init__(self, cfg: SuiteConfig, out: str | Path, lm: LoadedModel | None = None,
                 show_progress: bool = True, overwrite: bool = False):
        self.cfg, self.out, self.show_progress = cfg, Path(out), show_progress
        self.resumed = prepare_suite_folder(self.out, cfg, overwrite)
        self.lm = lm or load_model(cfg.run.model, cfg.run.device)
        run = cfg.run
        self.layer = run.layer if run.layer is not None else self.lm.default_layer()
        check_layer(self.layer, self.lm.n_layers)
        self.windows = tokenize_windows(self.lm, load_corpus_text(run.corpus), run.seq_len)
        self.target_idx = sample_windows(self.windows, run.targets, run.seed)
        self.tokens = self.windows.tokens[self.target_idx]  # [N, T]
        self.targets = residuals_of_tokens(self.lm, self.tokens, self.layer)  # [N, T, d]
        self.mu = mean_residual(self.lm, self.windows, self.layer, run.mean_windows, run.seed)  # [T, d]
        self._moments = None
        self.steps_done = {}

    # ----- shared pieces -------------------------------------------------------------------
    def moment_residuals(self) -> torch.Tensor:
        """Residuals of `moment_windows` real windows (disjoint from the targets): [M, T, d]."""
        if self._moments is None:
            idx = sample_windows(self.windows, self.cfg.moment_windows, self.cfg.run.seed + 11, exclude=self.target_idx)
            self._moments = residuals_of_tokens(self.lm, self.windows.tokens[idx], self.layer)
        return self._moments

    def done(self, name: str) -> bool:
        return (self.out / name / "problems.jsonl").is_file()

    def all_done(self, name: str) -> bool:
        """Whether the condition's folders exist at every budget."""
        return all(self.done(name + folder_suffix(b)) for b in self.cfg.run.norm_budgets)

    def load_problems(self, name: str) -> list[dict]:
        return [json.loads(line) for line in (self.out / name / "problems.jsonl").read_text().splitlines() if line]

    def solve(self, name: str, target: torch.Tensor, experiment: str, ablation: str = "none",
              tokens: torch.Tensor | None = None, row_fields: dict | None = None, extra_json=None,
              after=None) -> None:
        """Optimise one condition at every norm budget, smallest first, each warm-started from the one
        before (checkpointed); write one folder per budget and skip those that exist."""
        run = self.cfg.run
        optim = dataclasses.replace(run.optim, steps=self.cfg.steps_for(experiment))
        restarts = self.cfg.restarts_for(experiment)
        warm = None
        for budget in run.norm_budgets:
            folder = name + folder_suffix(budget)
            if self.done(folder):
                warm = load_file(str(self.out / folder / "tensors.safetensors"))["soft_prompt"]
                continue
            ckpt = FileCheckpoint(self.out / ".checkpoints" / folder, self.cfg.checkpoint_every)
            total = optim.problem_steps(target.shape[0], restarts)
            with StepBar(total, self._label(folder), self.show_progress) as bar:
                result = solve_condition(self.lm, self.layer, target, restarts, optim, run.seed, self.mu, ablation,
                                         run.floor_draws, progress=bar.update, checkpoint=ckpt,
                                         cap=absolute_cap(self.lm, budget), warm_start=warm)
            self._finish(folder, result, experiment, ablation, restarts, optim, tokens, row_fields, extra_json,
                         after, budget=budget)
            ckpt.clear()
            warm = result.soft_prompt

    def _finish(self, name, result: ConditionResult, experiment, ablation, restarts, optim, tokens, row_fields,
                extra_json, after=None, extra_tensors=None, budget: float = math.inf, budget_applies: bool = True):
        for key, values in (row_fields or {}).items():
            for rec, v in zip(result.problems, values):
                rec[key] = v.item() if hasattr(v, "item") else v
        run = dataclasses.replace(self.cfg.run, restarts=restarts, optim=optim, ablation=ablation,
                                  targets=result.target.shape[0])
        config = resolved_config(run, self.lm, self.layer, experiment)
        config["condition"] = name
        config.update(budget_fields(self.lm, budget if budget_applies else math.inf))
        if not budget_applies:
            config["source_norm_budget_tokens"] = None if math.isinf(budget) else budget
        extra = dict(extra_json or {})
        if after is not None:
            extra.update(after(result))
        title = TITLES[name[: len(name) - len(folder_suffix(budget))]] + ("" if math.isinf(budget) else f", norm budget {budget_label(budget)}"
                                                " x the mean token norm")
        write_condition(self.out / name, result, config, title, overwrite=False, tokens=tokens,
                        extra_tensors={"corpus_mean": self.mu, **(extra_tensors or {})}, extra_json=extra)

    def _label(self, name: str) -> str:
        names = self.condition_names()
        return f"[{names.index(name) + 1}/{len(names)}] {name}"

    def condition_names(self) -> list[str]:
        """Every folder the suite writes, in the order it writes them."""
        expand = {"exp4": ["exp4_no_attn", "exp4_no_mlp"], "exp5": ["exp5_raw", "exp5_pca"]}
        return [n + folder_suffix(b) for e in self.cfg.experiments for n in expand.get(e, [e])
                for b in self.cfg.run.norm_budgets]

    # ----- the experiments ----------------------------------------------------------------
    def run(self) -> Path:
        for experiment in self.cfg.experiments:
            getattr(self, f"run_{experiment}")()
        shutil.rmtree(self.out / ".checkpoints", ignore_errors=True)
        return self.out

    def run_exp1(self):
        self.solve("exp1", self.targets, "exp1", tokens=self.tokens,
                   row_fields={"window": self.target_idx.tolist(),
                               "text": [self.lm.tokenizer.decode(t) for t in self.tokens]},
                   after=lambda res: {"trajectories.json": self.trajectories(res.soft_prompt)})

    def trajectories(self, soft: torch.Tensor) -> dict:
        """All-layer residuals of a few solutions beside those of the targets' own tokens."""
        k = min(self.cfg.trajectory_problems, soft.shape[0])
        emb = self.lm.embedding_matrix.detach()[self.tokens[:k].to(self.lm.device)]
        a = all_layer_residuals(self.lm.model, soft[:k].to(self.lm.device)).float().cpu()  # [L+1, k, T, d]
        b = all_layer_residuals(self.lm.model, emb).float().cpu()
        cos = torch.nn.functional.cosine_similarity(a, b, dim=-1)  # [L+1, k, T]
        return {"layers": list(range(a.shape[0])), "target_layer": self.layer, "problems": list(range(k)),
                "cos_soft_vs_tokens": cos.mean(-1).T.tolist(),
                "cos_soft_vs_tokens_no_pos0": cos[:, :, 1:].mean(-1).T.tolist(),
                "norm_soft": a.norm(dim=-1)[:, :, 1:].mean(-1).T.tolist(),
                "norm_tokens": b.norm(dim=-1)[:, :, 1:].mean(-1).T.tolist(),
                "norms_exclude_pos0": True}

    def run_exp1b(self):
        for budget in self.cfg.run.norm_budgets:
            self.project_exp1(folder_suffix(budget), budget)

    def project_exp1(self, suffix: str, budget: float) -> None:
        """Exp 1b at one budget: the Exp 1 solutions of that budget projected to their nearest tokens."""
        if self.done("exp1b" + suffix):
            return
        if not self.done("exp1" + suffix):
            self.run_exp1()
        from .manifold import manifold_summary, nearest_tokens, project_to_tokens

        soft = load_file(str(self.out / ("exp1" + suffix) / "tensors.safetensors"))["soft_prompt"]  # [N, T, d]
        emb = self.lm.embedding_matrix.detach().float().cpu()
        allowed = ordinary_token_ids(self.lm)
        analysis = manifold_summary(soft, emb, self.lm.tokenizer, allowed)
        analysis["nearest_cos_values"] = nearest_tokens(soft, emb, allowed)["cos"].flatten().tolist()
        ids, projected = project_to_tokens(soft, emb, allowed)
        result = evaluate_inputs(self.lm, self.layer, projected, self.targets, self.cfg.run.seed, self.mu,
                                 floor_draws=self.cfg.run.floor_draws)
        analysis["projection"] = {k: result.summary[k] for k in ("cos", "cos_no_pos0", "mse", "floor_cos",
                                                                  "floor_cos_no_pos0") if k in result.summary}
        rows = {"projected_text": [self.lm.tokenizer.decode(t) for t in ids]}
        # the projected token ids are stored so anyone can re-evaluate them from input_ids alone; real
        # tokens are not held to the budget of the solutions they come from (config says which that was)
        self._finish("exp1b" + suffix, result, "exp1b", "none", 1, self.cfg.run.optim, None, rows,
                     {"analysis.json": analysis}, extra_tensors={"projected_tokens": ids.long()},
                     budget=budget, budget_applies=False)

    def run_exp4(self):
        for ablation in ("no_attn", "no_mlp"):
            self.solve(f"exp4_{ablation}", self.targets, "exp4", ablation=ablation, tokens=self.tokens)
        for budget in self.cfg.run.norm_budgets:
            suffix = folder_suffix(budget)
            if self.done("exp1" + suffix):
                atomic_write_text(self.out / f"exp4_analysis{suffix}.json", dumps_json(self.ablation_correlations(suffix)))

    def ablation_correlations(self, suffix: str = "") -> dict:
        from scipy import stats

        cos = {"full": [p["cos"] for p in self.load_problems("exp1" + suffix)],
               "no_attn": [p["cos"] for p in self.load_problems("exp4_no_attn" + suffix)],
               "no_mlp": [p["cos"] for p in self.load_problems("exp4_no_mlp" + suffix)]}
        out = []
        for a, b in (("full", "no_attn"), ("full", "no_mlp"), ("no_attn", "no_mlp")):
            x, y = np.asarray(cos[a]), np.asarray(cos[b])
            if len(x) >= 3 and x.std() > 0 and y.std() > 0:
                rho, p = stats.spearmanr(x, y)
                r, pr = stats.pearsonr(x, y)
            else:
                rho = p = r = pr = float("nan")
            out.append({"a": a, "b": b, "spearman_rho": float(rho), "p_value": float(p),
                        "pearson_r": float(r), "pearson_p": float(pr), "n": int(len(x))})
        return {"correlations": out}

    def run_exp2a(self):
        if self.all_done("exp2a"):
            return
        from .synthetic_targets import distribution_matched_targets, fit_position_gaussian

        mean, chol, jitter = fit_position_gaussian(self.moment_residuals(), return_jitter=True)
        target = distribution_matched_targets(mean, chol, self.cfg.run.targets, self.cfg.run.seed + 21)
        check = distribution_matched_targets(mean, chol, 2000, self.cfg.run.seed + 22)  # [2000, T, d]
        emp_cov = torch.einsum("ntd,nte->tde", check - check.mean(0), check - check.mean(0)) / (check.shape[0] - 1)
        cov = chol @ chol.transpose(-1, -2)
        analysis = {"moment_windows": self.cfg.moment_windows, "check_samples": check.shape[0],
                    "max_jitter": float(jitter.max()), "positions_jittered": int((jitter > 0).sum()),
                    "mean_rel_error": float((check.mean(0) - mean).norm() / mean.norm()),
                    # sample mean minus intended mean, in standard errors, worst over positions and dims
                    "mean_max_abs_z": float(((check.mean(0) - mean) / (cov.diagonal(dim1=-2, dim2=-1).sqrt()
                                                                       / check.shape[0] ** 0.5)).abs().max()),
                    "cov_rel_error": float((emp_cov - cov).norm() / cov.norm())}
        self.solve("exp2a", target, "exp2a", extra_json={"analysis.json": analysis})

    def run_exp2b(self):
        if self.all_done("exp2b"):
            return
        from .synthetic_targets import raw_random_targets, typical_norms

        norms = typical_norms(self.moment_residuals())  # [T]
        target = raw_random_targets(norms, self.cfg.run.targets, self.lm.d_model, self.cfg.run.seed + 23)
        self.solve("exp2b", target, "exp2b", extra_json={"analysis.json": {"typical_norms": norms.tolist()}})

    def run_exp3(self):
        if self.all_done("exp3"):
            return
        from .synthetic_targets import EXP3_ALPHAS, interpolated_targets

        idx = sample_windows(self.windows, 2 * self.cfg.exp3_pairs, self.cfg.run.seed + 31)
        res = residuals_of_tokens(self.lm, self.windows.tokens[idx], self.layer)  # [2P, T, d]
        target, pair, alpha = interpolated_targets(res[0::2], res[1::2], list(EXP3_ALPHAS))
        self.solve("exp3", target, "exp3", row_fields={"pair": [int(p) for p in pair],
                                                       "alpha": [float(a) for a in alpha]})

    def run_exp5(self):
        from .synthetic_targets import EXP5_FRACTIONS, corrupt_raw_dimensions, corrupt_top_pca

        if self.all_done("exp5_raw") and self.all_done("exp5_pca"):
            return
        idx = sample_windows(self.windows, self.cfg.exp5_targets, self.cfg.run.seed + 41)
        base = residuals_of_tokens(self.lm, self.windows.tokens[idx], self.layer)  # [K, T, d]
        ref = self.moment_residuals()
        sigma = ref.std(0)  # [T, d]
        seed = self.cfg.run.seed
        variants = {
            "exp5_raw": lambda f, k: corrupt_raw_dimensions(base, f, sigma, seed + 51 + k),
            "exp5_pca": lambda f, k: corrupt_top_pca(base, f, ref, seed + 71 + k, per_position=True),
        }
        for name, corrupt in variants.items():
            target = torch.cat([corrupt(f, k) for k, f in enumerate(EXP5_FRACTIONS)])
            fractions = [float(f) for f in EXP5_FRACTIONS for _ in range(base.shape[0])]
            source = [int(i) for _ in EXP5_FRACTIONS for i in range(base.shape[0])]
            self.solve(name, target, "exp5", row_fields={"fraction": fractions, "source_target": source})
