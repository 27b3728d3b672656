"""Fit a batch to a memory budget: how many problems one batched step (or GCG candidates one forward) may hold."""
from __future__ import annotations

import torch

from .models import LoadedModel


def problem_bytes(lm: LoadedModel, layer: int, seq_len: int, dtype: str = "float32") -> int:
    """A generous estimate of the activation memory one problem needs in a step (forward kept for backward).

    Per block and position: ~16 d_model-sized and ~3 d_mlp-sized tensors, plus the attention
    scores (heads x T); times the element size, plus float32 prompt, Adam state and target.
    """
    cfg = lm.model.config
    d = lm.d_model
    d_mlp = getattr(cfg, "intermediate_size", None) or getattr(cfg, "n_inner", None) or 4 * d
    heads = getattr(cfg, "num_attention_heads", None) or getattr(cfg, "n_head", 1)
    elem = torch.finfo(getattr(torch, dtype)).bits // 8
    per_block = seq_len * (16 * d + 3 * d_mlp + 2 * heads * seq_len) * elem
    return layer * per_block + 6 * seq_len * d * 4


def available_bytes(device: torch.device) -> int:
    """Memory free for activations now: CUDA free memory, or the OS's MemAvailable."""
    if device.type == "cuda":
        free, _ = torch.cuda.mem_get_info(device)
        return int(free)
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 4 * 2**30


def batch_for_budget(lm: LoadedModel, layer: int, seq_len: int, requested: int, budget_bytes: int | None,
                     dtype: str = "float32") -> int:
    """The largest batch <= requested whose estimated memory fits the budget (None: half of what is free)."""
    budget = budget_bytes if budget_bytes is not None else available_bytes(lm.device) // 2
    return max(1, min(requested, budget // problem_bytes(lm, layer, seq_len, dtype)))
