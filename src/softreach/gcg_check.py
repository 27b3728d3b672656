"""Our GCG against nanoGCG (a maintained GCG package) on nanoGCG's own objective, at equal forward passes.

The objective is nanoGCG's: a chat prompt with the optimised tokens in it, and the mean next-token
cross-entropy of a target string after it. Both searches start from nanoGCG's default string, sample
single-token swaps from the top-k tokens of the one-hot gradient, and may use the same tokens (ASCII,
printable, not special: nanoGCG's default filter). Budget: nanoGCG's `num_steps` x (`search_width` + 1 gradient
pass) + 1 start evaluation forward passes, ours the same number (token_search.gcg_minimise).
nanoGCG is not a dependency: `pip install nanogcg --no-deps` (its metadata pins transformers <= 4.47; the
search itself runs with the transformers softreach installs).
"""
from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from .errors import UserError
from .manifold import token_table
from .models import LoadedModel
from .token_search import GCGConfig, gcg_minimise

PROMPT = "Tell me about the weather."
TARGET = "Sure, here is a poem about cats:"
INIT = "x x x x x x x x x x x x x x x x x x x x"  # nanoGCG's default start


def prompt_pieces(tokenizer, prompt: str, target: str) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Token ids before and after the optimised tokens, and of the target, built as nanoGCG builds them."""
    template = tokenizer.apply_chat_template([{"role": "user", "content": prompt + "{optim_str}"}], tokenize=False,
                                             add_generation_prompt=True)
    if tokenizer.bos_token and template.startswith(tokenizer.bos_token):
        template = template.replace(tokenizer.bos_token, "")
    before, after = template.split("{optim_str}")
    ids = lambda text, special: torch.tensor(tokenizer(text, add_special_tokens=special)["input_ids"])  # noqa: E731
    return ids(before, True), ids(after, False), ids(target, False)


def allowed_tokens(lm: LoadedModel) -> torch.Tensor:
    """Ordinary tokens that decode to printable ASCII (nanoGCG's allow_non_ascii=False), ascending."""
    ordinary = lm.ordinary_token_ids().cpu()
    keep = [int(i) for i in ordinary if (s := lm.tokenizer.decode([int(i)])).isascii() and s.isprintable()]
    return torch.tensor(sorted(keep))


def target_loss_objective(lm: LoadedModel, before: torch.Tensor, after: torch.Tensor, target: torch.Tensor,
                          emb: torch.Tensor, batch: int = 64):
    """(score, gradient) for gcg_minimise: mean cross-entropy of `target` after before + ids + after.

    score(ids [C, T], base) -> (loss [C], loss [C]) (base unused); gradient(table rows [T]) -> [T, V'] over the rows of emb [V', d].
    """
    dev = lm.device
    embed = lm.model.get_input_embeddings()
    fixed = [embed(x.to(dev))[None] for x in (before, after, target)]  # [1, *, d] each
    tgt = target.to(dev)

    def loss_of(x: torch.Tensor) -> torch.Tensor:  # optimised embeddings [C, T, d] -> [C]
        c = x.shape[0]
        full = torch.cat([fixed[0].expand(c, -1, -1), x, fixed[1].expand(c, -1, -1), fixed[2].expand(c, -1, -1)], 1)
        logits = lm.model(inputs_embeds=full).logits[:, -tgt.numel() - 1 : -1].float()  # [C, n_target, V]
        return F.cross_entropy(logits.transpose(1, 2), tgt.expand(c, -1), reduction="none").mean(1)

    @torch.no_grad()
    def score(ids: torch.Tensor, base: torch.Tensor | None = None):
        out = torch.cat([loss_of(embed(ids[lo : lo + batch].to(dev))).cpu() for lo in range(0, ids.shape[0], batch)])
        return out, out

    def gradient(rows: torch.Tensor) -> torch.Tensor:
        one_hot = F.one_hot(rows.to(dev), emb.shape[0]).float()[None].requires_grad_(True)  # [1, T, V']
        (g,) = torch.autograd.grad(loss_of(one_hot @ emb).sum(), one_hot)
        return g[0]

    return score, gradient


def compare_with_nanogcg(lm: LoadedModel, steps: int = 10, width: int = 64, top_k: int = 64, seeds=(0, 1, 2),
                         prompt: str = PROMPT, target: str = TARGET, log=print) -> dict:
    """Best loss of nanoGCG and of our GCG per seed, at equal forward passes; a dict for the bench."""
    try:
        import nanogcg
    except ImportError:
        raise UserError("the nanoGCG comparison needs nanogcg: pip install nanogcg --no-deps") from None
    before, after, target_ids = prompt_pieces(lm.tokenizer, prompt, target)
    allowed = allowed_tokens(lm)
    table = token_table(lm, allowed)
    init = torch.tensor(lm.tokenizer(INIT, add_special_tokens=False)["input_ids"])
    score, gradient = target_loss_objective(lm, before, after, target_ids, table.emb.to(lm.device).float())
    budget = 1 + steps * (width + 1)
    rows = []
    for seed in seeds:
        log(f"nanoGCG, seed {seed}: {steps} steps x {width} candidates ...")
        start = time.perf_counter()
        cfg = nanogcg.GCGConfig(num_steps=steps, search_width=width, topk=top_k, seed=seed, verbosity="WARNING",
                                use_prefix_cache=False, filter_ids=False, allow_non_ascii=False)
        theirs = nanogcg.run(lm.model, lm.tokenizer, prompt, target, cfg)
        their_seconds = time.perf_counter() - start
        log(f"ours, seed {seed}: budget {budget} forward passes ...")
        start = time.perf_counter()
        ours = gcg_minimise(score, gradient, init, GCGConfig(budget=budget, top_k=top_k, candidates=width,
                                                              stop_loss=0.0), table, seed)
        rows.append({"seed": seed, "nanogcg_loss": float(theirs.best_loss), "ours_loss": ours["loss"],
                     "start_loss": ours["start_loss"], "ours_passes": ours["passes"], "budget": budget,
                     "nanogcg_seconds": their_seconds, "ours_seconds": time.perf_counter() - start,
                     "nanogcg_string": theirs.best_string, "ours_string": lm.tokenizer.decode(ours["ids"])})
    torch.use_deterministic_algorithms(False)  # nanoGCG switches it on with a seed
    return {"steps": steps, "width": width, "top_k": top_k, "prompt": prompt, "target": target, "rows": rows,
            "allowed_tokens": int(allowed.numel())}


def comparison_table(comp: dict) -> str:
    """The comparison as markdown: best target cross-entropy per seed, both searches."""
    lines = [f"GCG against nanoGCG {comp['steps']} steps x {comp['width']} candidates (top-k {comp['top_k']}, "
             f"{comp['rows'][0]['budget']} forward passes each, {comp['allowed_tokens']} allowed tokens), prompt "
             f"{comp['prompt']!r}, target {comp['target']!r}: best mean cross-entropy of the target",
             "| seed | start | nanoGCG | ours | nanoGCG s | ours s |", "|---|---|---|---|---|---|"]
    for r in comp["rows"]:
        lines.append(f"| {r['seed']} | {r['start_loss']:.3f} | {r['nanogcg_loss']:.3f} | {r['ours_loss']:.3f} | "
                     f"{r['nanogcg_seconds']:.0f} | {r['ours_seconds']:.0f} |")
    return "\n".join(lines) + "\n"
