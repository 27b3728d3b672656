"""Random-weight models built in code (no download): tiny configs for tests, real shapes for benchmarks."""
from __future__ import annotations

import string

import torch

from .models import LoadedModel, wrap_model

ARCHS = ("gpt_neox", "llama", "gpt2")


def char_tokenizer():
    """A character-level fast tokenizer over printable ASCII (vocab 100 + <unk>, <eos>)."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    chars = sorted(set(string.printable))
    vocab = {"<unk>": 0, "<eos>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.Split("", "isolated")
    tok.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="<eos>")


def random_config(arch: str, d_model: int = 32, n_layers: int = 4, n_heads: int = 4, vocab: int = 128,
                  d_mlp: int | None = None, max_positions: int = 64):
    """A transformers config for a random model of the given family and shape."""
    from transformers import GPT2Config, GPTNeoXConfig, LlamaConfig

    d_mlp = d_mlp or 4 * d_model
    if arch == "gpt_neox":  # parallel residual, like Pythia
        return GPTNeoXConfig(hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                             num_attention_heads=n_heads, vocab_size=vocab, max_position_embeddings=max_positions,
                             use_parallel_residual=True, rotary_pct=0.25, bos_token_id=1, eos_token_id=1)
    if arch == "llama":
        return LlamaConfig(hidden_size=d_model, intermediate_size=d_mlp, num_hidden_layers=n_layers,
                           num_attention_heads=n_heads, num_key_value_heads=max(1, n_heads // 2), vocab_size=vocab,
                           max_position_embeddings=max_positions, bos_token_id=1, eos_token_id=1,
                           tie_word_embeddings=True)
    if arch == "gpt2":
        return GPT2Config(n_embd=d_model, n_layer=n_layers, n_head=n_heads, vocab_size=vocab, n_positions=max_positions,
                          bos_token_id=1, eos_token_id=1, n_inner=d_mlp)
    raise ValueError(f"unknown arch {arch!r}: choose from {ARCHS}")


def random_model(arch: str = "gpt_neox", seed: int = 0, device: str = "cpu", **shape) -> LoadedModel:
    """A frozen random model with the character tokenizer, ready for the engine."""
    from transformers import AutoModelForCausalLM

    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(random_config(arch, **shape), dtype=torch.float32)
    return wrap_model(model, char_tokenizer(), source=f"random:{arch}", device=device)


def pythia_160m_shape(**kw) -> dict:
    """Pythia-160M's shape (GPT-NeoX, 12 layers, d_model 768, 12 heads, vocab 50304)."""
    return dict(d_model=768, n_layers=12, n_heads=12, vocab=50304, d_mlp=3072, max_positions=2048, **kw)


def save_random_model(path, arch: str = "gpt_neox", seed: int = 0, **shape):
    """Build a random model and save it (weights and tokenizer) as a local folder usable with --model."""
    made = random_model(arch, seed=seed, **shape)
    made.model.save_pretrained(path)
    made.tokenizer.save_pretrained(path)
    return path
