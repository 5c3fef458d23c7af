"""Loading ONNX files: existence, decoding, external data, validation, domains and opset
conversion."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import onnx
import onnx_ir as ir
from google.protobuf.message import DecodeError

from lamina.compiler.errors import FrontendError
from lamina.compiler.ir.domain import DOMAIN

log = logging.getLogger(__name__)

TARGET_OPSET = 18
MAX_OPSET = 22
KNOWN_DOMAINS = {"", "ai.onnx", DOMAIN}


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
    if check:
        try:
            if proto.ByteSize() < 2**31 - 1:
                onnx.checker.check_model(proto)
            else:
                onnx.checker.check_model(str(path))
        except onnx.checker.ValidationError as exc:
            first = str(exc).strip().splitlines()[0]
            raise FrontendError(f"{path}: the ONNX checker rejects the model: {first}") from None
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
            f"{where}: uses ONNX opset {current}; Lamina supports up to {MAX_OPSET}, "
            "export with a lower opset"
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
    return model


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
