"""Discrete rungs in the soft slots of a steering frame, and the vocabulary-density restriction (also in the
constraint ladder)."""
import json

import pytest
import torch
from conftest import verify
from safetensors.torch import load_file

from softreach.ladder.config import LadderSettings
from softreach.errors import UserError
from softreach.frame import TextFrame, frame_residual_of_tokens
from softreach.manifold import token_table
from softreach.random_models import random_model
from softreach.steer.rungs import evaluate_slot_tokens, steer_rung
from softreach.steer.targets import SteerTargets
from softreach.vocab import frequent_tokens

LAYER = 2
SETTINGS = LadderSettings(steps=6, gcg_budget=30, gcg_candidates=6, gcg_top_k=5, floor_draws=0)


@pytest.fixture(scope="module")
def lm():
    return random_model("gpt_neox", n_layers=3)


@pytest.fixture(scope="module")
def problems(lm):
    """Two texts (3 tokens before, 3 slots, 4 after) steered at the positions after the slots; targets are
    the residuals of other slot tokens (reachable)."""
    g = torch.Generator().manual_seed(0)
    before, after = torch.randint(2, 100, (2, 3), generator=g), torch.randint(2, 100, (2, 4), generator=g)
    frame = TextFrame(before, after, 3, torch.arange(6, 10))
    own = torch.randint(2, 100, (2, 3), generator=g)
    source = torch.randint(2, 100, (2, 3), generator=g)
    target = frame_residual_of_tokens(lm.model, LAYER, frame, source)
    return SteerTargets(frame, target, own, source, [None, None], [0, 1])


def test_projection_ids_are_the_nearest_allowed_tokens(lm, problems):
    soft = torch.randn(2, 3, lm.d_model)
    vocab = torch.arange(10, 60)
    ids, info = steer_rung(lm, LAYER, problems, "projection", soft, SETTINGS, 0, vocab)
    emb = lm.embedding_matrix.detach().float()[vocab]
    cos = torch.nn.functional.normalize(soft, dim=-1) @ torch.nn.functional.normalize(emb, dim=-1).T  # [2, 3, 50]
    assert torch.equal(ids, vocab[cos.argmax(-1)])
    assert info["vocab_size"] == 50
    full, _ = steer_rung(lm, LAYER, problems, "projection", soft, SETTINGS, 0)  # every ordinary token
    assert torch.isin(full, lm.ordinary_token_ids()).all()


@pytest.mark.parametrize("vocab", [None, torch.arange(30, 90)])
def test_gcg_never_ends_worse_than_its_start_and_reports_the_recomputed_cos(lm, problems, vocab):
    ids, info = steer_rung(lm, LAYER, problems, "gcg", None, SETTINGS, 0, vocab)
    assert ids.shape == (2, 3)
    assert all(f <= s + 1e-7 for f, s in zip(info["final_loss"], info["start_loss"]))
    assert all(p <= SETTINGS.gcg_budget for p in info["forward_passes"])
    measured = evaluate_slot_tokens(lm, LAYER, problems, ids)
    torch.testing.assert_close(measured["cos"], torch.tensor(info["cos"]), atol=1e-5, rtol=0)
    achieved = frame_residual_of_tokens(lm.model, LAYER, problems.frame, ids)
    cos = torch.nn.functional.cosine_similarity(achieved, problems.target, dim=-1)
    torch.testing.assert_close(measured["cos_per_position"], cos)
    assert set(measured) == {"cos", "mse", "cos_per_position", "kl", "top1"}
    if vocab is not None:
        assert torch.isin(ids, vocab).all()
        assert info["start_changed"] > 0  # the own tokens below 30 were replaced by allowed ones
    else:
        start = evaluate_slot_tokens(lm, LAYER, problems, problems.own_tokens, downstream=False)
        assert (measured["cos"] >= start["cos"] - 0.05).all()


def test_gcg_with_a_frame_improves_on_a_reachable_target(lm, problems):
    settings = LadderSettings(gcg_budget=120, gcg_candidates=16, gcg_top_k=8, floor_draws=0)
    ids, info = steer_rung(lm, LAYER, problems, "gcg", None, settings, 1)
    assert sum(info["accepted"]) > 0
    assert sum(info["final_loss"]) < sum(info["start_loss"])


def test_causal_slot_search_recovers_the_source_tokens_and_never_ends_worse(lm, problems):
    """Targets made by source tokens: the in-order slot search from the own tokens finds them. This tiny random
    model is nearly blind to the slots' order (a permutation of the source tokens gives loss 2e-5): single-slot
    moves stop there, the exchanges of two slots after each pass leave it (a 3-cycle takes two passes)."""
    settings = LadderSettings(floor_draws=0, causal_max_candidates=128)
    ids, info = steer_rung(lm, LAYER, problems, "causal", None, settings, 0)
    assert all(f <= s for f, s in zip(info["final_loss"], info["start_loss"]))
    assert torch.equal(ids, problems.source_tokens)
    fresh = evaluate_slot_tokens(lm, LAYER, problems, ids, downstream=False)["cos"]
    assert (fresh > 0.99999).all()
    # candidates + gradient passes (3 slots, at most 4 passes, doubling rounds) + 3 exchanges per pass + the start
    assert all(p <= 1 + 4 * 3 * (128 + 4) + 4 * 3 for p in info["forward_passes"])


