"""The constraint ladder's frontier figure: fidelity against distance from the token manifold."""
from __future__ import annotations

import os
from pathlib import Path

from .axes import _cosine_axis, _new_figure, _save

_STYLE = {  # rung -> (colour, marker, short label beside the point)
    "free": ("C0", "o", "free"), "norm_bound": ("C1", "o", "c="), "nearest_penalty": ("C2", "o", "w="),
    "mixture": ("C4", "o", "τ="), "mixture_argmax": ("C4", "s", "argmax τ="), "projected": ("C3", "s", "PEZ"),
    "gcg": ("C5", "D", "GCG"), "causal": ("C6", "P", "causal"), "projection": ("C7", "s", "projection"), "random_tokens": ("0.4", "v", "random"),
    "own_tokens": ("C2", "*", "own"),
}
_LABEL = {"free": "free vectors", "norm_bound": "norm bound (c x mean token norm)",
          "nearest_penalty": "nearest-token penalty (weight w)", "mixture": "token mixture (continuous, τ)",
          "mixture_argmax": "token mixture → argmax tokens", "projected": "projected steps (PEZ) → tokens",
          "gcg": "GCG token search", "causal": "causal token search", "projection": "free solution → nearest tokens",
          "random_tokens": "random tokens", "own_tokens": "the target's own tokens"}


def _style_key(p: dict) -> str:
    return "mixture_argmax" if p["rung"] == "mixture" and p["discrete"] else p["rung"]


def frontier_figure(frontier: dict, path: str | os.PathLike) -> Path:
    """Fidelity (left: cosine; right: next-token KL) against nearest-token cosine, one point per rung setting.

    `frontier` is a ladder folder's frontier.json (report.ladder.load_frontier). Reference lines: the
    random-token floor and the target's own tokens (left), random tokens (right). Discrete results all
    sit at nearest-token cosine 1; each point carries a short label.
    """
    f = frontier
    points = [p for p in f["points"] if p["nearest_cos"] is not None]
    no_pos0 = bool(points) and points[0]["cos_no_pos0"] is not None
    ckey, kkey = ("cos_no_pos0", "kl_no_pos0") if no_pos0 else ("cos", "kl")
    where = " (without position 0)" if no_pos0 else ""
    fig, (ax, kax) = _new_figure(2, width=6.4, height=5.2)
    top = 1 - 1e-4  # cosines above this (the own tokens: ~1 - 1e-7) are drawn at it, so the rest stays readable
    discrete = sorted((p for p in points if p["discrete"]), key=lambda p: p[ckey])
    left = {id(p) for p in discrete[1::2]}  # labels of the stacked discrete points alternate sides
    seen = set()
    for p in points:
        key = _style_key(p)
        colour, marker, short = _STYLE.get(key, ("k", "x", key))
        label = None if key in seen else _LABEL.get(key, key)
        seen.add(key)
        size = 170 if marker == "*" else 60
        text = short + (f"{p['setting']:g}" if short.endswith("=") else "")
        offset, align = ((-7, -3), "right") if id(p) in left else ((7, -3), "left")
        for a, y in ((ax, min(p[ckey], top)), (kax, p[kkey])):
            if y is None or (a is kax and y <= 0):
                continue
            a.scatter(p["nearest_cos"], y, color=colour, marker=marker, s=size, zorder=3, edgecolor="black",
                      linewidth=0.5, label=label if a is ax else None)
            a.annotate(text, (p["nearest_cos"], y), textcoords="offset points", xytext=offset, ha=align, fontsize=7)
    floor = (f.get("floor") or {}).get(ckey)
    own = next((p for p in points if p["rung"] == "own_tokens"), None)
    values = [min(p[ckey], top) for p in points] + ([floor] if floor is not None else [])
    if floor is not None:
        ax.axhline(floor, linestyle="--", color="black", linewidth=1.2, label=f"random-token floor ({floor:.3f})")
    if own is not None:
        note = " drawn at 0.9999" if own[ckey] > top else ""
        ax.axhline(min(own[ckey], top), linestyle=":", color="C2", linewidth=1.5,
                   label=f"own tokens (cos {own[ckey]:.6f}{note})")
    _cosine_axis(ax, values, "y", f"cosine to target{where}")
    ax.set_title("Fidelity vs distance from the token manifold", fontsize=10)
    rnd = next((p for p in points if p["rung"] == "random_tokens"), None)
    if rnd is not None and rnd[kkey]:
        kax.axhline(rnd[kkey], linestyle="--", color="0.4", linewidth=1.2, label=f"random tokens' KL ({rnd[kkey]:.3g})")
    if any(p[kkey] and p[kkey] > 0 for p in points):
        kax.set_yscale("log")
    kax.set_ylabel(f"next-token KL(target || reached), nats{where}")
    kax.set_title("Functional check: next-token KL (lower is better; own tokens: 0)", fontsize=10)
    xs = [p["nearest_cos"] for p in points]
    lo = min(xs) if xs else 0.0
    for a in (ax, kax):
        a.set_xlim(lo - 0.05 * (1.05 - lo), 1.0 + 0.12 * (1.05 - lo))  # room for the labels right of x = 1
        a.set_xlabel("nearest-token cosine of the inputs (mean over positions; 1 = real tokens)")
        a.grid(alpha=0.3)
    fig.legend(loc="outside lower center", ncols=4, fontsize=8)
    model = (f.get("model") or {}).get("source") or "?"
    shape = f.get("targets_shape") or ["?", "?"]
    fig.suptitle(f"Constraint ladder: {Path(str(model)).name}, layer {f.get('layer')}, "
                 f"{shape[0]} targets x {shape[1]} positions (means over targets)", fontsize=11)
    return _save(fig, path)
