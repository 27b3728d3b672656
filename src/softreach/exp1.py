"""Experiment 1: reachability of real activations (targets = residuals of real text windows)."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from . import __version__
from .budget import absolute_cap, budget_fields
from .condition import ConditionResult, solve_condition
from .config import RunConfig
from .corpus import load_corpus_text
from .errors import UserError
from .models import LoadedModel, load_model
from .progress import StepBar
from .residual import check_layer
from .store import StagedFolder, check_destination
from .summary_md import summary_markdown
from .targets import TokenWindows, mean_residual, residuals_of_tokens, sample_windows, tokenize_windows


def resolved_config(cfg: RunConfig, lm: LoadedModel, layer: int, experiment: str) -> dict:
    """config.json: the run's settings with everything defaulted made explicit."""
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


def real_targets(lm: LoadedModel, windows: TokenWindows, layer: int, count: int, seed: int,
                 ablation: str = "none") -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Draw `count` windows and return (tokens [N, T], targets [N, T, d], window indices [N])."""
    idx = sample_windows(windows, count, seed)
    tokens = windows.tokens[idx]
    return tokens, residuals_of_tokens(lm, tokens, layer, ablation), idx


def write_condition(out: Path, result: ConditionResult, config: dict, title: str, overwrite: bool,
                    tokens: torch.Tensor | None = None, extra_tensors: dict | None = None,
                    extra_json: dict | None = None) -> Path:
    """Write a result folder (the contract in DESIGN.md), atomically.

    `tokens` are saved only where they produce the targets (verify_run checks that);
    `extra_json` maps file names to JSON-ready objects written beside the contract files.
    """
    folder = StagedFolder(out, overwrite)
    try:
        tensors = {"soft_prompt": result.soft_prompt.float(), "target": result.target.float()}
        if tokens is not None:
            tensors["tokens"] = tokens.long()
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


def run_exp1(cfg: RunConfig, out: str | Path | None = None, overwrite: bool = False,
             lm: LoadedModel | None = None, show_progress: bool = True) -> tuple[ConditionResult, dict]:
    """Experiment 1 end to end. Returns the result and its resolved config; writes `out` if given."""
    if out is not None:
        check_destination(out, overwrite)
    lm = lm or load_model(cfg.model, cfg.device)
    layer = cfg.layer if cfg.layer is not None else lm.default_layer()
    check_layer(layer, lm.n_layers)
    windows = tokenize_windows(lm, load_corpus_text(cfg.corpus), cfg.seq_len)
    tokens, target, window_idx = real_targets(lm, windows, layer, cfg.targets, cfg.seed)
    mu = mean_residual(lm, windows, layer, cfg.mean_windows, cfg.seed)
    total = cfg.optim.problem_steps(cfg.targets, cfg.restarts)
    if len(cfg.norm_budgets) != 1:
        raise UserError("run_exp1 writes one result folder: give one norm budget (the suite runs several)")
    budget = cfg.norm_budgets[0]
    with StepBar(total, "exp1", show_progress) as bar:
        result = solve_condition(lm, layer, target, cfg.restarts, cfg.optim, cfg.seed, mu, cfg.ablation,
                                 cfg.floor_draws, progress=bar.update, cap=absolute_cap(lm, budget))
    for i, p in enumerate(result.problems):
        p["window"] = int(window_idx[i])
        p["text"] = lm.tokenizer.decode(tokens[i])
    config = resolved_config(cfg, lm, layer, "exp1")
    config.update(budget_fields(lm, budget))
    if out is not None:
        write_condition(Path(out), result, config, "Experiment 1: reachability of real activations", overwrite,
                        tokens=tokens, extra_tensors={"corpus_mean": mu})
    return result, config
