"""The constraint ladder (issue 5): the same targets under constraints from free vectors to real tokens.

Layout of a ladder folder (each subfolder follows the result-folder contract of DESIGN.md):
  ladder.json           model, layer, seed, targets checksum and settings; another run is never mixed in
  free/, norm_bound_c2/, nearest_penalty_w0.1/, mixture_tau1/, mixture_tau1_argmax/, projected/, gcg/,
  projection/, random_tokens/, own_tokens/      one folder per rung setting
  frontier.json         one point per folder: fidelity, distance from the token manifold, downstream, cost
  frontier.png          fidelity against nearest-token cosine (frontier_figure)
  report.md             the frontier table and figure (write_ladder_report; also `softreach report FOLDER`)

Every discrete result is evaluated from its token ids alone (an ordinary forward from input_ids); its
folder stores the ids as `solution_tokens` and `soft_prompt` = their embedding rows. `tokens` holds the
targets' own tokens, only where the targets are real-text residuals (verify_run checks they produce them).
Each problems.jsonl row carries the rung, its setting, the fidelity metrics (with and without position
0), the distance from the manifold (nearest-token cosine, norm ratio), the downstream KL and top-1
agreement, and the cost: forward passes spent producing the result (an optimiser step, a GCG gradient
pass or candidate = one; the ladder's evaluation is not counted; projection counts the free rung's) and
seconds per target (batched rungs: wall time / N).
"""
from __future__ import annotations

import argparse
import json
import math
import shutil
import time
from pathlib import Path

import numpy as np
import torch

from .condition import ConditionResult, achieved_residuals, metric_rows, summarise
from .constraints import RUNGS, LadderSettings, RungOutput, TokenTable, rung_settings, run_rung, token_table
from .downstream import next_token_agreement
from .errors import UserError
from .floor import random_token_floor
from .manifold import nearest_tokens
from .metrics import problem_metrics
from .models import LoadedModel
from .store import atomic_write_text, dumps_json
from .targets import residuals_of_tokens

MARKER = "ladder.json"
TITLE = "Constrained reachability"

# what frontier.json keeps per folder: the mean over targets of these row fields
POINT_FIELDS = ("cos", "cos_no_pos0", "mse", "mse_no_pos0", "nearest_cos", "nearest_cos_no_pos0", "norm_ratio",
                "kl", "kl_no_pos0", "top1", "top1_no_pos0", "forward_passes", "seconds", "floor_cos",
                "floor_cos_no_pos0")


# ---------------------------------------------------------------- evaluating one output

def evaluate_output(lm: LoadedModel, layer: int, targets: torch.Tensor, output: RungOutput, floor: dict,
                    table: TokenTable) -> ConditionResult:
    """Metrics of one rung output against targets [N, T, d]; discrete outputs are run from their ids."""
    start = time.perf_counter()
    if output.ids is not None:
        achieved = residuals_of_tokens(lm, output.ids, layer)  # [N, T, d] ordinary forward from input_ids
    else:
        achieved = achieved_residuals(lm, output.inputs, layer)
    m = problem_metrics(achieved, targets)
    rows = metric_rows(m, torch.arange(targets.shape[0]), floor)
    near = nearest_tokens(output.inputs, table.emb, None)  # over the ordinary tokens: [N, T] each
    norm_ratio = output.inputs.float().norm(dim=-1) / table.mean_norm  # [N, T]
    down = next_token_agreement(lm, layer, achieved, targets)
    for i, rec in enumerate(rows):
        rec["nearest_cos"] = float(near["cos"][i].mean())
        rec["norm_ratio"] = float(norm_ratio[i].mean())
        if targets.shape[1] > 1:
            rec["nearest_cos_no_pos0"] = float(near["cos"][i, 1:].mean())
        for key in ("kl", "kl_no_pos0", "top1", "top1_no_pos0"):
            if key in down:
                rec[key] = float(down[key][i])
        rec["forward_passes"] = int(output.forward_passes[i])
        rec["seconds"] = float(output.seconds[i])
    curves = output.loss_curve is not None
    return ConditionResult(
        soft_prompt=output.inputs.float(), target=targets.float(), all_soft_prompts=output.inputs.float().unsqueeze(1),
        loss_curve=output.loss_curve.unsqueeze(1) if curves else None,
        cos_curve=output.cos_curve.unsqueeze(1) if curves else None,
        problems=rows, summary=summarise(rows, 0, sum(output.seconds)), seconds=time.perf_counter() - start)


# ---------------------------------------------------------------- the ladder folder

