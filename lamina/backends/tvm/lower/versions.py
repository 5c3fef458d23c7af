"""Which versions of each ONNX op the converters implement.

A model's opset picks, for every op, the newest version of that op defined at or below it (its
``since_version``). The converters in ``ops/`` were checked against every version of their op up
to opset :data:`REVIEWED_OPSET`: later versions of these ops only added element types (bfloat16,
float8, int4, ...: refused by dtype at lowering) or behaviour on such types (Cast's ``saturate``
and ``round_mode``, Range's ``stash_type`` for 16-bit floats), except where a converter branches
on the opset itself (Reduce* ``axes``, Split ``num_outputs``, Clip bounds, Softmax's axis).

An op version newer than :data:`REVIEWED_OPSET` (a newer ``onnx`` package) is refused with the op
and its version named, until someone reads its changelog and raises the number; versions listed
in :data:`UNSUPPORTED` are refused whatever the opset.
"""

from __future__ import annotations

import onnx

REVIEWED_OPSET = 28

# (op_type, since_version) -> why the converter does not implement that version's semantics.
UNSUPPORTED: dict[tuple[str, int], str] = {}


def op_version(op_type: str, opset: int, domain: str = "") -> int | None:
    """The ``since_version`` of ``op_type`` at ``opset``, or None if ONNX does not define it."""
    try:
        return int(onnx.defs.get_schema(op_type, opset, domain).since_version)
    except onnx.defs.SchemaError:
        return None


def unsupported_version(op_type: str, opset: int) -> str | None:
    """Why the ONNX op ``op_type`` at ``opset`` cannot be lowered, or None if it can."""
    since = op_version(op_type, opset)
    if since is None:
        return None
    why = UNSUPPORTED.get((op_type, since))
    if why:
        return f"{op_type}-{since} (opset {opset}): {why}"
    if since > REVIEWED_OPSET:
        return (f"{op_type}-{since} (opset {opset}) is newer than the versions Lamina's lowering "
                f"implements (up to opset {REVIEWED_OPSET}); export with opset {REVIEWED_OPSET}")
    return None
