"""`softreach verify`: recompute every number a result folder states from its saved tensors.

The check runs its own forward: the folder's model loaded afresh with plain `from_pretrained`, the full
input (fixed text, soft vectors, fixed text) run through Hugging Face with `output_hidden_states`, never
the engine's stopped forward nor its cached text. It then compares, row by row, the metrics the rows state
(`cos`, `mse`, their `_no_pos0`, centred and FVU variants, per-position and per-restart cosines, the text's
own tokens and the source tokens where saved), the norm budget (every saved input vector within its cap),
the copy baseline (no weaker than a plain scaled copy over a grid of its own), that saved source tokens
produce the targets, and that discrete solutions are the embeddings of their saved tokens.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F

from .budget import clip_norms
from .errors import UserError
from .results.folder import read_json, read_problems

CONTRACT_FILES = ("config.json", "tensors.safetensors", "problems.jsonl")
COPY_GRID = tuple(2.0**k for k in range(-10, 11))  # the copy scales this check tries: 2^-10 .. 2^10
COSINE_FIELDS = ("cos", "cos_no_pos0", "centred_cos", "centred_cos_no_pos0")
RELATIVE_FIELDS = ("mse", "mse_no_pos0", "fvu", "fvu_no_pos0")
TOKEN_TENSORS = ("solution_tokens", "projected_tokens")  # discrete inputs: soft_prompt = their embedding rows


@dataclass
class Disagreement:
    row: int | None  # problems.jsonl row (0-based, tensor order); None for the folder as a whole
    field: str
    reported: object
    recomputed: object

    def __str__(self) -> str:
        where = "folder" if self.row is None else f"row {self.row}"
        return f"{where} {self.field}: reported {_shown(self.reported)}, recomputed {_shown(self.recomputed)}"


@dataclass
class FolderCheck:
    """The outcome for one result folder."""

    folder: Path
    rows_checked: int = 0
    rows_total: int = 0
    fields: set[str] = field(default_factory=set)  # the fields and checks that were compared
    worst_cos: float = 0.0  # largest |reported - recomputed| over the cosine fields
    disagreements: list[Disagreement] = field(default_factory=list)
    continuation: str | None = None  # what continuing the rows found (--continue-steps), or why it was skipped

    @property
    def ok(self) -> bool:
        return not self.disagreements

    def lines(self) -> list[str]:
        """One line when all agree; otherwise one line per disagreement, naming folder, row and field."""
        if not self.ok:
            return [f"FAIL {self.folder} {d}" for d in self.disagreements]
        return [f"ok   {self.folder}: {self.rows_checked}/{self.rows_total} rows, worst |dcos| {self.worst_cos:.1e}; "
                f"checked {', '.join(sorted(self.fields))}" + (f"; {self.continuation}" if self.continuation else "")]


def _shown(value) -> str:
    return f"{value:.6g}" if isinstance(value, float) else str(value)


def result_folders(path: str | Path) -> list[Path]:
    """Every result folder at or under `path` (hidden staging and checkpoint folders skipped), sorted."""
    path = Path(path)
    if not path.is_dir():
        raise UserError(f"{path} is not a folder")
    if all((path / f).is_file() for f in CONTRACT_FILES):
        return [path]
    found = sorted(p.parent for p in path.rglob("problems.jsonl")
                   if all((p.parent / f).is_file() for f in CONTRACT_FILES)
                   and not any(part.startswith(".") for part in p.parent.relative_to(path).parts))
    if not found:
        raise UserError(f"{path} holds no result folder (config.json, tensors.safetensors and problems.jsonl)")
    return found


def verify(*paths: str | Path, max_problems: int | None = None, tol: float = 1e-4, device: str = "cpu",
           progress: bool = False, continue_steps: int = 0) -> list[FolderCheck]:
    """Check every result folder under `paths`; `all(c.ok for c in checks)` when everything agrees.

    tol: the largest |reported - recomputed| accepted for a cosine (MSE-like fields: relative 10 * tol).
    continue_steps: also continue every row from its saved input for this many steps of an optimiser of the
    check's own (convergence_check); a row called `converged` that gains more than 0.005 fails.
    """
    from tqdm.auto import tqdm

    from .models import pick_device

    if max_problems is not None and max_problems < 1:
        raise UserError(f"--max-problems must be at least 1, got {max_problems}")
    if not tol > 0:
        raise UserError(f"--tol must be positive, got {tol}")
    if continue_steps < 0:
        raise UserError(f"--continue-steps must be 0 (off) or more, got {continue_steps}")
    dev = pick_device(device)
    folders = [f for p in paths for f in result_folders(p)]
    models: dict[tuple, torch.nn.Module] = {}
    checks = []
    with tqdm(folders, desc="verify", unit="folder", disable=not progress) as bar:
        for folder in bar:
            bar.set_postfix_str(folder.name)
            checks.append(check_folder(folder, models, max_problems, tol, dev, continue_steps))
    return checks


def load_reference_model(source: str, gguf_file: str | None, device: torch.device) -> torch.nn.Module:
    """The folder's model, loaded the plain way (float32, eval); a one-line error when it cannot be."""
    from transformers import AutoModelForCausalLM
    from transformers.utils import logging as hf_logging

    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    verbosity, bars = hf_logging.get_verbosity(), hf_logging.is_progress_bar_enabled()
    hf_logging.set_verbosity_error()
    hf_logging.disable_progress_bar()
    try:
        model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
    except (OSError, ValueError) as e:
        raise UserError(f"cannot load the folder's model {source!r}: {str(e).strip().splitlines()[0]}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
        if bars:
            hf_logging.enable_progress_bar()
    return model.to(device).eval().requires_grad_(False)


@torch.no_grad()
def hidden_state(model: torch.nn.Module, layer: int, embeds: torch.Tensor, ablation: str) -> torch.Tensor:
    """hidden_states[layer] of the full input through Hugging Face: [B, S, d] -> [B, S, d] float32.

    hidden_states[n_layers] has the final norm applied, so the last layer is read from the last block's output.
    """
    from .residual import ablated, decoder_blocks

    base = model.base_model
    blocks = decoder_blocks(model)
    seen = {}
    handle = None
    if layer == len(blocks):
        handle = blocks[-1].register_forward_hook(lambda _m, _i, o: seen.setdefault("h", o[0] if isinstance(o, tuple) else o))
    try:
        with ablated(model, ablation):
            out = base(inputs_embeds=embeds, output_hidden_states=True, use_cache=False)
    finally:
        if handle is not None:
            handle.remove()
    return (seen["h"] if handle is not None else out.hidden_states[layer]).float()


class _Folder:
    """One folder's saved tensors and the forward that recomputes its residuals."""

    def __init__(self, folder: Path, model: torch.nn.Module, config: dict, tensors: dict, device: torch.device):
        self.model, self.device = model, device
        self.layer, self.ablation = int(config["layer"]), config.get("ablation") or "none"
        self.embed = model.get_input_embeddings()
        self.before, self.after = tensors.get("context_before"), tensors.get("context_after")
        self.positions = tensors.get("target_positions")
        self.has_context = self.before is not None or self.after is not None

    def inputs(self, rows: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """The whole input of problems `rows`: fixed text, slot vectors [B, K, d], fixed text: [B, S, d]."""
        parts = [slots.float().to(self.device)]
        if self.before is not None:
            parts.insert(0, self.embed(self.before[rows].long().to(self.device)).float())
        if self.after is not None:
            parts.append(self.embed(self.after[rows].long().to(self.device)).float())
        return torch.cat(parts, dim=1)

    def residual(self, rows: torch.Tensor, slots: torch.Tensor, ablation: str | None = None) -> torch.Tensor:
        """Residuals at the target positions for slot vectors [B, K, d] of problems `rows`: [B, P, d] on CPU."""
        out = []
        x = self.inputs(rows, slots)
        for lo in range(0, x.shape[0], 32):
            out.append(hidden_state(self.model, self.layer, x[lo : lo + 32], ablation or self.ablation).cpu())
        h = torch.cat(out)
        return h if self.positions is None else h[:, self.positions.long()]

    def token_residual(self, rows: torch.Tensor, ids: torch.Tensor, ablation: str | None = None) -> torch.Tensor:
        return self.residual(rows, self.embed(ids.long().to(self.device)).float(), ablation)


def check_folder(folder: Path, models: dict, max_problems: int | None, tol: float, device: torch.device,
                 continue_steps: int = 0) -> FolderCheck:
    from safetensors.torch import load_file

    check = FolderCheck(folder)
    try:
        config = read_json(folder / "config.json")
        tensors = load_file(str(folder / "tensors.safetensors"))
        rows = read_problems(folder)
        soft, target = tensors["soft_prompt"].float(), tensors["target"].float()
        source, gguf = config["model"]["source"], config["model"].get("gguf_file")
        int(config["layer"])
    except (OSError, ValueError, KeyError, TypeError, UserError) as e:
        check.disagreements.append(Disagreement(None, "contract", "a readable result folder", f"{type(e).__name__}: {e}"))
        return check
    n = soft.shape[0]
    check.rows_total = len(rows)
    if len(rows) != n or target.shape[0] != n:
        check.disagreements.append(Disagreement(None, "rows", f"{len(rows)} rows", f"{n} soft prompts, {target.shape[0]} targets"))
        return check
    key = (source, gguf)
    if key not in models:
        models[key] = load_reference_model(source, gguf, device)
    f = _Folder(folder, models[key], config, tensors, device)
    k = n if max_problems is None else min(n, max_problems)
    idx = torch.arange(k)
    check.rows_checked = k
    if f.positions is None and (f.has_context or soft.shape[:2] != target.shape[:2]):
        check.disagreements.append(Disagreement(None, "target_positions", "absent", "needed: the target does not cover the input"))
        return check
    _check_budget(check, config, soft, rows[:k])
    _check_metrics(check, f, rows, idx, soft[:k], target[:k], tensors.get("corpus_mean"), tol)
    _check_restarts(check, f, rows, idx, target[:k], tol)
    _check_token_inputs(check, f, tensors, soft[:k], k)
    _check_recovery(check, rows, tensors, k)
    _check_token_baselines(check, f, rows, idx, tensors, target[:k], tol)
    _check_draw_baselines(check, f, rows, idx, tensors, target[:k], tol)
    if not f.has_context and any("copy_cos" in r for r in rows[:k]):
        _check_copy(check, f, rows, target[:k], config, tol)
    if continue_steps:
        _check_converged(check, f, config, tensors, rows, soft[:k], target[:k], continue_steps)
    return check


def _check_converged(check, f: _Folder, config, tensors, rows, soft, target, steps) -> None:
    """Rows called `converged` gain at most MAX_GAIN when an optimiser of this check's own continues them."""
    from .convergence_check import MAX_GAIN, continue_rows, skip_reason

    reason = skip_reason(config, tensors)
    if reason or not any("verdict" in r for r in rows[: len(soft)]):
        check.continuation = f"not continued: {reason or 'no verdicts'}"
        return
    result = continue_rows(f, config, rows, soft, target, _cap(config), steps)
    check.continuation = result.summary()
    check.fields.add("convergence")
    for i, (verdict, gain) in enumerate(zip(result.verdicts, result.gain.tolist())):
        if verdict == "converged" and gain > MAX_GAIN:
            check.disagreements.append(Disagreement(i, "verdict", "converged (gains <= 0.005 when continued)",
                                                    f"gains {gain:.4f} in {steps} steps of projected gradient descent"))


def _compare(check: FolderCheck, row: int, name: str, reported, recomputed: float, tol: float, relative: bool = False,
             group: str | None = None):
    """Record `name` (listed as `group` among the checks) as compared; a disagreement beyond the tolerance."""
    if reported is None or (isinstance(reported, float) and math.isnan(reported) and math.isnan(recomputed)):
        return
    check.fields.add(group or name)
    diff = abs(float(reported) - recomputed)
    if relative:
        bad = diff > 10 * tol * max(abs(recomputed), 1e-6) and diff > 1e-7
    else:
        check.worst_cos = max(check.worst_cos, diff)
        bad = not diff <= tol
    if bad:
        check.disagreements.append(Disagreement(row, name, float(reported), recomputed))


def _cap(config: dict) -> float | None:
    cap = config.get("norm_budget")
    return None if cap is None or math.isinf(float(cap)) else float(cap)


def _check_budget(check: FolderCheck, config: dict, soft: torch.Tensor, rows: list[dict]) -> None:
    """Every saved input vector within the folder's cap; `input_norm_max` as stated."""
    cap = _cap(config)
    norms = soft.norm(dim=-1).amax(1)  # [k]
    for i, r in enumerate(rows):
        if cap is not None:
            check.fields.add("norm_budget")
            if float(norms[i]) > cap * (1 + 1e-4) + 1e-6:
                check.disagreements.append(Disagreement(i, "norm_budget", f"cap {cap:.6g}", f"an input vector of norm {float(norms[i]):.6g}"))
        if "input_norm_max" in r:
            _compare(check, i, "input_norm_max", r["input_norm_max"], float(norms[i]), 1e-4, relative=True)


def _metrics(h: torch.Tensor, t: torch.Tensor, corpus_mean: torch.Tensor | None, no_pos0: bool) -> dict:
    """Per-problem metrics [k] of reached residuals h against targets t ([k, P, d]), as the contract defines them."""
    cos = F.cosine_similarity(h, t, dim=-1)  # [k, P]
    sq = (h - t) ** 2
    out = {"cos": cos.mean(1), "mse": sq.mean((1, 2)), "cos_per_position": cos}
    if no_pos0:
        out["cos_no_pos0"], out["mse_no_pos0"] = cos[:, 1:].mean(1), sq[:, 1:].mean((1, 2))
    if corpus_mean is not None:
        mu = corpus_mean.float()[: h.shape[1]]
        centred = F.cosine_similarity(h - mu, t - mu, dim=-1)
        var = ((t - mu) ** 2).sum(-1)  # [k, P]
        out["centred_cos"], out["fvu"] = centred.mean(1), sq.sum((1, 2)) / var.sum(1).clamp_min(1e-12)
        if no_pos0:
            out["centred_cos_no_pos0"] = centred[:, 1:].mean(1)
            out["fvu_no_pos0"] = sq[:, 1:].sum((1, 2)) / var[:, 1:].sum(1).clamp_min(1e-12)
    return out


def _check_metrics(check, f: _Folder, rows, idx, soft, target, corpus_mean, tol) -> None:
    h = f.residual(idx, soft)
    m = _metrics(h, target, None if f.has_context else corpus_mean, not f.has_context and target.shape[1] > 1)
    for i in idx.tolist():
        r = rows[i]
        for name in COSINE_FIELDS + RELATIVE_FIELDS:
            if name in r and name in m:
                _compare(check, i, name, r[name], float(m[name][i]), tol, relative=name in RELATIVE_FIELDS)
        if isinstance(r.get("cos_per_position"), list):
            check.fields.add("cos_per_position")
            diff = (torch.tensor(r["cos_per_position"]) - m["cos_per_position"][i]).abs().max().item()
            if not diff <= tol:
                check.disagreements.append(Disagreement(i, "cos_per_position", "as saved", f"max difference {diff:.3g}"))


def _check_restarts(check, f: _Folder, rows, idx, target, tol) -> None:
    """`restart_cos` / `restart_mse` from every restart's saved input (curves.safetensors)."""
    path = check.folder / "curves.safetensors"
    if not path.is_file() or not any("restart_cos" in rows[i] for i in idx.tolist()):
        return
    from safetensors import safe_open

    with safe_open(str(path), "pt") as fh:
        if "all_soft_prompts" not in fh.keys():
            return
        every = fh.get_tensor("all_soft_prompts")[: len(idx)].float()  # [k, R, K, d]
    k, r = every.shape[:2]
    rows_rep = idx.repeat_interleave(r)
    h = f.residual(rows_rep, every.reshape(k * r, *every.shape[2:]))
    m = _metrics(h, target.repeat_interleave(r, dim=0), None, False)
    for i in idx.tolist():
        for name, key in (("restart_cos", "cos"), ("restart_mse", "mse")):
            for j, reported in enumerate(rows[i].get(name, [])):
                _compare(check, i, f"{name}[{j}]", reported, float(m[key][i * r + j]), tol, key == "mse", name)


def _check_token_inputs(check, f: _Folder, tensors: dict, soft: torch.Tensor, k: int) -> None:
    """Discrete solutions: the saved inputs are the embedding rows of the saved token ids."""
    for name in TOKEN_TENSORS:
        if name in tensors:
            check.fields.add(name)
            rows = f.embed(tensors[name][:k].long().to(f.device)).float().cpu()
            diff = (rows - soft).abs().amax((1, 2))
            for i in torch.nonzero(diff > 1e-5).flatten().tolist():
                check.disagreements.append(Disagreement(i, name, "soft_prompt = their embeddings", f"max difference {float(diff[i]):.3g}"))


def _check_recovery(check, rows, tensors: dict, k: int) -> None:
    """Known answers: token_recovery / exact_recovery agree with the saved solution ids and source tokens."""
    if "solution_tokens" not in tensors or "tokens" not in tensors:
        return
    same = (tensors["solution_tokens"][:k].long() == tensors["tokens"][:k].long()).float()  # [k, K]
    for i in range(k):
        _compare(check, i, "token_recovery", rows[i].get("token_recovery"), float(same[i].mean()), 1e-9)
        _compare(check, i, "exact_recovery", rows[i].get("exact_recovery"), float(same[i].min()), 1e-9)


def _check_token_baselines(check, f: _Folder, rows, idx, tensors, target, tol) -> None:
    """Saved source tokens produce the targets (`source_cos` where stated); `own_cos` from the text's own tokens."""
    if "tokens" in tensors:
        h = f.token_residual(idx, tensors["tokens"][: len(idx)], "none")  # targets are unablated residuals
        cos = F.cosine_similarity(h, target, dim=-1)  # [k, P]
        check.fields.add("tokens")
        for i in idx.tolist():
            if f.ablation == "none" and float(cos[i].min()) < 0.9995:
                check.disagreements.append(Disagreement(i, "tokens", "they produce the target",
                                                        f"min cos {float(cos[i].min()):.5f} to the target"))
            if "source_cos" in rows[i]:
                _compare(check, i, "source_cos", rows[i]["source_cos"], float(cos[i].mean()), tol)
    if "own_tokens" in tensors and any("own_cos" in rows[i] for i in idx.tolist()):
        h = f.token_residual(idx, tensors["own_tokens"][: len(idx)])
        cos = F.cosine_similarity(h, target, dim=-1).mean(1)
        for i in idx.tolist():
            _compare(check, i, "own_cos", rows[i].get("own_cos"), float(cos[i]), tol)


def _check_draw_baselines(check, f: _Folder, rows, idx, tensors, target, tol) -> None:
    """Baselines of random token draws, recomputed from the saved draws [N, draws, K]: the floor (`floor_cos`,
    `floor_cos_no_pos0`; the folder's ablation) and the near miss (`near_miss_cos`; unablated)."""
    for name, field, ablation in (("floor_tokens", "floor_cos", None), ("near_miss_tokens", "near_miss_cos", "none")):
        if name not in tensors or not any(field in rows[i] for i in idx.tolist()):
            continue
        check.fields.add(field)
        draws = tensors[name][: len(idx)]  # [k, draws, K]
        cos = torch.stack([F.cosine_similarity(f.token_residual(idx, draws[:, j], ablation), target, dim=-1)
                           for j in range(draws.shape[1])])  # [draws, k, P]
        for i in idx.tolist():
            _compare(check, i, field, rows[i].get(field), float(cos[:, i].mean()), tol)
            if field == "floor_cos" and f"{field}_no_pos0" in rows[i]:
                _compare(check, i, f"{field}_no_pos0", rows[i][f"{field}_no_pos0"], float(cos[:, i, 1:].mean()), tol)


def _check_copy(check, f: _Folder, rows, target, config, tol) -> None:
    """The stated copy baseline is no weaker than the best of this check's own scaled copies (within the cap)."""
    cap = _cap(config)
    best, best_np0 = torch.full((len(target),), -2.0), torch.full((len(target),), -2.0)
    idx = torch.arange(len(target))
    for a in COPY_GRID:
        cos = F.cosine_similarity(f.residual(idx, clip_norms(a * target, cap)), target, dim=-1)  # [k, P]
        best = torch.maximum(best, cos.mean(1))
        if cos.shape[1] > 1:
            best_np0 = torch.maximum(best_np0, cos[:, 1:].mean(1))
    for i in idx.tolist():
        for name, mine in (("copy_cos", best[i]), ("copy_cos_no_pos0", best_np0[i])):
            if name in rows[i]:
                check.fields.add("copy baseline")
                if float(mine) - float(rows[i][name]) > tol:
                    check.disagreements.append(Disagreement(i, name, float(rows[i][name]),
                                                            f"{float(mine):.6g} from a plain scaled copy (stated weaker)"))
