"""The figures of the experiment sections of the report, one PNG per function.

Every function takes plain numbers (numpy arrays, lists, dicts) and a destination path, writes the PNG
atomically and returns the path. Wherever a residual-stream cosine is plotted, the random-token floor is
a dashed line.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np

from .axes import (_by_group, _carry_forward, _cosine_axis, _finite, _floor_line, _label_axes, _new_figure,
                   _quartiles, _save, from_nines, to_nines)


def cosine_histogram(cos, floor_cos, title: str, path) -> Path:
    """Final cosine per target (best restart) against the random-token floor.

    Left: both distributions on the nines axis. Right: the reached cosines alone, linear and zoomed.
    cos, floor_cos: [N].
    """
    cos, floor_cos = _finite(cos), _finite(floor_cos)
    floor = float(np.median(floor_cos)) if floor_cos.size else None
    fig, (ax, zoom) = _new_figure(2, width=5.6)
    z = to_nines(np.concatenate([cos, floor_cos]))
    lo, hi = (z.min(), z.max()) if z.max() > z.min() else (z.min() - 0.05, z.max() + 0.05)
    edges = from_nines(np.linspace(lo, hi, 41))
    ax.hist(cos, bins=edges, color="C0", label=f"soft prompt, best restart (median {np.median(cos):.4f})")
    if floor_cos.size:
        ax.hist(floor_cos, bins=edges, color="0.6", alpha=0.7, label="random tokens, per target")
    _floor_line(ax, floor, "v", label=f"random-token floor (median {floor:.4f})" if floor is not None else None)
    if floor is None:
        ax.plot([], [], linestyle="--", color="black", label="random-token floor: not recorded")
    ax.set_ylabel("targets (count)")
    ax.set_title("Reached cosine vs random-token floor")
    ax.legend(fontsize=8, loc="upper center")
    _cosine_axis(ax, np.concatenate([cos, floor_cos]), "x", "final cosine")
    ax.yaxis.get_major_locator().set_params(integer=True)

    zoom.hist(cos, bins=min(30, max(5, cos.size // 2)), color="C0")
    zoom.axvline(np.median(cos), color="C3", linewidth=1.5, label=f"median {np.median(cos):.4f}")
    zoom.ticklabel_format(axis="x", useOffset=False)
    zoom.yaxis.get_major_locator().set_params(integer=True)
    zlo, zhi = zoom.get_xlim()
    if floor is not None and zlo <= floor <= zhi:
        _floor_line(zoom, floor, "v")
    elif floor is not None:  # say where it is rather than squash the zoom
        zoom.plot([], [], linestyle="--", color="black", label=f"random-token floor {floor:.4f} (off this axis)")
    zoom.set_xlabel("final cosine (linear, zoomed)")
    zoom.set_ylabel("targets (count)")
    zoom.set_title("Reached cosine, zoomed")
    zoom.legend(fontsize=8)
    fig.suptitle(title)
    return _save(fig, path)


def loss_curves(curves: dict[str, np.ndarray], path, title: str = "Loss during optimisation") -> Path:
    """Loss per step: median and interquartile band over targets. curves: label -> [N, S] (best restart).

    Steps after a target stopped early are NaN in the curves: the target keeps its last loss there, and each
    curve ends at the last step any of its targets ran.
    """
    import warnings

    fig, (ax,) = _new_figure(1, width=8.5, height=4.6)
    for i, (label, c) in enumerate(curves.items()):
        c = _carry_forward(np.clip(np.asarray(c, dtype=np.float64), 1e-12, None))  # [N, S']
        if not c.size:
            continue
        with warnings.catch_warnings():  # a step no target reached: NaN, not a warning
            warnings.simplefilter("ignore", RuntimeWarning)
            q25, q50, q75 = _quartiles(c)
        steps = np.arange(1, c.shape[1] + 1)
        ax.plot(steps, q50, color=f"C{i % 10}", linewidth=1.6, marker="o" if c.shape[1] == 1 else None,
                label=f"{label} (n={c.shape[0]}" + (", stopped after step 1)" if c.shape[1] == 1 else ")"))
        ax.fill_between(steps, q25, q75, color=f"C{i % 10}", alpha=0.18, linewidth=0)
    ax.set_yscale("log")
    ax.set_xlabel("optimisation step")
    ax.set_ylabel("loss = mean(1 − cos) + w·MSE (log scale)")
    ax.set_title(f"{title}\nmedian over targets (best restart; a stopped target keeps its last loss), "
                 "band = interquartile range")
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    return _save(fig, path)


def cosine_by_position(series: dict[str, tuple[np.ndarray, float | None]], path) -> Path:
    """Cosine at each position: median and interquartile band over targets, floor dashed in the same colour.

    series: label -> (cos_per_position [N, T], median random-token floor or None).
    """
    fig, (ax,) = _new_figure(1, width=8.5, height=4.8)
    shown = []
    for i, (label, (cpp, floor)) in enumerate(series.items()):
        cpp = np.asarray(cpp, dtype=np.float64)  # [N, T]
        q25, q50, q75 = _quartiles(cpp)
        pos = np.arange(cpp.shape[1])
        color = f"C{i % 10}"
        ax.plot(pos, q50, marker="o", markersize=3, color=color, label=label)
        ax.fill_between(pos, q25, q75, color=color, alpha=0.18, linewidth=0)
        _floor_line(ax, floor, color=color, label=None, alpha=0.8)
        shown += [q25, q75, [floor if floor is not None else np.nan]]
    ax.plot([], [], linestyle="--", color="black", label="random-token floor (median, same colour)")
    _label_axes(ax, "Cosine to the target by position\nmedian over targets, band = interquartile range",
                "position in the prompt (token index)", loc="center left", bbox_to_anchor=(1.01, 0.5))
    _cosine_axis(ax, np.concatenate(shown), "y", "cosine at the position")
    return _save(fig, path)


def alpha_curve(alpha, pair, cos, floor_cos, path) -> Path:
    """Exp 3: reached cosine against the interpolation coefficient alpha (target = a*A + (1-a)*B).

    alpha, pair, cos, floor_cos: [M], one per target.
    """
    alpha, pair = np.asarray(alpha, dtype=np.float64), np.asarray(pair)
    cos, floor_cos = np.asarray(cos, dtype=np.float64), np.asarray(floor_cos, dtype=np.float64)
    fig, (ax,) = _new_figure(1, width=7.0, height=4.6)
    ax.axvspan(0, 1, color="0.93", label="interpolation (0 ≤ α ≤ 1)")
    for k, p in enumerate(np.unique(pair)):
        m = pair == p
        order = np.argsort(alpha[m])
        ax.plot(alpha[m][order], cos[m][order], color="0.55", linewidth=0.7, alpha=0.6,
                label="one pair of real targets" if k == 0 else None)
    xs, q25, q50, q75 = _by_group(alpha, cos)
    ax.fill_between(xs, q25, q75, color="C0", alpha=0.25, linewidth=0)
    ax.plot(xs, q50, color="C0", marker="o", linewidth=2, label="median over pairs (band: IQR)")
    fx, _, f50, _ = _by_group(alpha, floor_cos)
    ax.plot(fx, f50, color="black", linestyle="--", marker=".", label="random-token floor (median)")
    _label_axes(ax, "Exp 3: reachability along lines through pairs of real targets",
                "α  (target = α·A + (1 − α)·B; 0 = B, 1 = A)", loc="center left", bbox_to_anchor=(1.01, 0.5))
    _cosine_axis(ax, np.concatenate([cos, f50]), "y", "final cosine")
    return _save(fig, path)


def corruption_curves(variants: dict[str, tuple], path) -> Path:
    """Exp 5: reached cosine against the corrupted fraction, one line per variant.

    variants: label -> (fraction [M], cos [M], floor_cos [M]).
    """
    fig, (ax,) = _new_figure(1, width=7.0, height=4.6)
    shown = []
    for i, (label, (frac, cos, floor_cos)) in enumerate(variants.items()):
        color = f"C{i % 10}"
        xs, q25, q50, q75 = _by_group(frac, cos)
        ax.fill_between(xs, q25, q75, color=color, alpha=0.2, linewidth=0)
        ax.plot(xs, q50, color=color, marker="o", linewidth=2, label=f"{label}: median (band: IQR)")
        fx, _, f50, _ = _by_group(frac, floor_cos)
        ax.plot(fx, f50, color=color, linestyle="--", linewidth=1.3, label=f"{label}: random-token floor (median)")
        shown += [q25, q75, f50]
    _label_axes(ax, "Exp 5: reachability of corrupted real targets",
                "fraction of the target corrupted (0 = real target, 1 = fully replaced)")
    _cosine_axis(ax, np.concatenate(shown), "y", "final cosine")
    return _save(fig, path)


def ablation_comparison(variants: dict[str, tuple[np.ndarray, float | None]], path, paired: bool = True) -> Path:
    """Exp 4: final cosine per target for each model variant (box, points, floor as a dashed segment).

    variants: label -> (cos [N], median random-token floor or None). With `paired`, the same target
    index is joined across variants (the variants share targets, in the same order).
    """
    labels = list(variants)
    data = [_finite(variants[k][0]) for k in labels]
    fig, (ax,) = _new_figure(1, width=7.2, height=4.8)
    rng = np.random.default_rng(0)
    n = {d.size for d in data}
    if paired and len(n) == 1 and len(data) > 1:
        ax.plot(np.arange(len(data)), np.stack(data), color="0.7", linewidth=0.5, alpha=0.5, zorder=1)
    for i, d in enumerate(data):
        ax.scatter(i + rng.uniform(-0.12, 0.12, d.size), d, s=10, color=f"C{i % 10}", alpha=0.7, zorder=3)
    ax.boxplot(data, positions=np.arange(len(data)), widths=0.5, showfliers=False, zorder=2,
               medianprops={"color": "black", "linewidth": 1.5})
    for i, k in enumerate(labels):
        floor = variants[k][1]
        if floor is not None and np.isfinite(floor):
            ax.hlines(floor, i - 0.35, i + 0.35, linestyles="--", color="black", linewidth=1.3,
                      label="random-token floor\n(median, same model)" if i == 0 else None)
            ax.annotate(f"floor {floor:.3f}", (i, floor), textcoords="offset points", xytext=(0, 3),
                        ha="center", fontsize=8)
    ax.set_xticks(np.arange(len(labels)), [k.replace(" (", "\n(") for k in labels])
    ax.set_xlabel("model variant")
    ax.set_title("Exp 4: reachability of the same real targets under ablation\n"
                 "box = quartiles, points = targets, grey lines join the same target")
    ax.grid(True, axis="y", alpha=0.3)
    if ax.get_legend_handles_labels()[0]:
        ax.legend(fontsize=8, loc="center left", bbox_to_anchor=(1.01, 0.5))
    floors = [v[1] if v[1] is not None else np.nan for v in variants.values()]
    _cosine_axis(ax, np.concatenate(data + [floors]), "y", "final cosine")
    return _save(fig, path)


def embedding_distance(analysis: dict, path) -> Path:
    """Exp 1b: cosine of each optimised input vector to its nearest token embedding, and PCA error by k."""
    values = _finite(analysis.get("nearest_cos_values", []))
    pca = analysis.get("pca_error") or {}
    fig, axes = _new_figure(2 if pca else 1, width=5.8)
    ax = axes[0]
    if values.size:
        ax.hist(values, bins=40, color="C0", label=f"optimised input vectors (n={values.size})")
        ax.axvline(np.median(values), color="C3", linewidth=1.5, label=f"median {np.median(values):.3f}")
    ax.axvline(0.9, color="black", linestyle="--", linewidth=1.3, label="cos = 0.9 (close to a real token)")
    ax.set_xlabel("cosine to the nearest token embedding (input space)")
    ax.set_ylabel("vectors (count)")
    ax.set_title("Distance of optimised inputs to the token embeddings")
    ax.legend(fontsize=8)
    if pca:
        ax2 = axes[1]
        for i, (label, errs) in enumerate(pca.items()):
            ks = sorted(errs, key=float)
            ax2.plot([float(k) for k in ks], [errs[k] for k in ks], marker="o", color=f"C{i % 10}",
                     label={"soft": "optimised inputs", "tokens": "token embeddings"}.get(label, label))
        ax2.set_xscale("log")
        _label_axes(ax2, "Reconstruction from the top-k embedding PCA directions",
                    "k = top principal directions of the embedding matrix (log scale)",
                    ylabel="relative reconstruction error ||x - x_k|| / ||x||")
    return _save(fig, path)


def trajectories(traj: dict, floor: float | None, path) -> Path:
    """Residuals produced by the soft prompt vs by the target's real tokens, at every layer.

    traj: trajectories.json ({"layers", "target_layer", "problems", "cos_soft_vs_tokens", "norm_soft",
    "norm_tokens"}, each per-problem list [P][layers]). floor: median random-token floor at the target layer.
    """
    from matplotlib.ticker import FuncFormatter, ScalarFormatter

    layers = np.asarray(traj["layers"], dtype=np.float64)
    cos = np.asarray(traj["cos_soft_vs_tokens"], dtype=np.float64)  # [P, layers]
    target = traj.get("target_layer")
    has_norms = bool(traj.get("norm_soft")) and bool(traj.get("norm_tokens"))
    fig, axes = _new_figure(2 if has_norms else 1, width=6.0)
    ax = axes[0]
    for row in cos:
        ax.plot(layers, row, color="C0", linewidth=0.7, alpha=0.35)
    ax.plot(layers, np.nanmedian(cos, 0), color="C0", linewidth=2.2, marker="o", markersize=3,
            label=f"median over {cos.shape[0]} targets (thin: each target)")
    if target is not None:
        ax.axvline(target, color="C3", linestyle=":", linewidth=1.5, label=f"target layer {target}")
    _floor_line(ax, floor, label=f"random-token floor at layer {target}")
    _label_axes(ax, "Soft-prompt residual vs the real tokens' residual",
                "layer (hidden_states index; 0 = embeddings)")
    _cosine_axis(ax, np.append(cos.ravel(), floor if floor is not None else np.nan), "y", "cosine, mean over positions")
    if has_norms:
        ax2 = axes[1]
        for key, color, label in (("norm_soft", "C0", "soft prompt"), ("norm_tokens", "C1", "real tokens")):
            n = np.asarray(traj[key], dtype=np.float64)  # [P, layers]
            for row in n:
                ax2.plot(layers, row, color=color, linewidth=0.7, alpha=0.3)
            ax2.plot(layers, np.nanmedian(n, 0), color=color, linewidth=2.2, label=f"{label} (median)")
        if target is not None:
            ax2.axvline(target, color="C3", linestyle=":", linewidth=1.5, label=f"target layer {target}")
        ax2.set_yscale("log")
        ax2.yaxis.set_major_formatter(ScalarFormatter())
        ax2.yaxis.set_minor_formatter(FuncFormatter(lambda v, _: f"{v:g}" if f"{v:e}"[0] in "25" else ""))
        _label_axes(ax2, "Residual norm by layer", "layer (hidden_states index; 0 = embeddings)",
                    ylabel="residual norm, mean over positions (log scale)")
    return _save(fig, path)
