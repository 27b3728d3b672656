"""The nanoGCG comparison's objective: nanoGCG's prompt pieces and loss, searched by our GCG core."""
import sys

import pytest
import torch
import torch.nn.functional as F

from softreach.errors import UserError
from softreach.gcg_check import compare_with_nanogcg, prompt_pieces, target_loss_objective
from softreach.manifold import token_table
from softreach.token_search import GCGConfig, gcg_minimise


def _pieces():
    g = torch.Generator().manual_seed(0)
    return (torch.randint(2, 100, (4,), generator=g), torch.randint(2, 100, (3,), generator=g),
            torch.randint(2, 100, (5,), generator=g))


def test_loss_is_the_target_cross_entropy_of_the_whole_input(tiny_lm):
    before, after, target = _pieces()
    table = token_table(tiny_lm)
    score, gradient = target_loss_objective(tiny_lm, before, after, target, table.emb)
    ids = torch.randint(2, 100, (3, 6), generator=torch.Generator().manual_seed(1))
    loss, _ = score(ids)
    for i in range(3):
        full = torch.cat([before, ids[i], after, target])[None]
        logits = tiny_lm.model(input_ids=full).logits[0]
        expected = F.cross_entropy(logits[-target.numel() - 1 : -1], target)
        torch.testing.assert_close(loss[i], expected, rtol=1e-5, atol=1e-6)
    # the one-hot gradient: one row per optimised position, one column per allowed token
    rows = torch.searchsorted(table.ids, ids[0])
    g = gradient(rows)  # [T, V']
    assert g.shape == (6, table.ids.numel()) and torch.isfinite(g).all()


def test_our_gcg_lowers_the_target_loss(tiny_lm):
    before, after, target = _pieces()
    table = token_table(tiny_lm)
    score, gradient = target_loss_objective(tiny_lm, before, after, target, table.emb)
    init = torch.full((6,), 50)
    run = gcg_minimise(score, gradient, init, GCGConfig(budget=200, top_k=16, candidates=32), table, seed=0)
    assert run["loss"] < run["start_loss"] and run["passes"] <= 200
    assert run["loss"] == pytest.approx(float(score(run["ids"][None])[0][0]), rel=1e-5)


def test_prompt_pieces_split_the_chat_template_at_the_optimised_string(smollm2):
    before, after, target = prompt_pieces(smollm2.tokenizer, "Hi there.", "Sure")
    text = smollm2.tokenizer.decode(torch.cat([before, after]))
    assert "Hi there." in smollm2.tokenizer.decode(before) and "assistant" in smollm2.tokenizer.decode(after)
    assert text.count("Hi there.") == 1 and smollm2.tokenizer.decode(target) == "Sure"


def test_the_comparison_says_how_to_install_nanogcg(tiny_lm, monkeypatch):
    monkeypatch.setitem(sys.modules, "nanogcg", None)
    with pytest.raises(UserError, match="pip install nanogcg"):
        compare_with_nanogcg(tiny_lm)
