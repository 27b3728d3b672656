import pytest
import torch

from softreach.corpus import load_corpus_text
from softreach.errors import UserError
from softreach.targets import real_targets
from softreach.targets import sample_windows, tokenize_windows

TEXT = "The quick brown fox jumps over the lazy dog. " * 40


def test_windows_are_reproducible_by_seed(tiny_lm):
    w = tokenize_windows(tiny_lm, TEXT, 10)
    assert w.tokens.shape == (len(TEXT) // 10, 10)
    torch.testing.assert_close(sample_windows(w, 5, seed=1), sample_windows(w, 5, seed=1))
    assert not torch.equal(sample_windows(w, 5, seed=1), sample_windows(w, 5, seed=2))
    assert len(set(sample_windows(w, 20, seed=1).tolist())) == 20


def test_real_targets_are_the_residuals_of_their_tokens(tiny_lm):
    w = tokenize_windows(tiny_lm, TEXT, 12)
    tokens, target, _ = real_targets(tiny_lm, w, layer=3, count=4, seed=0)
    from softreach.residual import residual_at

    via_embeddings = residual_at(tiny_lm.model, 3, inputs_embeds=tiny_lm.embedding_matrix[tokens]).detach()
    assert torch.nn.functional.cosine_similarity(via_embeddings, target, dim=-1).min() > 0.9999


def test_too_many_targets_is_refused(tiny_lm):
    w = tokenize_windows(tiny_lm, TEXT, 50)
    with pytest.raises(UserError, match="only 36 windows"):
        sample_windows(w, 37, seed=0)


def test_corpus_shorter_than_a_window_is_refused(tiny_lm):
    with pytest.raises(UserError, match="corpus too short"):
        tokenize_windows(tiny_lm, "short", 20)


def test_sequence_longer_than_the_model_is_refused(tiny_lm):
    with pytest.raises(UserError, match="exceeds the model's 64 positions"):
        tokenize_windows(tiny_lm, TEXT, 65)


def test_corpora(tmp_path):
    assert len(load_corpus_text("default")) > 100_000
    f = tmp_path / "c.txt"
    f.write_text("hello there")
    assert load_corpus_text(str(f)) == "hello there"
    (tmp_path / "empty.txt").write_text("  \n")
    with pytest.raises(UserError, match="empty"):
        load_corpus_text(str(tmp_path / "empty.txt"))
    with pytest.raises(UserError, match="not found"):
        load_corpus_text(str(tmp_path / "missing.txt"))
