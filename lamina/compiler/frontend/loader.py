"""Loading ONNX files: existence, decoding, external data, validation, domains and opset conversion.

What a model declares is checked against what it holds before anything allocates from it (a fuzzed
or hostile file must not take the machine's memory): every tensor's dims against the size of its
data, and every graph input's static dims against :data:`MAX_DIM` and :data:`MAX_INPUT_ELEMENTS`.
"""

from __future__ import annotations

import logging
import math
import os
from pathlib import Path

import numpy as np
import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from lamina.compiler.errors import FrontendError
from lamina.compiler.ir.domain import DOMAIN

log = logging.getLogger(__name__)

TARGET_OPSET = 18
# The newest opset the installed ``onnx`` defines: newer op versions of the ops Lamina lowers are
# checked one by one at lowering (``backends/tvm/lower/versions.py``), not refused wholesale here.
MAX_OPSET = onnx.defs.onnx_opset_version()
KNOWN_DOMAINS = {"", "ai.onnx", DOMAIN}
# Sane bounds for the static dims of a graph input (an encoder's batch or sequence is far below
# them).
MAX_DIM = 1 << 24
MAX_INPUT_ELEMENTS = 1 << 28
_FOUR_BIT = {
    getattr(onnx.TensorProto, n)
    for n in ("INT4", "UINT4", "FLOAT4E2M1")
    if hasattr(onnx.TensorProto, n)
}
_COMPLEX = {onnx.TensorProto.COMPLEX64, onnx.TensorProto.COMPLEX128}


def _read_proto(path: Path) -> onnx.ModelProto:
    if not path.exists():
        raise FrontendError(f"{path}: no such file")
    if path.is_dir():
        raise FrontendError(f"{path}: is a directory; give the path of an .onnx file")
    if path.stat().st_size == 0:
        raise FrontendError(f"{path}: the file is empty; re-export the model")
    try:
        proto = onnx.load(str(path), load_external_data=False)
    except (DecodeError, RuntimeWarning, ValueError, UnicodeDecodeError) as exc:
        raise FrontendError(
            f"{path}: not a valid ONNX model (truncated or not an ONNX protobuf: {exc}); "
            "re-export it or check the download"
        ) from None
    except Exception as exc:  # noqa: BLE001 - protobuf may raise other internal errors
        raise FrontendError(
            f"{path}: cannot be parsed as ONNX ({type(exc).__name__}: {exc})"
        ) from None
    if not proto.HasField("graph") or (not proto.graph.node and not proto.graph.output):
        raise FrontendError(
            f"{path}: holds no graph (truncated or not an ONNX model); re-export it"
        )
    return proto


def _check_external_data(proto: onnx.ModelProto, path: Path) -> None:
    base = path.parent
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        if tensor.data_location != onnx.TensorProto.EXTERNAL:
            continue
        info = {e.key: e.value for e in tensor.external_data}
        location = info.get("location", "")
        data_path = (base / location).resolve()
        if not location or not data_path.is_file():
            raise FrontendError(
                f"{path}: weight {tensor.name!r} is stored in external file {location!r}, which "
                f"is missing next to the model ({base}); copy the data file there"
            )
        offset = int(info.get("offset", 0) or 0)
        length = int(info.get("length", 0) or 0)
        if length and offset + length > data_path.stat().st_size:
            raise FrontendError(
                f"{path}: external data file {location!r} is too short for weight {tensor.name!r} "
                f"(needs {offset + length} bytes, has {data_path.stat().st_size}); it is truncated"
            )


def _tensor_problem(tensor: onnx.TensorProto) -> str | None:
    """Why ``tensor``'s declared dims and type disagree with the data it holds, or None."""
    dims = list(tensor.dims)
    if any(d < 0 for d in dims):
        return f"has a negative dim ({dims})"
    if tensor.data_location == onnx.TensorProto.EXTERNAL:
        return None  # its length was checked against the data file
    try:
        np_dtype = onnx.helper.tensor_dtype_to_np_dtype(tensor.data_type)
        field = onnx.helper.tensor_dtype_to_field(tensor.data_type)
    except KeyError:
        return f"has an unknown data type ({tensor.data_type})"
    n = math.prod(dims)
    if tensor.HasField("raw_data"):
        if tensor.data_type == onnx.TensorProto.STRING:
            return "is a string tensor stored as raw bytes"
        bits = 4 if tensor.data_type in _FOUR_BIT else 8 * np_dtype.itemsize
        need, held = (n * bits + 7) // 8, len(tensor.raw_data)
        unit = "bytes"
    else:
        held = len(getattr(tensor, field))
        need = (
            2 * n
            if tensor.data_type in _COMPLEX
            else (n + 1) // 2
            if tensor.data_type in _FOUR_BIT
            else n
        )
        unit = "values"
    if held != need:
        return f"declares dims {dims} of {np_dtype} ({need} {unit}) but holds {held} {unit}"
    return None


