"""The constraint ladder: the same targets under constraints from free vectors to real tokens.

Layout of a ladder folder (each subfolder is a result folder, docs/result-folders.md):
  ladder.json           model, layer, seed, targets checksum and settings; another run is never mixed in
  free/, norm_bound_c2/, nearest_penalty_w0.1/, mixture_tau1/, mixture_tau1_argmax/, projected/, gcg/,
  causal/, projection/, random_tokens/, own_tokens/      one folder per rung setting
  frontier.json         one point per folder: fidelity, distance from the token manifold, downstream, cost
  frontier.png          fidelity against nearest-token cosine (plots.ladder.frontier_figure)
  report.md             the frontier table and figure (report.ladder.write_ladder_report)

Every discrete result is evaluated from its token ids alone (an ordinary forward from input_ids); its
folder stores the ids as `solution_tokens` and `soft_prompt` = their embedding rows. `tokens` holds the
targets' own tokens, only where the targets are real-text residuals (`softreach verify` checks they produce them).
Each problems.jsonl row carries the rung, its setting, the fidelity metrics (with and without position
0), the distance from the manifold (nearest-token cosine, norm ratio), the downstream KL and top-1
agreement, the share of the source tokens recovered (discrete rungs on real targets), and the cost: forward
passes spent producing the result (an optimiser step, a GCG gradient pass or candidate = one; causal: positions
processed / T; the ladder's evaluation is not counted; projection counts the free rung's) and
seconds per target (batched rungs: wall time / N).

Modules: config (LadderSettings, LadderConfig), rungs (one rung setting: names, shared starts, run_rung), runner
(run_ladder, run_ladder_config).
"""
_API = {"RungOutput": "rungs", "rung_settings": "rungs", "run_rung": "rungs", "setting_name": "rungs",
        "start_ids": "rungs", "start_vectors": "rungs", "evaluate_output": "runner", "run_ladder": "runner",
        "run_ladder_config": "runner"}
__all__ = sorted(_API)


def __getattr__(name: str):  # imported on first use, so the ladder's settings (ladder.config) load without torch
    if name not in _API:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(f".{_API[name]}", __name__), name)
