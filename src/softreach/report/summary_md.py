"""The short human summary of one result folder (summary.md), and the statistics rows the report shares."""
from __future__ import annotations

from .format import fmt, pct, table


# rows of a per-condition statistics table: (label, problems.jsonl key[, decimal places]); the report
# shows the same rows; rows absent from a folder are left out
ROWS: list[tuple] = [
    ("cosine (mean over positions)", "cos"),
    ("cosine without position 0", "cos_no_pos0"),
    ("MSE", "mse"),
    ("MSE without position 0", "mse_no_pos0"),
    ("centred cosine", "centred_cos"),
    ("FVU", "fvu"),
    ("FVU without position 0", "fvu_no_pos0"),
    ("random-token floor (cosine)", "floor_cos"),
    ("random-token floor without position 0", "floor_cos_no_pos0"),
    ("the text's own tokens in the slots (cosine)", "own_cos"),
    ("the source tokens in the slots (cosine)", "source_cos"),
    ("the source tokens with one slot's token random (cosine)", "near_miss_cos"),
    ("gain over the text's own tokens", "gain_over_own"),
    ("next-token KL to the target's continuation (nats)", "kl"),
    ("next-token top-1 agreement with the target's continuation", "top1"),
    ("the text's own tokens: next-token KL", "own_kl"),
    ("the text's own tokens: top-1 agreement", "own_top1"),
    ("copy baseline (cosine)", "copy_cos"),
    ("copy baseline without position 0", "copy_cos_no_pos0"),
    ("copy baseline scale a (input = a · target)", "copy_scale"),
    ("convergence (cos change over last 20% of steps)", "convergence_delta"),
    ("restart spread (max - min cos)", "restart_spread"),
    ("steps run", "steps_run", 1),
    ("loss gain per 100 steps at the end", "gain_per_100_steps"),
    ("input-norm growth per 100 steps at the end (relative)", "norm_growth_per_100_steps"),
    ("largest input vector norm", "input_norm_max"),
    ("mean input vector norm", "input_norm_mean"),
]


def summary_table(summary: dict) -> str:
    """The statistics table of summary.md: one row per ROWS field present in the summary (NaN as "nan")."""
    rows = [[label] + [fmt(summary[key][k], missing=None) for k in ("median", "mean", "std", "min", "max")]
            for label, key, *_ in ROWS if key in summary]
    return "\n".join(table(["metric", "median", "mean", "std", "min", "max"], rows))


def summary_markdown(title: str, config: dict, summary: dict) -> str:
    """summary.md of a result folder: settings, verdict shares and time, then the statistics table."""
    m = config["model"]
    o = config["optim"]
    head = [
        f"# {title}",
        "",
        f"- model: `{m['source']}`" + (f" (`{m['gguf_file']}`)" if m.get("gguf_file") else "")
        + f", {m.get('n_layers', '?')} layers, d_model {m.get('d_model', '?')}",
        f"- layer {config['layer']}, ablation {config['ablation']}, {_shape_text(config)}, "
        f"{summary['n_targets']} targets x {config['restarts']} restarts, {o['steps']} steps, "
        f"Adam lr {o['lr']}, init N(0, {o['init_scale']}^2), seed {config['seed']}",
        f"- norm budget: {_budget_text(config)}; converged: {_share(summary, 'share_converged')}, "
        f"beating the copy baseline: {_share(summary, 'share_beats_copy')}",
        f"- time: {summary['seconds']:.1f} s of optimisation, "
        f"{summary['problem_steps_per_second']:.1f} problem-steps/s on {config['device']}",
        "",
    ]
    return "\n".join(head) + summary_table(summary) + "\n"


def _shape_text(config: dict) -> str:
    if "soft" not in config:
        return f"T={config['seq_len']}"
    return (f"K={config['soft']} soft slots between {config['n_before']} and {config['n_after']} fixed tokens, "
            f"{len(config['target_positions'])} steered position(s) ({config['steer']}"
            + (f", distance {config['distance']}" if config.get("distance") else "") + ")")


def _budget_text(config: dict) -> str:
    if config.get("norm_budget") is None:
        return "free"
    return f"{config.get('norm_budget_tokens', '?')} x the mean token-embedding norm ({config['norm_budget']:.4g})"


def _share(summary: dict, key: str) -> str:
    return pct(summary[key], missing="-") if key in summary else "-"