def _check_tensors(proto: onnx.ModelProto, path: Path) -> None:
    for tensor in onnx.external_data_helper._get_all_tensors(proto):
        problem = _tensor_problem(tensor)
        if problem:
            name = repr(tensor.name) if tensor.name else "(a Constant's value)"
            raise FrontendError(
                f"{path}: tensor {name} {problem}; the file is corrupt, re-export the model"
            )


def _check_inputs(proto: onnx.ModelProto, path: Path) -> None:
    for vi in proto.graph.input:
        if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
            continue
        total = 1
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if not d.HasField("dim_value"):
                continue
            v = d.dim_value
            if v <= 0 or v > MAX_DIM:
                why = (
                    "an empty input cannot run"
                    if v == 0
                    else (
                        "a dim cannot be negative"
                        if v < 0
                        else f"beyond Lamina's limit of {MAX_DIM} per dim"
                    )
                )
                raise FrontendError(
                    f"{path}: graph input {vi.name!r} declares dim {i} = {v}: {why}; fix the "
                    "export (a symbolic dim can be bound later with --dim or --input-shape)"
                )
            total *= v
        if total > MAX_INPUT_ELEMENTS:
            raise FrontendError(
                f"{path}: graph input {vi.name!r} declares {total} elements, beyond Lamina's "
                f"limit of {MAX_INPUT_ELEMENTS}; fix the export (a symbolic dim can be bound "
                "later with --dim)"
            )


def _check_domains(proto: onnx.ModelProto, path: Path) -> None:
    local = {(f.domain, f.name) for f in proto.functions}
    for node in proto.graph.node:
        if node.domain in KNOWN_DOMAINS or (node.domain, node.op_type) in local:
            continue
        name = node.name or (node.output[0] if node.output else "?")
        raise FrontendError(
            f"{path}: node {name!r} uses op {node.op_type!r} of domain {node.domain!r}, which "
            "Lamina does not support; export the model with standard ONNX ops (no runtime-specific "
            "contrib ops)"
        )


def _opset(proto: onnx.ModelProto) -> int:
    for imp in proto.opset_import:
        if imp.domain in ("", "ai.onnx"):
            return imp.version
    return 0


def load_proto(path: str | os.PathLike, *, check: bool = True) -> onnx.ModelProto:
    """Read, validate and complete (external data) an ONNX file, with clear errors."""
    path = Path(path)
    proto = _read_proto(path)
    _check_external_data(proto, path)
    _check_domains(proto, path)
    try:
        onnx.load_external_data_for_model(proto, str(path.parent))
    except Exception as exc:  # noqa: BLE001
        raise FrontendError(f"{path}: cannot read its external data: {exc}") from None
    _check_tensors(proto, path)
    _check_inputs(proto, path)
    if check:
        try:
            if proto.ByteSize() < 2**31 - 1:
                onnx.checker.check_model(proto)
            else:
                onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            first = " ".join(str(exc).split())[:400]  # its messages continue on the next lines
            raise FrontendError(f"{path}: the ONNX checker rejects the model: {first}") from None
        except UnicodeDecodeError:  # the checker's message quotes a name that is not valid UTF-8
            raise FrontendError(
                f"{path}: the ONNX checker rejects the model, and a name in it is not valid "
                "UTF-8: the file is corrupt; re-export it or check the download"
            ) from None
    return proto


def convert_opset(
    proto: onnx.ModelProto, target: int = TARGET_OPSET, where: str = "model"
) -> onnx.ModelProto:
    """Convert older opsets up to ``target`` (the IR's opset); newer ones up to MAX_OPSET stay as
    they are."""
    current = _opset(proto)
    if current == 0:
        raise FrontendError(f"{where}: imports no standard ONNX opset; it is not a usable model")
    if current > MAX_OPSET:
        raise FrontendError(
            f"{where}: uses ONNX opset {current}, newer than the installed onnx package knows "
            f"({MAX_OPSET}); "
            f"upgrade onnx or export with opset {MAX_OPSET} or lower"
        )
    if current >= target:
        return proto
    try:
        return onnx.version_converter.convert_version(proto, target)
    except Exception as exc:  # noqa: BLE001
        first = str(exc).strip().splitlines()[0]
        raise FrontendError(
            f"{where}: cannot convert from opset {current} to {target}: {first}; "
            f"export with opset {target}"
        ) from None


