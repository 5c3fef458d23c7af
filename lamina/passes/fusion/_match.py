"""Small matching helpers shared by the fusion passes.

A matcher walks the graph from an anchor node and raises :class:`NoMatch` with a one-line reason as
soon as a check fails; the pass turns the reason into a ``--debug-match`` explanation. Helpers here
never mutate the graph. Which users a matched node may have is not a helper's business: the rules
framework (``_rules.py``) checks removability once for every rule.
"""

from __future__ import annotations

import onnx_ir as ir

from lamina.compiler.ir import const_array

STANDARD = ("", "ai.onnx")


class NoMatch(Exception):  # noqa: N818 - a control-flow signal, not an error
    """A pattern check failed; ``str(exc)`` says which one, ``node`` (when known) is where matching
    stopped and ``depth`` how many nodes had matched (a rule pass reports the failure that got
    furthest)."""

    def __init__(self, reason: str, node: ir.Node | None = None) -> None:
        super().__init__(reason)
        self.node = node
        self.depth: float = 0


def is_op(node: ir.Node | None, *op_types: str, domain: str | None = None) -> bool:
    if node is None:
        return False
    if domain is None:
        ok = node.domain in STANDARD
    else:
        ok = node.domain == domain
    return ok and (not op_types or node.op_type in op_types)


def producer(value: ir.Value | None, *op_types: str, domain: str | None = None) -> ir.Node | None:
    """The node producing ``value`` if it is one of ``op_types`` (standard domain unless
    ``domain``)."""
    if value is None:
        return None
    node = value.producer()
    return node if is_op(node, *op_types, domain=domain) else None


def scalar(value: ir.Value | None) -> float | None:
    """The value of a constant with exactly one element, else None."""
    arr = const_array(value)
    if arr is None or arr.size != 1:
        return None
    return float(arr.reshape(-1)[0])


def close(a: float | None, b: float, rtol: float = 1e-3) -> bool:
    return a is not None and abs(a - b) <= rtol * abs(b)


def reduce_axes(node: ir.Node) -> list[int] | None:
    """Axes of a Reduce* node (attribute, opset < 18, or input), None if not constant."""
    attr = node.attributes.get("axes")
    if attr is not None:
        return [int(a) for a in attr.value]
    if len(node.inputs) > 1 and node.inputs[1] is not None:
        arr = const_array(node.inputs[1])
        return None if arr is None else [int(a) for a in arr.reshape(-1)]
    return None


def keepdims(node: ir.Node) -> bool:
    attr = node.attributes.get("keepdims")
    return attr is None or bool(attr.value)


def is_last_axis(axes: list[int] | None, rank: int | None) -> bool:
    if axes is None or len(axes) != 1:
        return False
    return axes[0] == -1 or (rank is not None and axes[0] == rank - 1)


def rank(value: ir.Value | None) -> int | None:
    return None if value is None or value.shape is None else len(value.shape)


def last_dim(value: ir.Value | None) -> int | None:
    if value is None or value.shape is None or len(value.shape) == 0:
        return None
    d = value.shape[-1]
    return d if isinstance(d, int) else None


def where(node: ir.Node) -> str:
    return f"{node.op_type} {node.name!r}" if node.name else node.op_type
