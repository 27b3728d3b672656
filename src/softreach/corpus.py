"""Text corpora: the embedded default (CPython's pydoc topics), a local text file, or WikiText-2."""
from __future__ import annotations

from pathlib import Path

from .errors import UserError

DEFAULT_CORPUS = "default"
WIKITEXT = "wikitext2"


def load_corpus_text(spec: str = DEFAULT_CORPUS) -> str:
    """The text of a corpus named by --corpus: "default", "wikitext2", or a path to a text file."""
    if spec == DEFAULT_CORPUS:
        from pydoc_data.topics import topics

        text = "\n\n".join(topics[k] for k in sorted(topics))
    elif spec == WIKITEXT:
        text = _wikitext2()
    else:
        path = Path(spec).expanduser()
        if not path.is_file():
            raise UserError(f"corpus file not found: {spec} (use 'default', 'wikitext2' or a path to a text file)")
        try:
            text = path.read_text(encoding="utf-8", errors="replace")
        except OSError as e:
            raise UserError(f"cannot read corpus {spec}: {e.strerror}") from None
    if not text.strip():
        raise UserError(f"corpus {spec!r} is empty")
    return text


def _wikitext2() -> str:
    try:
        import datasets
    except ImportError:
        raise UserError("--corpus wikitext2 needs the datasets package: pip install 'softreach[wikitext]'") from None
    try:
        ds = datasets.load_dataset("wikitext", "wikitext-2-raw-v1", split="test")
    except Exception as e:  # the hub raises many types when unreachable
        raise UserError(f"cannot load WikiText-2 (is the Hugging Face hub reachable?): {type(e).__name__}; "
                        "use --corpus default or a local text file") from None
    return "".join(ds["text"])