def load_model(
    path: str | os.PathLike, *, check: bool = True, opset: int = TARGET_OPSET
) -> ir.Model:
    """Load an ONNX file into Lamina's IR: validated, external data read, opset converted.

    A ``.txt`` file is an IR dump in the text form (``--dump-ir``, ``--print-ir-*``); its big
    tensors come from the ``.onnx`` of the same name beside it (see
    :mod:`lamina.compiler.ir.parser`).
    """
    path = Path(path)
    if path.suffix == ".txt":
        return _load_text(path, check=check)
    proto = load_proto(path, check=check)
    proto = convert_opset(proto, opset, str(path))
    try:
        model = ir.serde.deserialize_model(proto)
    except Exception as exc:  # noqa: BLE001
        raise FrontendError(f"{path}: cannot be read into the IR: {exc}") from None
    model.graph.meta["lamina.source"] = str(path)
    warn_non_finite(model, str(path))
    return model


def non_finite_weights(model: ir.Model) -> list[tuple[str, int, int, int]]:
    """``(name, nan, inf, size)`` for each float initializer or Constant of the main graph holding
    NaN or Inf.

    A single-element Inf is left out: exporters write ``-inf`` scalars on purpose (mask fill
    values).
    """
    found = []
    tensors = [(name, v.const_value) for name, v in model.graph.initializers.items()]
    for node in model.graph:
        if (
            node.op_type == "Constant"
            and node.domain in ("", "ai.onnx")
            and "value" in node.attributes
        ):
            tensors.append(
                (node.outputs[0].name or node.name or "?", node.attributes["value"].value)
            )
    for name, tensor in tensors:
        if tensor is None or tensor.dtype is None or not tensor.dtype.is_floating_point():
            continue
        try:
            arr = np.asarray(tensor.numpy())
        except Exception:  # noqa: BLE001 - dtypes numpy cannot hold (float8...): not checked
            continue
        if arr.dtype.kind != "f" or np.isfinite(arr).all():
            continue
        nan = int(np.isnan(arr).sum())
        inf = int(np.isinf(arr).sum())
        if nan or arr.size > 1:
            found.append((name, nan, inf, int(arr.size)))
    return found


def warn_non_finite(model: ir.Model, where: str) -> None:
    """Log one warning naming the weights that hold NaN or Inf (outputs depending on them will
    too)."""
    bad = non_finite_weights(model)
    if not bad:
        return
    parts = [f"{name!r} ({nan} NaN, {inf} Inf of {size})" for name, nan, inf, size in bad[:5]]
    more = f" and {len(bad) - 5} more" if len(bad) > 5 else ""
    log.warning(
        "%s: weight%s %s%s hold%s NaN or Inf values; outputs that depend on them will be NaN or "
        "Inf: fix the checkpoint (or the export) that produced them",
        where,
        "s" if len(bad) > 1 else "",
        ", ".join(parts),
        more,
        "" if len(bad) > 1 else "s",
    )


def _load_text(path: Path, *, check: bool) -> ir.Model:
    from lamina.compiler.ir.parser import parse_ir

    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise FrontendError(f"{path}: cannot be read: {exc.strerror or exc}") from None
    beside = path.with_suffix(".onnx")
    weights = load_model(beside, check=check) if beside.exists() else None
    model = parse_ir(text, weights=weights, source=str(path))
    if check:
        from lamina.compiler.ir import to_proto

        try:
            onnx.checker.check_model(to_proto(model))
        except onnx.checker.ValidationError as exc:
            first = str(exc).strip().splitlines()[0] if str(exc).strip() else "invalid model"
            raise FrontendError(f"{path}: the parsed graph is not valid ONNX: {first}") from None
    model.graph.meta["lamina.source"] = str(path)
    return model


def save_model(model: ir.Model, path: str | os.PathLike) -> Path:
    """Save ``model`` so ONNX Runtime can run it (weights go to ``<name>.data`` beside it when over
    2 GB)."""
    from lamina.compiler.ir import to_proto

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    proto = to_proto(model)
    tmp = path.with_name(path.name + ".tmp")
    if proto.ByteSize() < 2**31 - 1:
        tmp.write_bytes(proto.SerializeToString())
    else:
        onnx.save_model(proto, str(tmp), save_as_external_data=True, location=path.name + ".data")
    tmp.replace(path)
    return path
