"""Discrete rungs restricted to the soft slots: real tokens in the K slots of a steering frame.

  projection  the nearest allowed token (by cosine, the ladder's rule) of each continuous slot vector;
  projected   PEZ through the frame: straight-through projection onto the allowed tokens, started from
              the continuous solution (or the text's own tokens' embeddings), best ids by loss kept;
  gcg         GCG over the slot tokens, started from the text's own tokens (each disallowed one replaced
              by its nearest allowed token), never ending worse than its start;
  causal      the slot tokens searched in order from the same start (causal_search.slot_search).
The loss is the ladder's (LadderSettings: mse_weight, mse_norm) over the frame's positions, position 0
included. `evaluate_slot_tokens` measures any slot ids the way solve_steer measures soft vectors.
"""
from __future__ import annotations

import time

import torch

from ..condition import ConditionResult, summarise
from ..ladder.config import LadderSettings
from ..errors import UserError
from ..ladder.rungs import run_pez
from ..manifold import TokenTable, nearest_rows, token_table
from ..causal_search import slot_search
from ..token_search import GCGConfig, gcg_search
from .solve import measure_inputs
from .targets import SteerTargets

STEER_RUNGS = ("projection", "projected", "gcg", "causal")


def allowed_start(lm, table: TokenTable, ids: torch.Tensor) -> torch.Tensor:
    """ids [R, K] with every id outside the table replaced by its nearest table token (by cosine)."""
    ids = ids.long().cpu()
    table_ids = table.ids.cpu()
    inside = torch.isin(ids, table_ids)
    if bool(inside.all()):
        return ids.clone()
    emb = lm.embedding_matrix.detach().float()[ids.to(lm.device)]  # [R, K, d]
    nearest = table_ids[nearest_rows(emb, table).cpu()]
    return torch.where(inside, ids, nearest)


def steer_rung(lm, layer: int, problems: SteerTargets, rung: str, soft: torch.Tensor | None,
               settings: LadderSettings, seed: int, vocab: torch.Tensor | None = None,
               progress=None) -> tuple[torch.Tensor, dict]:
    """Slot token ids [R, K] (int64, CPU) of one discrete rung, and a JSON-ready info dict.

    soft [R, K, d]: the continuous solution (projection needs it; projected starts from it, or from the
    own tokens' embeddings when None). vocab: the allowed token ids (None: every ordinary token).
    info: rung, vocab_size, forward_passes [R], seconds [R], and the rung's own notes.
    """
    if rung not in STEER_RUNGS:
        raise UserError(f"unknown slot rung {rung!r}: choose from {', '.join(STEER_RUNGS)}")
    frame, target = problems.frame, problems.target
    n, k = frame.rows, frame.soft
    if soft is not None and tuple(soft.shape[:2]) != (n, k):
        raise UserError(f"soft vectors {tuple(soft.shape)} do not fit {n} rows of {k} slots")
    table = token_table(lm, vocab)
    info: dict = {"rung": rung, "vocab_size": int(table.ids.numel())}
    start = time.perf_counter()
    if rung == "projection":
        if soft is None:
            raise UserError("the projection rung needs the continuous solution")
        ids = table.ids.cpu()[nearest_rows(soft, table).cpu()]  # [R, K]
        info.update(forward_passes=[0] * n, seconds=[(time.perf_counter() - start) / n] * n)
        return ids, info
    if rung == "projected":
        init = soft if soft is not None else lm.embedding_matrix.detach().float().cpu()[problems.own_tokens.long()]
        out = run_pez(lm, layer, target, init.float().cpu(), settings.optim(settings.projected_lr), table,
                      progress, frame=frame)
        info.update(forward_passes=list(out.forward_passes), seconds=list(out.seconds), **out.extra)
        return out.ids.long().cpu(), info
    init_ids = allowed_start(lm, table, problems.own_tokens)
    if rung == "causal":
        res = slot_search(lm, layer, target, frame, init_ids, settings.optim(settings.lr), table,
                          max_candidates=settings.causal_max_candidates or 256, chunk=settings.causal_chunk,
                          progress=progress)
        info.update(forward_passes=res.forward_passes, seconds=res.seconds, start_loss=res.start_loss,
                    final_loss=res.loss)
        return res.ids.long().cpu(), info
    cfg = GCGConfig(budget=settings.gcg_budget, top_k=settings.gcg_top_k, candidates=settings.gcg_candidates,
                    memory_budget_mb=settings.memory_budget_mb)
    res = gcg_search(lm, layer, target, init_ids, cfg, settings.optim(settings.lr), table, seed + 4,
                     progress=progress, frame=frame)
    info.update(forward_passes=res.forward_passes, seconds=res.seconds, start_loss=res.start_loss,
                final_loss=res.loss, cos=res.cos, iterations=res.iterations, accepted=res.accepted,
                candidate_batch=res.candidate_batch, start_changed=int((init_ids != problems.own_tokens.cpu()).sum()))
    return res.ids.long().cpu(), info


