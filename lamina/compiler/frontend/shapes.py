"""Input shape specification: ``--input-shape input_ids=1x128`` and ``--dim batch=1 --dim
seq=128``."""

from __future__ import annotations

import onnx_ir as ir

from lamina.compiler.errors import UsageError


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """``input_ids=1x128`` -> ("input_ids", [1, 128])."""
    if "=" not in text:
        raise UsageError(f"--input-shape {text!r}: expected NAME=DIMS such as input_ids=1x128")
    name, dims = text.rsplit("=", 1)
    try:
        shape = [int(d) for d in dims.lower().replace(",", "x").split("x") if d]
    except ValueError:
        raise UsageError(
            f"--input-shape {text!r}: dims must be integers separated by 'x'"
        ) from None
    if not shape or any(d <= 0 for d in shape):
        raise UsageError(f"--input-shape {text!r}: dims must be positive integers")
    return name.strip(), shape


def parse_dim(text: str) -> tuple[str, int]:
    """``seq=128`` -> ("seq", 128)."""
    if "=" not in text:
        raise UsageError(f"--dim {text!r}: expected NAME=VALUE such as seq=128")
    name, value = text.rsplit("=", 1)
    try:
        n = int(value)
    except ValueError:
        raise UsageError(f"--dim {text!r}: the value must be an integer") from None
    if n <= 0:
        raise UsageError(f"--dim {text!r}: the value must be positive")
    return name.strip(), n


def symbolic_dims(model: ir.Model) -> list[str]:
    names: list[str] = []
    for v in model.graph.inputs:
        for d in v.shape or ():
            if not isinstance(d, int) and d.value and d.value not in names:
                names.append(d.value)
    return names


def apply_shapes(
    model: ir.Model,
    input_shapes: dict[str, list[int]] | None = None,
    dims: dict[str, int] | None = None,
) -> ir.Model:
    """Write static dims into the graph inputs, in place. Unknown names and rank clashes are
    errors."""
    input_shapes = dict(input_shapes or {})
    dims = dict(dims or {})
    inputs = {v.name: v for v in model.graph.inputs}
    for name in input_shapes:
        if name not in inputs:
            raise UsageError(
                f"--input-shape names input {name!r}, which the model does not have; inputs: "
                f"{', '.join(inputs)}"
            )
    known = symbolic_dims(model)
    for name in dims:
        if name not in known:
            hint = (
                f"symbolic dims of the inputs: {', '.join(known)}"
                if known
                else "all input dims are static"
            )
            raise UsageError(f"--dim {name!r} names no symbolic dim of the model's inputs; {hint}")
    for value in model.graph.inputs:
        old = list(value.shape) if value.shape is not None else None
        if value.name in input_shapes:
            new = input_shapes[value.name]
            if old is not None and len(old) != len(new):
                raise UsageError(
                    f"--input-shape {value.name}: the input has rank {len(old)}, the shape given "
                    f"has rank {len(new)}"
                )
            if old is not None:
                for i, (o, n) in enumerate(zip(old, new, strict=True)):
                    if isinstance(o, int) and o != n:
                        raise UsageError(
                            f"--input-shape {value.name}: dim {i} is fixed to {o} in the model, "
                            f"not {n}"
                        )
            value.shape = ir.Shape(new)
        elif old is not None and dims:
            value.shape = ir.Shape(
                [
                    dims.get(d.value, d) if not isinstance(d, int) and d.value in dims else d
                    for d in old
                ]
            )
    if input_shapes or dims:
        # Shapes recorded by the exporter were inferred for the old input dims: drop them so that
        # shape inference recomputes them from the new ones.
        for node in model.graph:
            for out in node.outputs:
                out.shape = None
    return model


def specialize(model: ir.Model, dims: dict[str, int]) -> ir.Model:
    """A copy of ``model`` with its symbolic input dims bound (e.g. batch=1, seq=128); dims the
    model does not have are ignored. The caller canonicalizes it again (the driver runs O0)."""
    copy = model.clone()
    apply_shapes(copy, dims={k: v for k, v in dims.items() if k in symbolic_dims(copy)})
    return copy


def max_positions(model: ir.Model) -> int | None:
    """Rows of the position-embedding table, the longest sequence the model takes (None if
    unknown)."""
    for name, value in model.graph.initializers.items():
        if "position" in name.lower() and value.shape is not None and len(value.shape) == 2:
            rows = value.shape[0]
            if isinstance(rows, int) and rows > 1:
                return rows - 2 if "roberta" in name.lower() else rows
    return None
