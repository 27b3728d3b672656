import pytest
import torch
import torch.nn.functional as F

from softreach.errors import UserError
from softreach.residual import all_layer_residuals, decoder_blocks, residual_at


def _final_norm(model):
    for name in ("norm", "final_layer_norm", "ln_f"):
        for module in (getattr(model, "model", None), getattr(model, "gpt_neox", None), getattr(model, "transformer", None)):
            if module is not None and hasattr(module, name):
                return getattr(module, name)
    raise AssertionError("no final norm found")


def test_residual_equals_hidden_states_at_every_layer(tiny_lm):
    model = tiny_lm.model
    ids = torch.randint(2, 100, (3, 9), generator=torch.Generator().manual_seed(0))
    x = model.get_input_embeddings()(ids)
    with torch.no_grad():
        hs = model(inputs_embeds=x, output_hidden_states=True).hidden_states
        for layer in range(1, tiny_lm.n_layers):
            torch.testing.assert_close(residual_at(model, layer, inputs_embeds=x), hs[layer], rtol=0, atol=1e-5)
        # hidden_states[n] has the final norm applied; our layer n is the raw output of the last block
        last = residual_at(model, tiny_lm.n_layers, inputs_embeds=x)
        assert not torch.allclose(last, hs[-1], atol=1e-3)
        torch.testing.assert_close(_final_norm(model)(last), hs[-1], rtol=0, atol=1e-5)


def test_last_layer_equals_a_hook_on_the_last_block(tiny_lm):
    model = tiny_lm.model
    seen = {}
    handle = decoder_blocks(model)[-1].register_forward_hook(
        lambda _m, _i, o: seen.__setitem__("h", o[0] if isinstance(o, tuple) else o))
    x = torch.randn(2, 5, tiny_lm.d_model)
    with torch.no_grad():
        model(inputs_embeds=x)
    handle.remove()
    torch.testing.assert_close(residual_at(model, tiny_lm.n_layers, inputs_embeds=x), seen["h"])


def test_forward_stops_at_the_target_layer(tiny_lm):
    calls = []
    handles = [b.register_forward_hook(lambda _m, _i, _o, k=k: calls.append(k))
               for k, b in enumerate(decoder_blocks(tiny_lm.model))]
    residual_at(tiny_lm.model, 2, inputs_embeds=torch.randn(1, 4, tiny_lm.d_model))
    for h in handles:
        h.remove()
    assert calls == [0, 1]


def test_token_ids_and_their_embeddings_agree(tiny_lm):
    ids = torch.randint(2, 100, (2, 12), generator=torch.Generator().manual_seed(1))
    emb = tiny_lm.embedding_matrix[ids]
    a = residual_at(tiny_lm.model, 3, input_ids=ids)
    b = residual_at(tiny_lm.model, 3, inputs_embeds=emb)
    assert F.cosine_similarity(a, b, dim=-1).min() > 0.9999


def test_gradients_reach_the_input_and_not_the_weights(tiny_lm):
    x = torch.randn(2, 6, tiny_lm.d_model, requires_grad=True)
    residual_at(tiny_lm.model, 2, inputs_embeds=x).sum().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0
    assert all(p.grad is None for p in tiny_lm.model.parameters())


@pytest.mark.parametrize("layer", [0, 5, -1])
def test_layer_outside_range_is_refused(tiny_lm, layer):
    with pytest.raises(UserError, match="outside 1..4"):
        residual_at(tiny_lm.model, layer, inputs_embeds=torch.randn(1, 3, tiny_lm.d_model))


def test_all_layer_residuals_match_single_layers(tiny_lm):
    x = torch.randn(2, 5, tiny_lm.d_model)
    traj = all_layer_residuals(tiny_lm.model, x)
    assert traj.shape == (tiny_lm.n_layers + 1, 2, 5, tiny_lm.d_model)
    for layer in range(1, tiny_lm.n_layers + 1):
        torch.testing.assert_close(traj[layer], residual_at(tiny_lm.model, layer, inputs_embeds=x).detach())
