"""Lamina's graph IR: ONNX-compatible models held as :mod:`onnx_ir` objects.

Any intermediate graph can be serialized with :func:`to_proto` (saved with
:func:`lamina.compiler.frontend.save_model`) and run by ONNX Runtime: ops of the ``lamina`` domain
carry a reference definition (an ONNX function, see :mod:`lamina.compiler.ir.domain`) that
``to_proto`` attaches.
"""

from __future__ import annotations

from lamina.compiler.ir.core import (
    ORIGIN_KEY,
    Namer,
    clone,
    const_array,
    count_nodes,
    from_proto,
    op_histogram,
    set_origin,
    to_proto,
)
from lamina.compiler.ir.printer import print_ir

__all__ = [
    "ORIGIN_KEY",
    "Namer",
    "clone",
    "const_array",
    "count_nodes",
    "from_proto",
    "op_histogram",
    "print_ir",
    "set_origin",
    "to_proto",
]