@torch.no_grad()
def evaluate_slot_tokens(lm, layer: int, problems: SteerTargets, ids: torch.Tensor,
                         downstream: bool = True) -> dict[str, torch.Tensor]:
    """Slot ids [R, K] measured against the targets: cos [R] (mean over positions), mse [R],
    cos_per_position [R, P], and (downstream) kl [R], top1 [R] at the steered positions."""
    soft = lm.model.get_input_embeddings()(ids.long().to(lm.device)).float()  # [R, K, d]
    return measure_inputs(lm, layer, problems.frame, soft, problems.target.float(), downstream)


def solve_slot_rung(lm, layer: int, cfg, problems: SteerTargets, rung: str, soft: torch.Tensor,
                    base_rows: list[dict], vocab: torch.Tensor | None, percent: float, progress=None):
    """One discrete rung in the slots as a ConditionResult: soft_prompt = the chosen tokens' embeddings,
    rows beside the continuous solution's baselines (floor, own tokens) and its cosine."""
    settings = LadderSettings(steps=cfg.optim.steps, lr=cfg.optim.lr, projected_lr=cfg.optim.lr, mse_weight=cfg.optim.mse_weight,
                              skip_pos0=False, mse_norm=cfg.optim.mse_norm, gcg_budget=cfg.gcg_budget,
                              gcg_top_k=64, gcg_candidates=64,  # steering's measured settings (issue 19 left them)
                              causal_max_candidates=cfg.causal_candidates,
                              batch_size=cfg.optim.batch_size, memory_budget_mb=cfg.optim.memory_budget_mb)
    ids, info = steer_rung(lm, layer, problems, rung, soft, settings, cfg.seed, vocab, progress)
    m = evaluate_slot_tokens(lm, layer, problems, ids, cfg.downstream)
    rows = []
    for i, base in enumerate(base_rows):
        rec = {"index": i, "text": base["text"], "rung": rung, "vocab_percent": percent,
               "vocab_size": info["vocab_size"], "cos": float(m["cos"][i]), "mse": float(m["mse"][i]),
               "cos_per_position": [round(float(x), 6) for x in m["cos_per_position"][i]],
               "soft_cos": base["cos"], "own_cos": base["own_cos"], "reached": bool(m["cos"][i] >= cfg.fidelity),
               "forward_passes": int(info["forward_passes"][i]), "seconds": float(info["seconds"][i]),
               "slot_text": lm.tokenizer.decode(ids[i].tolist())}
        if problems.source_tokens is not None:  # real targets: how much of the known answer the rung found
            same = ids[i].cpu() == problems.source_tokens[i].cpu()
            rec.update(token_recovery=float(same.float().mean()), exact_recovery=float(same.all()))
        for key in ("coefficient", "floor_cos", "source_cos", "near_miss_cos"):
            if key in base:
                rec[key] = base[key]
        if "kl" in m:
            rec.update(kl=float(m["kl"][i]), top1=float(m["top1"][i]), own_kl=base.get("own_kl"))
        rows.append(rec)
    inputs = lm.embedding_matrix.detach().float().cpu()[ids]  # [R, K, d]
    seconds = float(sum(info["seconds"]))
    result = ConditionResult(soft_prompt=inputs, target=problems.target.float(), all_soft_prompts=inputs.unsqueeze(1),
                             loss_curve=None, cos_curve=None, problems=rows, summary=summarise(rows, 0, seconds),
                             seconds=seconds)
    return result, ids