def _marker(lm: LoadedModel, layer: int, targets: torch.Tensor, seed: int, settings: LadderSettings) -> dict:
    return {"model": {"source": lm.source, "gguf_file": lm.gguf_file}, "layer": layer, "seed": seed,
            "targets_shape": list(targets.shape), "targets_checksum": float(targets.double().abs().sum()),
            "settings": settings.to_dict()}


def _prepare(out: Path, marker: dict, overwrite: bool) -> None:
    """Create the ladder folder, or accept an existing one made with the same marker (finished folders are kept)."""
    if out.exists() and overwrite:
        shutil.rmtree(out)
    if out.exists():
        path = out / MARKER
        if not path.is_file():
            if out.is_dir() and not any(out.iterdir()):
                atomic_write_text(path, dumps_json(marker))
                return
            raise UserError(f"{out} exists and is not a ladder folder; choose another --out or pass --overwrite")
        try:
            stored = json.loads(path.read_text())
        except ValueError:
            raise UserError(f"{path} is unreadable; pass --overwrite to start again") from None
        if json.loads(json.dumps(marker)) != stored:
            raise UserError(f"{out} was made with other settings or targets; use another --out or --overwrite")
        return
    out.mkdir(parents=True)
    atomic_write_text(out / MARKER, dumps_json(marker))


