"""Templates: corpus text cut around K soft slots, and the steered positions after the slots.

Each text is a window of Cb + K_max + Ca corpus tokens. For K slots: the text after the slots is the
window's last Ca tokens (the same for every K), the slots' own tokens are the K tokens just before it,
and the text before is the Cb tokens before those. So before + own tokens + after is always contiguous
real text, and a K sweep steers the same positions of the same text.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..errors import UserError
from ..frame import TextFrame
from .config import steered_count


@dataclass
class Texts:
    """Corpus windows for templates: tokens [N, Cb + K_max + Ca] and their lengths."""

    tokens: torch.Tensor
    n_before: int
    k_max: int
    n_after: int

    def own_tokens(self, k: int) -> torch.Tensor:
        """The text's own tokens in K slots: [N, K]."""
        return self.tokens[:, self.n_before + self.k_max - k : self.n_before + self.k_max]

    def frame(self, k: int, positions: torch.Tensor) -> TextFrame:
        """The frame of K slots (positions in the full input of Cb + K + Ca)."""
        if not 1 <= k <= self.k_max:
            raise UserError(f"{k} soft slots: the texts were cut for 1..{self.k_max}")
        lo = self.k_max - k
        before = self.tokens[:, lo : lo + self.n_before]
        after = self.tokens[:, self.n_before + self.k_max :]
        return TextFrame(before, after, k, positions)


def steered_positions(n_before: int, k: int, n_after: int, steer: str, distance: int | None) -> torch.Tensor:
    """Positions (in before + K slots + after) of the steered text: [M] int64.

    steer picks how many (last, last:M, all); distance the first one's distance from the last slot
    (1 = the next token); without a distance the positions end at the text's last token.
    """
    m = steered_count(steer, n_after)
    if m > n_after:
        raise UserError(f"--steer {steer} asks for {m} positions but only {n_after} fixed tokens follow the slots")
    first = n_after - m + 1 if distance is None else distance
    if first + m - 1 > n_after:
        raise UserError(f"steered positions at distance {first}..{first + m - 1} from the slots run past the "
                        f"{n_after} fixed tokens after them")
    start = n_before + k - 1 + first  # the position `first` tokens after the last slot
    return torch.arange(start, start + m)


def draw_texts(lm, corpus: str, n_before: int, k_max: int, n_after: int, count: int, seed: int,
               donors: int = 0) -> tuple[Texts, Texts | None]:
    """`count` texts (and `donors` more, disjoint) from the corpus, drawn by seed."""
    from ..corpus import load_corpus_text
    from ..targets import sample_windows, tokenize_windows

    windows = tokenize_windows(lm, load_corpus_text(corpus), n_before + k_max + n_after)
    idx = sample_windows(windows, count + donors, seed)
    texts = Texts(windows.tokens[idx[:count]], n_before, k_max, n_after)
    extra = Texts(windows.tokens[idx[count:]], n_before, k_max, n_after) if donors else None
    return texts, extra
