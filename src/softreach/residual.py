"""The residual stream at layer L: run blocks 0..L-1 only and capture the raw output of block L-1.

Layer L follows Hugging Face `hidden_states[L]` (= TransformerLens `blocks.L.hook_resid_pre`),
1 <= L <= n_layers, never passed through the final norm. The forward is stopped by an exception
raised in a hook on block L-1, so no later block, final norm or LM head is ever computed.
"""
from __future__ import annotations

import typing
from contextlib import contextmanager

import torch

from .config import Ablation
from .errors import UserError

ABLATIONS = typing.get_args(Ablation)
_SUBLAYER_NAMES = {"attn": ("attention", "self_attn", "attn"), "mlp": ("mlp", "feed_forward", "ffn")}


class _StopForward(Exception):
    pass


def decoder_blocks(model: torch.nn.Module) -> torch.nn.ModuleList:
    """The list of transformer blocks (GPT-NeoX `layers`, Llama `layers`, GPT-2 `h`, ...)."""
    n = model.config.num_hidden_layers
    for module in model.modules():
        if isinstance(module, torch.nn.ModuleList) and len(module) == n:
            return module
    raise UserError(f"cannot find the list of {n} decoder blocks in {type(model).__name__}")


def sublayer(block: torch.nn.Module, kind: str) -> torch.nn.Module:
    """The attention ("attn") or MLP ("mlp") submodule of one block."""
    for name in _SUBLAYER_NAMES[kind]:
        if hasattr(block, name):
            return getattr(block, name)
    raise UserError(f"no {kind} submodule in {type(block).__name__}")


def _zero_output(_module, _inputs, output):
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]),) + tuple(output[1:])
    return torch.zeros_like(output)


def check_layer(layer: int, n_layers: int) -> None:
    if not 1 <= layer <= n_layers:
        raise UserError(f"layer {layer} is outside 1..{n_layers} for this model (layer L = output of block L-1)")


@contextmanager
def ablated(model: torch.nn.Module, ablation: str):
    """Zero every attention output ("no_attn") or every MLP output ("no_mlp") while inside."""
    if ablation not in ABLATIONS:
        raise UserError(f"unknown ablation {ablation!r}: choose from {', '.join(ABLATIONS)}")
    handles = []
    if ablation != "none":
        kind = "attn" if ablation == "no_attn" else "mlp"
        handles = [sublayer(b, kind).register_forward_hook(_zero_output) for b in decoder_blocks(model)]
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def residual_at(model: torch.nn.Module, layer: int, *, inputs_embeds: torch.Tensor | None = None,
                input_ids: torch.Tensor | None = None, ablation: str = "none") -> torch.Tensor:
    """Residual at `layer` for a batch of inputs: [batch, pos, d_model]. Differentiable in inputs_embeds."""
    blocks = decoder_blocks(model)
    check_layer(layer, len(blocks))
    seen: dict[str, torch.Tensor] = {}

    def capture(_module, _inputs, output):
        seen["h"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    handle = blocks[layer - 1].register_forward_hook(capture)
    try:
        with ablated(model, ablation):
            model(inputs_embeds=inputs_embeds, input_ids=input_ids, use_cache=False)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return seen["h"]


def all_layer_residuals(model: torch.nn.Module, inputs_embeds: torch.Tensor, ablation: str = "none") -> torch.Tensor:
    """Residuals at layers 0..n (0 = input embeddings, all raw): [n_layers + 1, batch, pos, d_model]."""
    blocks = decoder_blocks(model)
    outs: list[torch.Tensor] = []
    handles = [b.register_forward_hook(lambda _m, _i, o: outs.append(o[0] if isinstance(o, tuple) else o))
               for b in blocks]
    try:
        with ablated(model, ablation), torch.no_grad():
            model(inputs_embeds=inputs_embeds, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return torch.stack([inputs_embeds.detach()] + [o.detach() for o in outs])
