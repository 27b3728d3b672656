"""Text corpora: the embedded default (CPython's pydoc topics), a local text file, or WikiText-2."""
from __future__ import annotations

import re
from pathlib import Path

from .config import DEFAULT_CORPUS
from .errors import UserError

WIKITEXT = "wikitext2"
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f]")  # control characters other than whitespace


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
            data = path.read_bytes()
        except OSError as e:
            raise UserError(f"cannot read corpus {spec}: {e.strerror}") from None
        text = _decode_text(data, spec)
    if not text.strip():
        raise UserError(f"corpus {spec!r} is empty")
    return text


def _decode_text(data: bytes, spec: str) -> str:
    """UTF-8 text, or a one-line refusal of binary or otherwise encoded files."""
    if b"\x00" in data:
        raise UserError(f"corpus {spec} is not a text file (it holds NUL bytes); give a UTF-8 text file")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise UserError(f"corpus {spec} is not UTF-8 text (invalid byte at offset {e.start}); "
                        "convert it to UTF-8 or give another file") from None
    control = len(_CONTROL.findall(text))
    if control > 0.01 * max(1, len(text)):
        raise UserError(f"corpus {spec} does not look like text ({control} control characters); "
                        "give a UTF-8 text file")
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
