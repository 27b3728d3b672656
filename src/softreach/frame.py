"""Soft slots inside fixed text: the model's input is embed(before) + soft + embed(after) along positions,
and only the residuals at chosen positions (`positions`, in that full input) are compared with a target.

The fixed text before the slots does not depend on the soft vectors, so its keys and values (blocks
0..L-1 only) are computed once per template and reused by every step and restart: each forward then
runs only the K soft positions and the text after them. `frame_residual` is tested equal to the
uncached forward of the full input.
"""
from __future__ import annotations

import inspect
from dataclasses import dataclass, field, replace

import torch

from .errors import UserError
from .residual import ablated, check_layer, decoder_blocks


class _StopForward(Exception):
    pass


@dataclass
class TextFrame:
    """Fixed tokens around K soft slots, one template per text; problems (rows) point at a template."""

    before: torch.Tensor  # [U, Cb] int64 fixed tokens before the slots (Cb may be 0)
    after: torch.Tensor  # [U, Ca] int64 fixed tokens after the slots (Ca may be 0)
    soft: int  # K soft slots
    positions: torch.Tensor  # [P] int64 positions of the full input compared with the target
    template: torch.Tensor | None = None  # [R] int64 template of each problem row (default: row i -> i)
    _caches: dict = field(default_factory=dict, repr=False)  # shared by every selection of this frame
    cached: bool = True  # reuse the text before the slots (False: run the full input, for the benchmark)

    def __post_init__(self):
        self.before, self.after = self.before.long().cpu(), self.after.long().cpu()
        self.positions = self.positions.long().cpu()
        if self.template is None:
            self.template = torch.arange(self.before.shape[0])
        self.template = self.template.long().cpu()
        if self.before.shape[0] != self.after.shape[0]:
            raise UserError(f"{self.before.shape[0]} texts before the slots but {self.after.shape[0]} after them")
        if self.soft < 1:
            raise UserError(f"--soft must be at least 1, got {self.soft}")
        if not self.positions.numel():
            raise UserError("no positions to steer")
        if int(self.positions.min()) < 0 or int(self.positions.max()) >= self.seq_len:
            raise UserError(f"steered positions {self.positions.tolist()} fall outside the input of {self.seq_len}")

    @property
    def n_before(self) -> int:
        return self.before.shape[1]

    @property
    def n_after(self) -> int:
        return self.after.shape[1]

    @property
    def seq_len(self) -> int:
        return self.n_before + self.soft + self.n_after

    @property
    def rows(self) -> int:
        return self.template.numel()

    def select(self, rows: torch.Tensor | slice) -> TextFrame:
        """The frame of a subset of problem rows (same templates, same prefix caches)."""
        return replace(self, template=self.template[rows])  # the caches dict is shared, not copied

    def repeat(self, times: int) -> TextFrame:
        """Each row `times` times in a row (restarts of one problem)."""
        return replace(self, template=self.template.repeat_interleave(times))

    def tile(self, times: int) -> TextFrame:
        """All rows, `times` times over (draw-major: row j of copy i is row i * R + j)."""
        return replace(self, template=self.template.repeat(times))

    def context_tensors(self) -> dict[str, torch.Tensor]:
        """What a result folder saves per row: context_before [R, Cb], context_after [R, Ca] (absent when
        empty) and target_positions [P]."""
        out = {"target_positions": self.positions.clone()}
        if self.n_before:
            out["context_before"] = self.before[self.template].clone()
        if self.n_after:
            out["context_after"] = self.after[self.template].clone()
        return out

    def full_input(self, model: torch.nn.Module, soft: torch.Tensor) -> torch.Tensor:
        """The whole input of these rows: soft [R, K, d] -> [R, Cb + K + Ca, d] (no cache)."""
        emb = model.get_input_embeddings()
        dev, dt = soft.device, soft.dtype
        parts = [emb(self.before[self.template].to(dev)).to(dt), soft, emb(self.after[self.template].to(dev)).to(dt)]
        return torch.cat(parts, dim=1)


def _cache_kwarg(model: torch.nn.Module) -> str:
    """transformers 5.x calls the cache argument `cache` (`past_key_values` is its deprecated alias)."""
    params = inspect.signature(type(model).forward).parameters
    return "cache" if "cache" in params else "past_key_values"


