"""softreach: soft prompt reachability of residual-stream targets.

Quick use from Python::

    import softreach as sr
    lm = sr.load_model()                        # the embedded SmolLM2-135M, or any hub id / path
    windows = sr.tokenize_windows(lm, sr.load_corpus_text(), seq_len=20)
    tokens, target, _ = sr.real_targets(lm, windows, layer=15, count=4, seed=0)
    res = sr.solve_condition(lm, 15, target, restarts=1, optim=sr.OptimConfig(), seed=0,
                             cap=sr.absolute_cap(lm, 1.0))  # inputs within 1 x the mean token norm
    print(res.summary["cos_no_pos0"]["median"], res.summary["copy_cos_no_pos0"]["median"])

Soft slots around fixed text (the residuals of text the soft vectors do not own)::

    cfg = sr.SteerConfig(layout="prefix", soft=20, after=100, steer="last:5", targets=4)
    res, config = sr.run_steer(cfg, out=None, lm=lm)["results"][""]   # out=None: in memory, no folder
    print(res.summary["cos"]["mean"], res.summary["own_cos"]["mean"], res.summary["floor_cos"]["mean"])

Names are imported on first use, so `import softreach` (and the command line's help) stays fast.
"""
__version__ = "0.1.0"

_API = {  # name -> module that defines it
    "absolute_cap": "budget", "mean_token_norm": "budget",
    "ConditionResult": "condition", "achieved_residuals": "condition", "solve_condition": "condition",
    "OptimConfig": "config", "RunConfig": "config", "SuiteConfig": "config", "LadderSettings": "ladder.config",
    "copy_baseline": "copy_route", "load_corpus_text": "corpus", "UserError": "errors",
    "real_targets": "targets", "run_exp1": "experiments.suite", "run_suite": "experiments.suite",
    "random_token_floor": "floor", "problem_metrics": "metrics", "reachability_loss": "metrics",
    "LoadedModel": "models", "load_model": "models", "wrap_model": "models",
    "initial_prompts": "optimize", "optimise": "optimize",
    "all_layer_residuals": "residual", "residual_at": "residual",
    "residuals_of_tokens": "targets", "tokenize_windows": "targets",
    "SteerConfig": "steer.config", "run_steer": "steer.run", "TextFrame": "frame", "frame_residual": "frame",
    "frame_residual_of_tokens": "frame", "verify": "verification", "FolderCheck": "verification",
}
__all__ = sorted(_API)


def __getattr__(name: str):
    if name not in _API:
        raise AttributeError(f"module 'softreach' has no attribute {name!r}")
    import importlib

    value = getattr(importlib.import_module(f".{_API[name]}", __name__), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(list(globals()) + __all__)
