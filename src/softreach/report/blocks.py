"""Pieces every section of the report uses: figure links, absence notes, the block of one result folder."""
from __future__ import annotations

import math

import numpy as np

from .. import plots
from ..budget import budget_label
from ..config import VERDICTS
from ..stats import describe
from .format import fmt, pct, table
from .load import Condition, Run, as_float, known_share
from .summary_md import ROWS

CONVERGED_OK = 0.9  # a share converged below this is flagged in the tables


def figure(run: Run, name: str, caption: str, draw, *args, **kwargs) -> str:
    """Draw one figure into figures/NAME with draw(*args, path=..., **kwargs); return its markdown link."""
    try:
        draw(*args, path=run.root / "figures" / name, **kwargs)
    except Exception as e:  # a figure must never cost the whole report
        return f"_Figure `{name}` could not be drawn ({type(e).__name__}: {e})._"
    return f"![{caption}](figures/{name})"


def absent(what: str) -> list[str]:
    """A note that `what` is not in this run, and a blank line."""
    return [f"_Not in this run: {what}._", ""]


def _finite_stats(values: np.ndarray) -> dict | None:
    """describe() of the finite values [N]; None when there are none."""
    v = values[np.isfinite(values)]
    return describe(v) if v.size else None


def share_cell(share: float) -> str:
    """A share of problems converged, flagged '⚠' under CONVERGED_OK."""
    return f"⚠ {pct(share)}" if math.isfinite(share) and share < CONVERGED_OK else pct(share)


def converged_cell(x: Condition) -> str:
    """The folder's share converged, flagged '⚠' under CONVERGED_OK."""
    return share_cell(known_share(x.converged()))


def not_beating(x: Condition) -> bool:
    """Fewer than half of the targets (with a known copy baseline) beat it."""
    share = known_share(x.beats_copy())
    return math.isfinite(share) and share < 0.5


def steps_cell(x: Condition) -> str:
    v = x.median("steps_run")
    return f"{v:.0f}" if math.isfinite(v) else "—"


MARKS_NOTE = ("† after a cosine (and a bold share beating copy): fewer than half of the targets beat their copy "
              "baseline, the best scaled copy of the target fed as input within the same budget, so the residual "
              f"bypass alone explains that result. ⚠ before a share converged: under {100 * CONVERGED_OK:.0f}% of "
              "the targets converged (the others ran out of steps while still improving; see the verdicts in the "
              "condition's section), so the medians are lower bounds.")


def _stats_table(x: Condition) -> list[str]:
    """Median / mean / std / min / max over targets of every ROWS field the rows carry."""
    rows = []
    for label, key, *digits in ROWS:  # optional third item: decimal places (default 4)
        st = _finite_stats(x.column(key))
        if st is not None:
            rows.append([label] + [fmt(st[k], *digits) for k in ("median", "mean", "std", "min", "max")])
    return table(["metric", "median", "mean", "std", "min", "max"], rows)


def _budget_phrase(x: Condition) -> str:
    if x.free:
        return "free input norm (no budget)"
    cap = as_float(x.config.get("norm_budget"))
    text = f"input-norm budget {budget_label(x.budget)} × the mean token-embedding norm"
    if math.isfinite(cap):
        return text + f" (cap {fmt(cap, 3)})"
    if x.config.get("source_norm_budget_tokens") is not None:
        return f"inputs projected from solutions found at {text}"
    return text


def _verdict_line(x: Condition) -> str:
    """Verdict counts, share converged and share beating the copy baseline, in one sentence."""
    n = len(x.rows)
    parts = []
    counts = x.verdicts()
    if counts:
        names = list(VERDICTS) + sorted(set(counts) - set(VERDICTS))  # older folders: norm_limited too
        parts.append("Verdicts: " + ", ".join(f"{v.replace('_', '-')} {counts.get(v, 0)}" for v in names)
                     + f" of {n} (share converged {converged_cell(x)})")
    elif np.isfinite(x.converged()).any():
        parts.append(f"Share converged {converged_cell(x)}")
    beats = x.beats_copy()
    if np.isfinite(beats).any():
        k, m = int(np.nansum(beats)), int(np.isfinite(beats).sum())
        parts.append(f"beats its copy baseline: {k} of {m} ({pct(k / m)})"
                     + (" †" if not_beating(x) else ""))
    at = [r["at_budget"] for r in x.rows if isinstance(r.get("at_budget"), bool)]
    if at and not x.free:
        share = [r["share_at_budget"] for r in x.rows if isinstance(r.get("share_at_budget"), float)]
        parts.append(f"inputs at the budget: {sum(at)} of {len(at)}"
                     + (f" ({pct(sum(share) / len(share))} of their vectors on the cap)" if share else ""))
    growing = sum(r.get("norm_growing") is True for r in x.rows)
    if growing:
        parts.append(f"input norm still growing: {growing} of {len(x.rows)}")
    if not parts:
        return "_No verdicts or copy baseline recorded in this folder._"
    text = "; ".join(parts) + "."
    return text[0].upper() + text[1:]


def condition_block(run: Run, x: Condition) -> list[str]:
    """Settings line, statistics table, verdicts and final-cosine histogram of one result folder."""
    o = x.config.get("optim", {})
    out = [f"### {x.label}: {x.target_type} (`{x.path.name}/`)", "",
           f"{len(x.rows)} targets x {x.config.get('restarts', '?')} restarts, {o.get('steps', '?')} steps, "
           f"layer {x.config.get('layer', '?')}, ablation {x.config.get('ablation', '?')}, {_budget_phrase(x)}.", ""]
    if not x.rows:
        return out + ["_problems.jsonl is empty._", ""]
    out += _stats_table(x) + ["", _verdict_line(x), ""]
    if np.isfinite(x.column("cos")).any():
        out += [figure(run, f"hist_{x.name}.png", f"{x.label} final cosine", plots.cosine_histogram,
                       x.column("cos"), x.column("floor_cos"), f"{x.label}: final cosine per target"), ""]
    return out
