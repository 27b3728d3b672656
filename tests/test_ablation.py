import copy

import pytest
import torch

from softreach.residual import ablated, decoder_blocks, residual_at

# output projections whose zeroed weights (and biases) silence a sublayer, per family
OUT_PROJ = {
    "GPTNeoXLayer": {"attn": "attention.dense", "mlp": "mlp.dense_4h_to_h"},
    "LlamaDecoderLayer": {"attn": "self_attn.o_proj", "mlp": "mlp.down_proj"},
    "GPT2Block": {"attn": "attn.c_proj", "mlp": "mlp.c_proj"},
}


def _silenced_copy(model, kind):
    model = copy.deepcopy(model)
    for block in decoder_blocks(model):
        proj = block.get_submodule(OUT_PROJ[type(block).__name__][kind])
        with torch.no_grad():
            proj.weight.zero_()
            if getattr(proj, "bias", None) is not None:
                proj.bias.zero_()
    return model


@pytest.mark.parametrize("ablation, kind", [("no_attn", "attn"), ("no_mlp", "mlp")])
def test_ablation_hooks_equal_zeroed_output_weights(tiny_lm, ablation, kind):
    """Works for parallel (GPT-NeoX) and sequential (Llama, GPT-2) blocks alike."""
    x = torch.randn(2, 7, tiny_lm.d_model)
    silenced = _silenced_copy(tiny_lm.model, kind)
    for layer in (1, tiny_lm.n_layers):
        hooked = residual_at(tiny_lm.model, layer, inputs_embeds=x, ablation=ablation)
        torch.testing.assert_close(hooked, residual_at(silenced, layer, inputs_embeds=x), rtol=0, atol=1e-5)
        assert not torch.allclose(hooked, residual_at(tiny_lm.model, layer, inputs_embeds=x), atol=1e-3)


def test_without_attention_positions_are_independent(tiny_lm):
    x = torch.randn(1, 6, tiny_lm.d_model)
    y = x.clone()
    y[0, :3] = torch.randn(3, tiny_lm.d_model)  # change positions 0..2 only
    a = residual_at(tiny_lm.model, tiny_lm.n_layers, inputs_embeds=x, ablation="no_attn")
    b = residual_at(tiny_lm.model, tiny_lm.n_layers, inputs_embeds=y, ablation="no_attn")
    torch.testing.assert_close(a[0, 3:], b[0, 3:], rtol=0, atol=1e-6)
    full_a = residual_at(tiny_lm.model, tiny_lm.n_layers, inputs_embeds=x)
    full_b = residual_at(tiny_lm.model, tiny_lm.n_layers, inputs_embeds=y)
    assert not torch.allclose(full_a[0, 3:], full_b[0, 3:], atol=1e-4)  # with attention they do depend


def test_hooks_are_removed_afterwards(tiny_lm):
    x = torch.randn(1, 4, tiny_lm.d_model)
    before = residual_at(tiny_lm.model, 2, inputs_embeds=x)
    with ablated(tiny_lm.model, "no_mlp"):
        pass
    residual_at(tiny_lm.model, 2, inputs_embeds=x, ablation="no_attn")
    torch.testing.assert_close(residual_at(tiny_lm.model, 2, inputs_embeds=x), before)
