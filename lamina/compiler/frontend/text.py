"""Text inputs for encoder models: tokenization with a Hugging Face ``tokenizer.json``."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from lamina.compiler.errors import UsageError


def load_tokenizer(directory: str | Path):
    try:
        from tokenizers import Tokenizer
    except ImportError:
        raise UsageError(
            "text inputs need the 'tokenizers' package: pip install tokenizers"
        ) from None
    path = Path(directory)
    file = path / "tokenizer.json" if path.is_dir() else path
    if not file.is_file():
        raise UsageError(f"--tokenizer {directory}: no tokenizer.json there")
    return Tokenizer.from_file(str(file))


def tokenize(
    texts: list[str] | str,
    tokenizer_dir: str | Path,
    input_names: list[str],
    *,
    seq: int | None = None,
) -> dict[str, np.ndarray]:
    """Feeds for ``input_names`` (input_ids, attention_mask, token_type_ids) from ``texts``.

    Without ``seq`` the batch is padded to its longest text; with it, padded or truncated to
    ``seq``.
    """
    tok = load_tokenizer(tokenizer_dir)
    # tokenizer.json files often pad to a fixed length; we pad to the batch or to ``seq``
    tok.no_padding()
    texts = [texts] if isinstance(texts, str) else list(texts)
    encs = tok.encode_batch(texts)
    length = seq or max(len(e.ids) for e in encs)
    ids = np.zeros((len(texts), length), np.int64)
    mask = np.zeros_like(ids)
    types = np.zeros_like(ids)
    for row, enc in enumerate(encs):
        n = min(length, len(enc.ids))
        ids[row, :n] = enc.ids[:n]
        mask[row, :n] = enc.attention_mask[:n]
        types[row, :n] = enc.type_ids[:n]
    feeds = {}
    for name in input_names:
        low = name.lower()
        if "mask" in low:
            feeds[name] = mask
        elif "type" in low:
            feeds[name] = types
        elif "ids" in low or "input" in low:
            feeds[name] = ids
    return feeds