def _load_output(folder: Path) -> RungOutput:
    """A finished folder's output again (for the rungs that build on it when resuming)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "tensors.safetensors"))
    rows = [json.loads(line) for line in (folder / "problems.jsonl").read_text().splitlines() if line]
    return RungOutput(tensors["soft_prompt"], tensors.get("solution_tokens"),
                      [r["forward_passes"] for r in rows], [r["seconds"] for r in rows])


def _ordered(rungs: list[str]) -> list[str]:
    """Requested rungs, checked and deduplicated, in ladder order (free before projection, projected before gcg)."""
    unknown = [r for r in rungs if r not in RUNGS]
    if unknown:
        raise UserError(f"unknown rung {unknown[0]!r}: choose from {', '.join(RUNGS)}")
    if not rungs:
        raise UserError("no rungs given")
    return [r for r in RUNGS if r in rungs]


def run_ladder(lm: LoadedModel, layer: int, targets: torch.Tensor, tokens: torch.Tensor | None, rungs: list[str],
               settings: LadderSettings, seed: int, out_dir, overwrite: bool = False, show_progress: bool = False,
               model_spec: str | None = None) -> Path:
    """Run every setting of every rung on targets [N, T, d] into result folders under out_dir.

    tokens [N, T]: the targets' own tokens when the targets are real-text residuals (else None; then
    own_tokens cannot run). A folder already written by an identical earlier call is kept (resume).
    Writes frontier.json at the end and returns out_dir.
    """
    from .config import RunConfig
    from .exp1 import resolved_config, write_condition
    from .progress import StepBar

    rungs = _ordered(list(rungs))
    if "own_tokens" in rungs and tokens is None:
        raise UserError("the own_tokens rung needs targets taken from text (their tokens)")
    if tokens is not None and tokens.shape != targets.shape[:2]:
        raise UserError(f"tokens {tuple(tokens.shape)} do not match targets {tuple(targets.shape)}")
    out = Path(out_dir)
    _prepare(out, _marker(lm, layer, targets, seed, settings), overwrite)
    table = token_table(lm)
    n, t, _ = targets.shape
    floor = random_token_floor(lm, targets, layer, seed, settings.floor_draws) if settings.floor_draws else {}
    made: dict[str, RungOutput] = {}

    def need(rung: str) -> RungOutput:
        """The output a later rung builds on: from this run, from its folder, or computed now (not written)."""
        name = rung_settings(rung, settings)[0][0]
        if name not in made:
            if (out / name / "problems.jsonl").is_file():
                made[name] = _load_output(out / name)
            else:
                made.update(run_rung(lm, layer, targets, rung, None, settings, seed, table, tokens))
        return made[name]

    for rung in rungs:
        for name, value in rung_settings(rung, settings):
            names = [name, f"{name}_argmax"] if rung == "mixture" else [name]
            if all((out / x / "problems.jsonl").is_file() for x in names):
                continue
            total = n * (settings.gcg_budget if rung == "gcg" else settings.steps)
            with StepBar(total, f"ladder {name}", show_progress and rung not in ("projection", "random_tokens",
                                                                                   "own_tokens")) as bar:
                outputs = run_rung(lm, layer, targets, rung, value, settings, seed, table, tokens,
                                   free=need("free") if rung == "projection" else None,
                                   projected=need("projected") if rung == "gcg" and settings.gcg_init == "projected"
                                   else None, progress=bar.update)
            made.update(outputs)
            for folder, output in outputs.items():
                result = evaluate_output(lm, layer, targets, output, floor, table)
                for rec in result.problems:
                    rec.update({"rung": rung, "setting": value, "setting_name": folder,
                                "discrete": output.ids is not None})
                    if tokens is not None:
                        rec["text"] = lm.tokenizer.decode(tokens[rec["index"]])
                    if output.ids is not None:
                        rec["solution_text"] = lm.tokenizer.decode(output.ids[rec["index"]])
                lr = {"mixture": settings.mixture_lr, "projected": settings.projected_lr}.get(rung, settings.lr)
                run = RunConfig(model=model_spec or lm.source, layer=layer, targets=n, restarts=1, seq_len=t, seed=seed,
                                floor_draws=settings.floor_draws, device=str(lm.device.type),
                                optim=settings.optim(lr))
                config = resolved_config(run, lm, layer, "ladder")
                config.update({"condition": folder, "rung": rung, "setting": value,
                               "discrete": output.ids is not None, "ladder": settings.to_dict()})
                extra = {"solution_tokens": output.ids.long().clone()} if output.ids is not None else None
                write_condition(out / folder, result, config, f"{TITLE}: {folder}", overwrite=True, tokens=tokens,
                                extra_tensors=extra, extra_json={"rung.json": output.extra} if output.extra else None)
    write_frontier(out)
    return out


# ---------------------------------------------------------------- the frontier

def _folder_order(name: str, rung: str) -> tuple:
    return (RUNGS.index(rung) if rung in RUNGS else len(RUNGS), name)


def write_frontier(out_dir) -> Path:
    """frontier.json: one point per result folder (means over targets), in ladder order."""
    out = Path(out_dir)
    points = []
    for folder in sorted(p for p in out.iterdir() if (p / "problems.jsonl").is_file()):
        rows = [json.loads(line) for line in (folder / "problems.jsonl").read_text().splitlines() if line]
        config = json.loads((folder / "config.json").read_text())
        point = {"name": folder.name, "rung": rows[0].get("rung", config.get("rung")),
                 "setting": rows[0].get("setting"), "discrete": bool(rows[0].get("discrete")), "n_targets": len(rows)}
        for key in POINT_FIELDS:
            values = [r[key] for r in rows if key in r]
            point[key] = float(np.mean(values)) if values else None
        points.append(point)
    points.sort(key=lambda p: _folder_order(p["name"], p["rung"]))
    marker = json.loads((out / MARKER).read_text()) if (out / MARKER).is_file() else {}
    floor = {k: points[0][f"floor_{k}"] for k in ("cos", "cos_no_pos0")} if points else {}
    frontier = {"model": marker.get("model"), "layer": marker.get("layer"),
                "targets_shape": marker.get("targets_shape"), "floor": floor, "points": points}
    path = out / "frontier.json"
    atomic_write_text(path, dumps_json(frontier))
    return path


def _load_frontier(out_dir) -> dict:
    path = Path(out_dir) / "frontier.json"
    if not path.is_file():
        if not Path(out_dir).is_dir():
            raise UserError(f"{out_dir} is not a ladder folder")
        write_frontier(out_dir)
    return json.loads(path.read_text())


def _num(x, digits: int = 4) -> str:
    if x is None or (isinstance(x, float) and not math.isfinite(x)):
        return "–"
    if x != 0 and (abs(x) >= 1e4 or abs(x) < 1e-3):
        return f"{x:.3g}"
    return f"{x:.{digits}f}"


def frontier_table(out_dir) -> str:
    """The frontier as a markdown table: one row per rung setting, means over targets."""
    f = _load_frontier(out_dir)
    lines = ["| rung setting | discrete | cos | cos w/o pos 0 | MSE | MSE w/o pos 0 | nearest-token cos | norm ratio "
             "| KL (nats) | KL w/o pos 0 | top-1 w/o pos 0 | fwd passes / target | s / target |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for p in f["points"]:
        lines.append(f"| {p['name']} | {'yes' if p['discrete'] else 'no'} | {_num(p['cos'])} "
                     f"| {_num(p['cos_no_pos0'])} "
                     f"| {_num(p['mse'], 3)} | {_num(p['mse_no_pos0'], 3)} | {_num(p['nearest_cos'], 3)} "
                     f"| {_num(p['norm_ratio'], 2)} | {_num(p['kl'], 3)} | {_num(p['kl_no_pos0'], 3)} "
                     f"| {_num(p['top1_no_pos0'], 2)} | {p['forward_passes']:.0f} | {_num(p['seconds'], 2)} |")
    floor = f.get("floor") or {}
    if floor.get("cos") is not None:
        lines.append("")
        lines.append(f"Random-token floor: cos {_num(floor['cos'])}, "
                     f"without position 0 {_num(floor.get('cos_no_pos0'))}. "
                     "Means over targets; nearest-token cos and norm ratio describe the input vectors; "
                     "KL is KL(target's next-token distribution || reached's).")
    return "\n".join(lines)


_STYLE = {  # rung -> (colour, marker, short label beside the point)
    "free": ("C0", "o", "free"), "norm_bound": ("C1", "o", "c="), "nearest_penalty": ("C2", "o", "w="),
    "mixture": ("C4", "o", "τ="), "mixture_argmax": ("C4", "s", "argmax τ="), "projected": ("C3", "s", "PEZ"),
    "gcg": ("C5", "D", "GCG"), "projection": ("C7", "s", "projection"), "random_tokens": ("0.4", "v", "random"),
    "own_tokens": ("C2", "*", "own"),
}
_LABEL = {"free": "free vectors", "norm_bound": "norm bound (c x mean token norm)",
          "nearest_penalty": "nearest-token penalty (weight w)", "mixture": "token mixture (continuous, τ)",
          "mixture_argmax": "token mixture → argmax tokens", "projected": "projected steps (PEZ) → tokens",
          "gcg": "GCG token search", "projection": "free solution → nearest tokens",
          "random_tokens": "random tokens", "own_tokens": "the target's own tokens"}


def _style_key(p: dict) -> str:
    return "mixture_argmax" if p["rung"] == "mixture" and p["discrete"] else p["rung"]


def frontier_figure(out_dir, path) -> Path:
    """Fidelity (left: cosine; right: next-token KL) against nearest-token cosine, one point per rung setting.

    Reference lines: the random-token floor and the target's own tokens (left), random tokens (right).
    Discrete results all sit at nearest-token cosine 1; each point carries a short label.
    """
    from .plots import _cosine_axis, _new_figure, _save

    f = _load_frontier(out_dir)
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
    ax.set_title(f"Fidelity vs distance from the token manifold", fontsize=10)
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


# ---------------------------------------------------------------- command line

def write_ladder_report(out_dir) -> Path:
    """frontier.png and report.md (the frontier table and figure) for a ladder folder; returns report.md."""
    out = Path(out_dir)
    frontier_figure(out, out / "frontier.png")
    text = ("# Constraint ladder: fidelity against distance from the token manifold\n\n"
            + frontier_table(out) + "\n\n![frontier](frontier.png)\n")
    atomic_write_text(out / "report.md", text)
    return out / "report.md"


def _float_list(text: str, flag: str) -> tuple[float, ...]:
    try:
        values = tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        raise UserError(f"{flag} needs comma-separated numbers, got {text!r}") from None
    if not values:
        raise UserError(f"{flag} needs at least one number")
    return values


def add_ladder_parser(sub) -> None:
    """`softreach ladder ...`: the constraint ladder on real targets from the corpus."""
    d = LadderSettings()
    joined = lambda values: ",".join(f"{v:g}" for v in values)  # noqa: E731
    p = sub.add_parser("ladder", help="constrained reachability: the same targets under a ladder of constraints")
    add = p.add_argument
    add("--model", default=None, help="hub id, local folder, .gguf file, or smollm2-135m (default)")
    add("--layer", type=int, default=None, help="layer L (default: n_layers // 2)")
    add("--targets", type=int, default=4, help="number of real-text targets (default %(default)s)")
    add("--rungs", default=",".join(RUNGS), help="comma-separated rungs (default: all of %(default)s)")
    add("--seq-len", type=int, default=20, help="positions T (default %(default)s)")
    add("--steps", type=int, default=d.steps, help="Adam steps of the optimised rungs (default %(default)s)")
    add("--lr", type=float, default=d.lr, help="peak lr of free, norm_bound, nearest_penalty (%(default)s)")
    add("--mixture-lr", type=float, default=d.mixture_lr, help="peak lr of the mixture logits (%(default)s)")
    add("--projected-lr", type=float, default=d.projected_lr, help="peak lr of the projected rung (%(default)s)")
    add("--schedule", default=d.schedule, help="learning-rate schedule: cosine or constant (%(default)s)")
    add("--init", default=d.init, help="start of the vector rungs: tokens (one shared random token sequence, "
        "default) or normal (N(0, 1), the log's protocol)")
    add("--norm-bounds", default=joined(d.norm_bounds), help="norm_bound multiples c of the mean token norm "
        "(default %(default)s)")
    add("--penalty-weights", default=joined(d.penalty_weights), help="nearest_penalty weights (default %(default)s)")
    add("--penalty-kind", default=d.penalty_kind, help="nearest_penalty distance: l2 (default) or cos")
    add("--mixture-taus", default=joined(d.mixture_taus), help="mixture temperatures (default %(default)s)")
    add("--gcg-budget", type=int, default=d.gcg_budget, help="GCG forward passes per target (%(default)s)")
    add("--gcg-top-k", type=int, default=d.gcg_top_k, help="GCG candidate tokens per position (%(default)s)")
    add("--gcg-candidates", type=int, default=d.gcg_candidates, help="GCG swaps per iteration (%(default)s)")
    add("--gcg-init", default=d.gcg_init, help="GCG start: random (the shared start tokens, default) or projected")
    add("--skip-pos0", action=argparse.BooleanOptionalAction, default=d.skip_pos0,
        help="leave position 0 out of every rung's loss (default: %(default)s, as the engine)")
    add("--floor-draws", type=int, default=d.floor_draws, help="random-token draws for the floor (%(default)s)")
    add("--memory-budget-mb", type=float, default=None, help="memory a batch may use (MiB)")
    add("--seed", type=int, default=0)
    add("--device", default="auto", help="auto, cpu or cuda")
    add("--corpus", default="default", help="default (pydoc topics), wikitext2, or a text file")
    add("--out", required=True, help="ladder folder to create (an identical earlier run is resumed)")
    add("--overwrite", action="store_true", help="replace an existing folder")
    add("--no-progress", action="store_true", help="hide progress bars")
    p.set_defaults(func=cmd_ladder)


def cmd_ladder(a) -> int:
    """Handler of `softreach ladder`: real targets, every rung, frontier table and figure. Returns the exit code."""
    from .corpus import load_corpus_text
    from .exp1 import real_targets
    from .models import DEFAULT_MODEL, load_model
    from .residual import check_layer
    from .targets import tokenize_windows

    rungs = _ordered([r.strip() for r in a.rungs.split(",") if r.strip()])
    settings = LadderSettings(
        steps=a.steps, lr=a.lr, mixture_lr=a.mixture_lr, projected_lr=a.projected_lr, schedule=a.schedule,
        init=a.init, skip_pos0=a.skip_pos0, norm_bounds=_float_list(a.norm_bounds, "--norm-bounds"),
        penalty_weights=_float_list(a.penalty_weights, "--penalty-weights"), penalty_kind=a.penalty_kind,
        mixture_taus=_float_list(a.mixture_taus, "--mixture-taus"), gcg_budget=a.gcg_budget, gcg_top_k=a.gcg_top_k,
        gcg_candidates=a.gcg_candidates, gcg_init=a.gcg_init, floor_draws=a.floor_draws,
        memory_budget_mb=a.memory_budget_mb)
    if a.targets < 1:
        raise UserError(f"--targets must be at least 1, got {a.targets}")
    out = Path(a.out)
    if out.exists() and not a.overwrite and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a ladder folder; choose another --out or pass --overwrite")
    start = time.perf_counter()
    spec = a.model or DEFAULT_MODEL
    lm = load_model(spec, a.device)
    layer = a.layer if a.layer is not None else lm.default_layer()
    check_layer(layer, lm.n_layers)
    windows = tokenize_windows(lm, load_corpus_text(a.corpus), a.seq_len)
    tokens, targets, _ = real_targets(lm, windows, layer, a.targets, a.seed)
    run_ladder(lm, layer, targets, tokens, rungs, settings, a.seed, out, overwrite=a.overwrite,
               show_progress=not a.no_progress, model_spec=spec)
    report = write_ladder_report(out)
    print(f"\nconstraint ladder on {lm.source}" + (f" ({lm.gguf_file})" if lm.gguf_file else "")
          + f", layer {layer}, {a.targets} targets x {a.seq_len} positions, {settings.steps} steps, "
          f"GCG budget {settings.gcg_budget}\n")
    print(frontier_table(out))
    print(f"\n{time.perf_counter() - start:.0f} s in all; results in {out}, report {report}")
    return 0
