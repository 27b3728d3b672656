"""softreach: soft prompt reachability of residual-stream targets.

Quick use from Python::

    import softreach as sr
    lm = sr.load_model()                        # the embedded SmolLM2-135M, or any hub id / path
    windows = sr.tokenize_windows(lm, sr.load_corpus_text(), seq_len=20)
    tokens, target, _ = sr.real_targets(lm, windows, layer=15, count=4, seed=0)
    res = sr.solve_condition(lm, 15, target, restarts=1, optim=sr.OptimConfig(), seed=0,
                             cap=sr.absolute_cap(lm, 1.0))  # inputs within 1 x the mean token norm
    print(res.summary["cos_no_pos0"]["median"], res.summary["copy_cos_no_pos0"]["median"])
"""
__version__ = "0.1.0"

from .budget import absolute_cap, mean_token_norm  # noqa: E402
from .condition import ConditionResult, achieved_residuals, solve_condition  # noqa: E402
from .config import RunConfig  # noqa: E402
from .copy_baseline import copy_baseline  # noqa: E402
from .corpus import load_corpus_text  # noqa: E402
from .errors import UserError  # noqa: E402
from .exp1 import real_targets, run_exp1  # noqa: E402
from .floor import random_token_floor  # noqa: E402
from .metrics import problem_metrics, reachability_loss  # noqa: E402
from .models import LoadedModel, load_model, wrap_model  # noqa: E402
from .optimize import OptimConfig, initial_prompts, optimise  # noqa: E402
from .residual import all_layer_residuals, residual_at  # noqa: E402
from .targets import residuals_of_tokens, tokenize_windows  # noqa: E402
