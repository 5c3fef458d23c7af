"""``lamina prune``: magnitude-prune a model's matmul weights, and show what it costs in accuracy.

Accuracy on real text (``--tokenizer``): the first ``--texts`` sentences of
``data/corpus/heldout.txt`` (or ``--corpus``) run through the unpruned and the pruned model on ONNX
Runtime; the figures are the mean cosine between their mean-pooled embeddings and the top-1
neighbour agreement (for each sentence, is its nearest other sentence the same in both models).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from lamina.compiler.errors import UsageError

DEFAULT_CORPUS = Path(__file__).resolve().parents[3] / "data" / "corpus" / "heldout.txt"


def read_texts(path: str | Path | None, n: int) -> list[str]:
    file = Path(path) if path else DEFAULT_CORPUS
    if not file.is_file():
        raise UsageError(f"--corpus {file}: no such file (one sentence a line)")
    lines = [line.strip() for line in file.read_text(encoding="utf-8").splitlines() if line.strip()]
    return lines[:n]


def embeddings(model: ir.Model, texts: list[str], tokenizer: str, batch: int = 16) -> np.ndarray:
    """Mean-pooled first output (``last_hidden_state``) per text, from ONNX Runtime."""
    from lamina.backends.reference import session
    from lamina.compiler.frontend.text import tokenize

    sess = session(model)
    names = [i.name for i in sess.get_inputs()]
    out_name = sess.get_outputs()[0].name
    rows = []
    for i in range(0, len(texts), batch):
        feeds = tokenize(texts[i:i + batch], tokenizer, names)
        hidden = sess.run([out_name], feeds)[0]
        if hidden.ndim != 3:
            raise UsageError(
                f"accuracy needs a [batch, seq, hidden] first output; {out_name!r} has "
                f"shape {list(hidden.shape)}"
            )
        mask = feeds[next(n for n in names if "mask" in n.lower())][..., None].astype(np.float64)
        rows.append((hidden * mask).sum(axis=1) / np.maximum(mask.sum(axis=1), 1.0))
    return np.concatenate(rows)


def accuracy_cost(
    reference: ir.Model, pruned: ir.Model, texts: list[str], tokenizer: str
) -> dict[str, Any]:
    a = embeddings(reference, texts, tokenizer)
    b = embeddings(pruned, texts, tokenizer)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)

    ua, ub = unit(a), unit(b)
    cos = (ua * ub).sum(axis=1)

    def neighbour(u: np.ndarray) -> np.ndarray:
        sim = u @ u.T
        np.fill_diagonal(sim, -np.inf)
        return sim.argmax(axis=1)

    agree = float(np.mean(neighbour(ua) == neighbour(ub))) if len(texts) > 1 else 1.0
    return {
        "texts": len(texts),
        "mean_cosine": float(cos.mean()),
        "min_cosine": float(cos.min()),
        "top1_neighbour_agreement": agree,
    }
