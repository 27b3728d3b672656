"""Continuing the model from a layer-L residual: exact against the ordinary forward and the final norm + head."""
import pytest
import torch

from softreach.downstream import logits_from_residual, next_token_agreement
from softreach.residual import residual_at


def _final_norm(model):
    for path in ("model.norm", "gpt_neox.final_layer_norm", "transformer.ln_f"):
        obj = model
        try:
            for part in path.split("."):
                obj = getattr(obj, part)
            return obj
        except AttributeError:
            continue
    raise AssertionError("no final norm found")


def _ids(n=2, t=7, seed=0):
    return torch.randint(2, 100, (n, t), generator=torch.Generator().manual_seed(seed))


def test_continuing_from_the_models_own_residual_reproduces_its_logits(tiny_lm):
    ids = _ids()
    with torch.no_grad():
        ordinary = tiny_lm.model(input_ids=ids).logits
    for layer in range(1, tiny_lm.n_layers + 1):
        with torch.no_grad():
            h = residual_at(tiny_lm.model, layer, input_ids=ids)
        torch.testing.assert_close(logits_from_residual(tiny_lm, layer, h), ordinary, rtol=1e-4, atol=1e-5)


def test_at_the_last_layer_it_is_the_final_norm_and_the_head(tiny_lm):
    h = torch.randn(3, 5, tiny_lm.d_model)
    with torch.no_grad():
        direct = tiny_lm.model.get_output_embeddings()(_final_norm(tiny_lm.model)(h))
    torch.testing.assert_close(logits_from_residual(tiny_lm, tiny_lm.n_layers, h), direct, rtol=1e-5, atol=1e-5)


def test_reaching_the_target_exactly_gives_kl_zero_and_full_agreement(tiny_lm):
    with torch.no_grad():
        target = residual_at(tiny_lm.model, 2, input_ids=_ids())
    m = next_token_agreement(tiny_lm, 2, target.clone(), target)
    assert m["kl"].abs().max() < 1e-6 and m["kl_no_pos0"].abs().max() < 1e-6
    assert (m["top1"] == 1).all() and (m["top1_no_pos0"] == 1).all()
    assert m["kl_per_position"].shape == (2, 7)


def test_another_state_gives_positive_kl(tiny_lm):
    with torch.no_grad():
        target = residual_at(tiny_lm.model, 2, input_ids=_ids(seed=0))
        other = residual_at(tiny_lm.model, 2, input_ids=_ids(seed=1))
    m = next_token_agreement(tiny_lm, 2, other, target, batch_size=1)
    assert (m["kl"] > 0).all()
    p = torch.log_softmax(logits_from_residual(tiny_lm, 2, target), -1)
    q = torch.log_softmax(logits_from_residual(tiny_lm, 2, other), -1)
    expected = torch.nn.functional.kl_div(q, p, log_target=True, reduction="none").sum(-1).mean(1)
    torch.testing.assert_close(m["kl"], expected, rtol=1e-4, atol=1e-7)


def test_bad_layers_are_refused(tiny_lm):
    from softreach.errors import UserError

    with pytest.raises(UserError):
        logits_from_residual(tiny_lm, 0, torch.zeros(1, 2, tiny_lm.d_model))
