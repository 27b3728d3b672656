"""Running the constraint ladder into a ladder folder: every rung setting, evaluated the same way."""
from __future__ import annotations

import time
from pathlib import Path

import torch

from ..condition import ConditionResult, achieved_residuals, floor_tokens, metric_rows, summarise
from ..config import RunConfig
from .config import RUNGS, LadderConfig, LadderSettings
from ..downstream import next_token_agreement
from ..errors import UserError
from ..floor import random_token_floor
from ..manifold import TokenTable, nearest_tokens, token_table
from ..metrics import problem_metrics
from ..models import LoadedModel, load_model
from ..progress import StepBar
from ..report.ladder import MARKER, write_frontier, write_ladder_report
from ..results.folder import is_done, read_problems, resolved_config, write_condition
from ..results.markers import open_marked_folder
from ..targets import corpus_targets, residuals_of_tokens
from ..vocab import frequent_tokens
from .rungs import VOCAB_RUNGS, RungOutput, rung_settings, run_rung, vocab_suffix

TITLE = "Constrained reachability"
_NO_BAR = ("projection", "random_tokens", "own_tokens")  # rungs with nothing to optimise: no progress bar


def evaluate_output(lm: LoadedModel, layer: int, targets: torch.Tensor, output: RungOutput, floor: dict,
                    table: TokenTable, tokens: torch.Tensor | None = None) -> ConditionResult:
    """Metrics of one rung output against targets [N, T, d]; discrete outputs are run from their ids.

    With the targets' own tokens [N, T], a discrete output also reports the share of positions whose token is
    the source token (`token_recovery`) and whether all are (`exact_recovery`, 0 or 1)."""
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
        if tokens is not None and output.ids is not None:  # known answer: how much of it the search recovered
            same = output.ids[i].cpu() == tokens[i].cpu()  # [T]
            rec["token_recovery"] = float(same.float().mean())
            rec["exact_recovery"] = float(same.all())
        rec["seconds"] = float(output.seconds[i])
    curves = output.loss_curve is not None
    return ConditionResult(
        soft_prompt=output.inputs.float(), target=targets.float(), all_soft_prompts=output.inputs.float().unsqueeze(1),
        loss_curve=output.loss_curve.unsqueeze(1) if curves else None,
        cos_curve=output.cos_curve.unsqueeze(1) if curves else None,
        problems=rows, summary=summarise(rows, 0, sum(output.seconds)), seconds=time.perf_counter() - start,
        baseline_tokens=floor_tokens(floor))


def _marker(lm: LoadedModel, layer: int, targets: torch.Tensor, seed: int, settings: LadderSettings) -> dict:
    """What made a ladder folder: another run is never mixed in."""
    return {"model": {"source": lm.source, "gguf_file": lm.gguf_file}, "layer": layer, "seed": seed,
            "targets_shape": list(targets.shape), "targets_checksum": float(targets.double().abs().sum()),
            "settings": settings.to_dict()}