def _prefix_cache(model, layer: int, frame: TextFrame, ablation: str) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Keys and values of every template's text before the slots in blocks 0..L-1: [(k, v)] * L, each
    [U, heads, Cb, head_dim]. Cached on the frame per model, layer and ablation."""
    key = (id(model), layer, ablation)
    if key not in frame._caches:
        from transformers import DynamicCache

        dev = next(model.parameters()).device
        cache = DynamicCache(config=model.config)
        handle = decoder_blocks(model)[layer - 1].register_forward_hook(_raise_stop)
        try:
            with ablated(model, ablation), torch.no_grad():
                model(input_ids=frame.before.to(dev), use_cache=True, **{_cache_kwarg(model): cache})
        except _StopForward:
            pass
        finally:
            handle.remove()
        frame._caches[key] = [(lay.keys.detach(), lay.values.detach()) for lay in cache.layers[:layer]]
    return frame._caches[key]


def _raise_stop(_module, _inputs, _output):
    raise _StopForward


def frame_residual(model: torch.nn.Module, layer: int, frame: TextFrame, soft: torch.Tensor,
                   ablation: str = "none", use_cache: bool | None = None) -> torch.Tensor:
    """Residual at the frame's positions for soft vectors in its slots: soft [R, K, d] -> [R, P, d].

    Differentiable in `soft`. With use_cache (default: frame.cached) the text before the slots comes from the
    per-template cache.
    """
    use_cache = frame.cached if use_cache is None else use_cache
    blocks = decoder_blocks(model)
    check_layer(layer, len(blocks))
    if soft.shape[0] != frame.rows or soft.shape[1] != frame.soft:
        raise UserError(f"soft vectors {tuple(soft.shape)} do not fit {frame.rows} rows of {frame.soft} slots")
    seen: dict[str, torch.Tensor] = {}

    def capture(_module, _inputs, output):
        seen["h"] = output[0] if isinstance(output, tuple) else output
        raise _StopForward

    kwargs: dict = {"use_cache": False}
    offset = 0
    if use_cache and frame.n_before:
        from transformers import DynamicCache

        rows = frame.template.to(soft.device)
        kv = [(k[rows], v[rows]) for k, v in _prefix_cache(model, layer, frame, ablation)]
        emb = model.get_input_embeddings()
        x = torch.cat([soft, emb(frame.after[frame.template].to(soft.device)).to(soft.dtype)], dim=1)
        kwargs = {"use_cache": True, _cache_kwarg(model): DynamicCache(ddp_cache_data=kv)}
        offset = frame.n_before
    else:
        x = frame.full_input(model, soft)
    handle = blocks[layer - 1].register_forward_hook(capture)
    try:
        with ablated(model, ablation):
            model(inputs_embeds=x, **kwargs)
    except _StopForward:
        pass
    finally:
        handle.remove()
    return seen["h"][:, frame.positions.to(soft.device) - offset]


@torch.no_grad()
def frame_residual_of_tokens(model: torch.nn.Module, layer: int, frame: TextFrame, slot_ids: torch.Tensor,
                             ablation: str = "none", batch_size: int = 64) -> torch.Tensor:
    """Residuals at the frame's positions with real tokens in the slots: slot_ids [R, K] -> [R, P, d] float32 CPU."""
    soft = model.get_input_embeddings()(slot_ids.to(next(model.parameters()).device)).float()  # [R, K, d]
    return frame_residual_batched(model, layer, frame, soft, ablation, batch_size)


@torch.no_grad()
def frame_residual_batched(model: torch.nn.Module, layer: int, frame: TextFrame, soft: torch.Tensor,
                           ablation: str = "none", batch_size: int = 64) -> torch.Tensor:
    """frame_residual without gradients, in batches: soft [R, K, d] -> [R, P, d] float32 on the CPU."""
    dev = next(model.parameters()).device
    out = []
    for lo in range(0, frame.rows, batch_size):
        sub = frame.select(slice(lo, lo + batch_size))
        out.append(frame_residual(model, layer, sub, soft[lo : lo + batch_size].to(dev).float(), ablation).float().cpu())
    return torch.cat(out)
