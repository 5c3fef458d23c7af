"""The accuracy cost of a reduced-precision artifact (``lamina compile --precision bf16``), measured
on real text right after the compile and stored in its manifest.

The artifact and the fp32 reference (ONNX Runtime on the source model, optimizations off) embed the
same sentences; each first output is mean-pooled over the attention mask and L2-normalised
(``quantize.pooled``). Reported: the mean and the worst cosine between the two embeddings of each
sentence, and the top-1 nearest-neighbour agreement among the sentences (``quantize.nn_agreement``),
as one line::

    bf16 accuracy: mean cosine 0.99999 (min 0.99996) over 200 sentences; top-1 neighbour
    agreement 1.000

and as ``extra.precision_cost`` in the manifest. Texts: ``--calibration FILE`` (text with a
tokenizer, or an ``.npz`` of feeds), else this checkout's ``data/corpus/calibration.txt``.
Tokenizer: ``--tokenizer DIR``, else a ``tokenizer.json`` beside the model, else the packaged
MiniLM tokenizer when its vocabulary is the model's. Without texts or a tokenizer the measurement
is skipped with one line saying why.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

log = logging.getLogger(__name__)

SENTENCES = 200
BATCH = 8
DEFAULT_TEXTS = Path(__file__).resolve().parents[3] / "data" / "corpus" / "calibration.txt"


def _vocab_size(tokenizer: Path) -> int | None:
    try:
        from lamina.compiler.frontend.text import load_tokenizer

        return int(load_tokenizer(tokenizer).get_vocab_size())
    except Exception:  # noqa: BLE001 - no tokenizers package or an unreadable file
        return None


def _table_rows(manifest: dict[str, Any]) -> int | None:
    """Rows of the largest table an input indexes (``index_checks``): the token embeddings, whose
    rows a tokenizer's vocabulary must match."""
    sizes = [int(c["size"]) for c in manifest.get("index_checks") or []]
    return max(sizes) if sizes else None


def find_inputs(model_path: Path, manifest: dict[str, Any], texts: str | None,
                tokenizer: str | None) -> tuple[Path | None, Path | None, str]:
    """``(texts, tokenizer, why_not)``: what to measure on, or None and the reason."""
    text_path = Path(texts) if texts else (DEFAULT_TEXTS if DEFAULT_TEXTS.is_file() else None)
    if text_path is None:
        return None, None, "no texts (give --calibration FILE)"
    if text_path.suffix == ".npz":
        return text_path, None, ""
    if tokenizer:
        return text_path, Path(tokenizer), ""
    beside = model_path.parent / "tokenizer.json"
    if beside.is_file():
        return text_path, model_path.parent, ""
    try:
        from lamina.zoo import minilm_tokenizer_dir

        zoo = minilm_tokenizer_dir()
    except Exception:  # noqa: BLE001 - the MiniLM package is an optional extra
        zoo = None
    rows = _table_rows(manifest)
    if zoo is not None and (zoo / "tokenizer.json").is_file() and rows is not None \
            and _vocab_size(zoo) == rows:
        return text_path, zoo, ""
    return None, None, "no tokenizer for this model (give --tokenizer DIR)"


def measure(artifact: str | Path, model: ir.Model, model_path: str | Path, texts: Path,
            tokenizer: Path | None, *, sentences: int = SENTENCES,
            threads: int | None = None) -> dict[str, Any]:
    """Embed ``sentences`` texts with the artifact and with ONNX Runtime fp32; the cost summary."""
    from lamina.backends import tvm as tvm_backend
    from lamina.compiler.driver.quantize import cosine, embeddings, nn_agreement, pooled
    from lamina.compiler.frontend.shapes import max_positions
    from lamina.passes.quant._calibration import load_batches

    batches = load_batches(model, texts, tokenizer, sentences, max_positions(model))
    compiled = tvm_backend.load(artifact, threads=threads)
    first = compiled.manifest["outputs"][0]["name"]
    ours = np.concatenate([pooled(compiled.run(feeds)[first], feeds) for feeds in batches])
    ref = embeddings(str(model_path), batches, "fp32 reference")
    cos = cosine(ours, ref)
    return {"precision": compiled.manifest.get("precision"),
            "sentences": int(len(cos)),
            "texts": str(texts),
            "mean_cosine": round(float(cos.mean()), 6),
            "min_cosine": round(float(cos.min()), 6),
            "nn_agreement": round(nn_agreement(ours, ref), 4)}


def describe(cost: dict[str, Any]) -> str:
    return (f"{cost['precision']} accuracy: mean cosine {cost['mean_cosine']:.5f} (min "
            f"{cost['min_cosine']:.5f}) over {cost['sentences']} sentences; top-1 neighbour "
            f"agreement {cost['nn_agreement']:.3f}")


def report_precision_cost(artifact: str | Path, model: ir.Model, model_path: str | Path, *,
                          texts: str | None = None, tokenizer: str | None = None,
                          threads: int | None = None,
                          progress: Callable[[str], None] | None = None) -> dict[str, Any] | None:
    """Measure, report in one line and store ``extra.precision_cost`` in the manifest; None (and
    one line saying why) when there is nothing to measure on."""
    from lamina.backends.tvm.artifact import read_manifest, update_manifest

    say = progress or log.info
    manifest = read_manifest(artifact)[1]
    precision = manifest.get("precision", "fp32")
    text_path, tok, why = find_inputs(Path(model_path), manifest, texts, tokenizer)
    if text_path is None:
        say(f"{precision} accuracy not measured: {why}")
        return None
    cost = measure(artifact, model, model_path, text_path, tok, threads=threads)
    say(describe(cost))
    update_manifest(artifact, {"extra": {**manifest.get("extra", {}), "precision_cost": cost}})
    return cost