def _load_output(folder: Path) -> RungOutput:
    """A finished folder's output again (for the rungs that build on it when resuming)."""
    from safetensors.torch import load_file

    tensors = load_file(str(folder / "tensors.safetensors"))
    rows = read_problems(folder)
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
               model_spec: str | None = None, vocab_corpus=None) -> Path:
    """Run every setting of every rung on targets [N, T, d] into result folders under out_dir.

    vocab_corpus (text or token ids) ranks the tokens when settings.vocab_percent restricts the discrete
    rungs (VOCAB_RUNGS) to the most frequent ones; each runs once per percent (folders `gcg_v10`, ...).

    tokens [N, T]: the targets' own tokens when the targets are real-text residuals (else None; then
    own_tokens cannot run). A folder already written by an identical earlier call is kept (resume); a
    folder made by another call is refused. Writes frontier.json at the end and returns out_dir.
    """
    rungs = _ordered(list(rungs))
    if "own_tokens" in rungs and tokens is None:
        raise UserError("the own_tokens rung needs targets taken from text (their tokens)")
    if tokens is not None and tokens.shape != targets.shape[:2]:
        raise UserError(f"tokens {tuple(tokens.shape)} do not match targets {tuple(targets.shape)}")
    restricted = settings.vocab_percent != (100.0,)
    if restricted and vocab_corpus is None and any(r in VOCAB_RUNGS for r in rungs):
        raise UserError("vocab_percent below 100 needs a corpus to rank the tokens by frequency")
    out = Path(out_dir)
    open_marked_folder(out, MARKER, _marker(lm, layer, targets, seed, settings), "ladder", overwrite)
    table = token_table(lm)
    tables = {p: table if p == 100 else token_table(lm, frequent_tokens(lm, vocab_corpus, p))
              for p in (settings.vocab_percent if restricted else (100.0,))}
    n, t, _ = targets.shape
    floor = random_token_floor(lm, targets, layer, seed, settings.floor_draws) if settings.floor_draws else {}
    made: dict[str, RungOutput] = {}

    def need(rung: str, p: float = 100.0) -> RungOutput:
        """The output a later rung builds on: from this run, from its folder, or computed now (not written)."""
        name = rung_settings(rung, settings)[0][0] + (vocab_suffix(p) if rung in VOCAB_RUNGS else "")
        if name not in made:
            if is_done(out / name):
                made[name] = _load_output(out / name)
            else:
                made.update(run_rung(lm, layer, targets, rung, None, settings, seed,
                                     tables[p] if rung in VOCAB_RUNGS else table, tokens, vocab_percent=p))
        return made[name]

    jobs = [(rung, name + (vocab_suffix(p) if rung in VOCAB_RUNGS else ""), value, p)
            for rung in rungs for p in (tables if rung in VOCAB_RUNGS else (100.0,))
            for name, value in rung_settings(rung, settings)]
    for rung, name, value, p in jobs:
        rung_table = tables[p] if rung in VOCAB_RUNGS else table
        names = [name, f"{name}_argmax"] if rung == "mixture" else [name]
        if all(is_done(out / x) for x in names):
            continue
        total = n * {"gcg": settings.gcg_budget, "causal": t}.get(rung, settings.steps)
        bar_kind = {"unit": " positions", "figure": "share exact so far"} if rung == "causal" else {}
        with StepBar(total, f"ladder {name}", show_progress and rung not in _NO_BAR, **bar_kind) as bar:
            outputs = run_rung(lm, layer, targets, rung, value, settings, seed, rung_table, tokens,
                               free=need("free") if rung == "projection" else None,
                               projected=need("projected", p) if rung == "gcg" and settings.gcg_init == "projected"
                               else None, progress=bar.update, vocab_percent=p)
        made.update(outputs)
        lr = {"mixture": settings.mixture_lr, "projected": settings.projected_lr}.get(rung, settings.lr)
        run = RunConfig(model=model_spec or lm.source, layer=layer, targets=n, restarts=1, seq_len=t, seed=seed,
                        floor_draws=settings.floor_draws, device=str(lm.device.type), optim=settings.optim(lr))
        for folder, output in outputs.items():
            result = evaluate_output(lm, layer, targets, output, floor, rung_table, tokens)
            discrete = output.ids is not None
            vocab = {"vocab_percent": p, "vocab_size": int(rung_table.ids.numel())} \
                if restricted and rung in VOCAB_RUNGS else {}
            for rec in result.problems:
                rec.update({"rung": rung, "setting": value, "setting_name": folder, "discrete": discrete, **vocab})
                if tokens is not None:
                    rec["text"] = lm.tokenizer.decode(tokens[rec["index"]])
                if discrete:
                    rec["solution_text"] = lm.tokenizer.decode(output.ids[rec["index"]])
            config = resolved_config(run, lm, layer, "ladder")
            config.update({"condition": folder, "rung": rung, "setting": value, "discrete": discrete,
                           "ladder": settings.to_dict(), **vocab})
            write_condition(out / folder, result, config, f"{TITLE}: {folder}", overwrite=True, tokens=tokens,
                            extra_tensors={"solution_tokens": output.ids.long().clone()} if discrete else None,
                            extra_json={"rung.json": output.extra} if output.extra else None)
    write_frontier(out)
    return out


def run_ladder_config(cfg: LadderConfig, out, overwrite: bool = False, show_progress: bool = True) -> dict:
    """`softreach ladder` without printing: real-text targets from the corpus, every rung, frontier and report.

    An existing folder that is not a ladder folder is refused before the model loads. Returns
    {"out": Path, "report": Path (report.md), "lm": the loaded model, "layer": int, "seconds": float}.
    """
    out = Path(out)
    if out.exists() and not overwrite and not (out / MARKER).is_file() and (not out.is_dir() or any(out.iterdir())):
        raise UserError(f"{out} exists and is not a softreach ladder folder; choose another --out")
    start = time.perf_counter()
    lm = load_model(cfg.model, cfg.device)
    layer = lm.layer(cfg.layer)
    windows, tokens, targets, _ = corpus_targets(lm, cfg.corpus, cfg.seq_len, layer, cfg.targets, cfg.seed)
    run_ladder(lm, layer, targets, tokens, list(cfg.rungs), cfg.settings, cfg.seed, out, overwrite=overwrite,
               show_progress=show_progress, model_spec=cfg.model, vocab_corpus=windows.tokens)
    report = write_ladder_report(out)
    return {"out": out, "report": report, "lm": lm, "layer": layer, "seconds": time.perf_counter() - start}