def test_slot_search_is_the_same_batched_and_alone(lm, problems):
    from softreach.causal_search import slot_search

    table, optim = token_table(lm), SETTINGS.optim(SETTINGS.lr)
    noisy = problems.target + 0.5 * torch.randn(problems.target.shape, generator=torch.Generator().manual_seed(1))
    together = slot_search(lm, LAYER, noisy, problems.frame, problems.own_tokens, optim, table, max_candidates=12,
                           chunk=3)
    for i in range(2):
        alone = slot_search(lm, LAYER, noisy[i : i + 1], problems.frame.select(slice(i, i + 1)),
                            problems.own_tokens[i : i + 1], optim, table, max_candidates=12, chunk=3)
        assert torch.equal(alone.ids[0], together.ids[i])
        assert alone.forward_passes[0] == together.forward_passes[i]
        assert alone.loss[0] == pytest.approx(together.loss[i], rel=1e-4, abs=1e-7)


def test_pez_ids_are_allowed(lm, problems):
    vocab = torch.arange(40, 80)
    soft = torch.randn(2, 3, lm.d_model)
    ids, info = steer_rung(lm, LAYER, problems, "projected", soft, SETTINGS, 0, vocab)
    assert ids.shape == (2, 3) and torch.isin(ids, vocab).all()
    assert info["forward_passes"] == [SETTINGS.steps + 1] * 2
    ids2, _ = steer_rung(lm, LAYER, problems, "projected", None, SETTINGS, 0, vocab)  # from the own tokens
    assert torch.isin(ids2, vocab).all()


def test_bad_rung_and_bad_vocab_are_user_errors(lm, problems):
    with pytest.raises(UserError):
        steer_rung(lm, LAYER, problems, "mixture", None, SETTINGS, 0)
    with pytest.raises(UserError):
        steer_rung(lm, LAYER, problems, "gcg", None, SETTINGS, 0, torch.tensor([0, 1]))  # special tokens only
    with pytest.raises(UserError):
        steer_rung(lm, LAYER, problems, "projection", None, SETTINGS, 0)


def test_frequent_tokens_rank_by_count_then_id(lm):
    ordinary = lm.ordinary_token_ids()
    corpus = torch.tensor([50] * 5 + [7] * 3 + [90] * 3 + [2] + [1] * 9)  # 1 is <eos>: special, never kept
    top = frequent_tokens(lm, corpus, 100 * 4 / ordinary.numel())
    assert top.tolist() == [50, 7, 90, 2]
    assert frequent_tokens(lm, corpus, 100 * 5 / ordinary.numel()).tolist() == [50, 7, 90, 2, 3]  # unseen: by id
    assert torch.equal(torch.sort(frequent_tokens(lm, corpus, 100)).values, ordinary)
    text = "aaab"
    by_text = frequent_tokens(lm, text, 100 * 2 / ordinary.numel())
    assert by_text.tolist() == lm.tokenizer("ab", add_special_tokens=False)["input_ids"]
    for bad in (0, -1, 101, float("nan")):
        with pytest.raises(UserError):
            frequent_tokens(lm, corpus, bad)
    assert token_table(lm, top).ids.tolist() == [2, 7, 50, 90]


def test_ladder_runs_each_discrete_rung_per_vocab_percent(tmp_path):
    from softreach.ladder import run_ladder
    from softreach.models import load_model
    from softreach.random_models import save_random_model
    from softreach.targets import residuals_of_tokens

    save_random_model(tmp_path / "tiny", "llama", n_layers=2)
    lm = load_model(str(tmp_path / "tiny"), "cpu")
    tokens = torch.randint(2, 102, (3, 6), generator=torch.Generator().manual_seed(0))
    targets = residuals_of_tokens(lm, tokens, LAYER)
    corpus = torch.randint(2, 60, (400,), generator=torch.Generator().manual_seed(1))
    settings = LadderSettings(steps=5, gcg_budget=14, gcg_candidates=4, gcg_top_k=3, floor_draws=2,
                              gcg_init="projected", vocab_percent=(50, 100))
    rungs = ["free", "projected", "gcg", "projection", "random_tokens", "own_tokens"]
    out = run_ladder(lm, LAYER, targets, tokens, rungs, settings, 0, tmp_path / "ladder", vocab_corpus=corpus)
    restricted = ["projected_v50", "gcg_v50", "projection_v50", "random_tokens_v50"]
    folders = ["free", "projected", "gcg", "projection", "random_tokens", "own_tokens", *restricted]
    assert sorted(p.name for p in out.iterdir() if p.is_dir()) == sorted(folders)
    allowed = frequent_tokens(lm, corpus, 50)
    for name in restricted:
        ids = load_file(str(out / name / "tensors.safetensors"))["solution_tokens"]
        assert torch.isin(ids, allowed).all(), name
        rows = [json.loads(x) for x in (out / name / "problems.jsonl").read_text().splitlines()]
        assert all(r["vocab_percent"] == 50 and r["vocab_size"] == allowed.numel() for r in rows)
        assert json.loads((out / name / "config.json").read_text())["vocab_percent"] == 50
    assert json.loads((out / "gcg" / "problems.jsonl").read_text().splitlines()[0])["vocab_percent"] == 100
    assert "vocab_percent" not in json.loads((out / "free" / "problems.jsonl").read_text().splitlines()[0])
    for name, (code, text) in verify([out / f for f in folders]).items():
        assert code == 0, f"{name}: {text}"
    with pytest.raises(UserError):
        run_ladder(lm, LAYER, targets, tokens, ["gcg"], settings, 0, tmp_path / "other")  # no corpus
