"""Head split of a merged QKV projection, in one pass.

``X[b*s, 3*h*d]`` (the output of the merged Q|K|V dense) -> ``Q[b, h, s, d]``, ``Kt[b, h, d, s]``,
``V[b, h, s, d]``: the layouts the attention batch matmuls read. Replaces a split and three
reshape/transpose copies with one parallel loop over (batch, head).
"""

from __future__ import annotations

import tvm
from tvm import relax, te

from .dense import finish_kernel


def head_split_kernel(b: int, s: int, h: int, d: int) -> tvm.tirx.PrimFunc:
    hid = h * d
    x = te.placeholder((b * s, 3 * hid), "float32", name="X")
    q = te.compute((b, h, s, d), lambda i, j, t, e: x[i * s + t, j * d + e], name="Q")
    kt = te.compute((b, h, d, s), lambda i, j, e, t: x[i * s + t, hid + j * d + e], name="Kt")
    v = te.compute((b, h, s, d), lambda i, j, t, e: x[i * s + t, 2 * hid + j * d + e], name="V")
    sch = tvm.s_tir.Schedule(te.create_prim_func([x, q, kt, v]))
    for name in ("Q", "Kt", "V"):
        loops = sch.get_loops(sch.get_sblock(name))
        sch.parallel(sch.fuse(loops[0], loops[1]))
        if name == "Kt":
            sch.reorder(loops[-1], loops[-2])  # read X rows contiguously, write Kt with a stride
        elif d % 8 == 0:
            sch.vectorize(loops[-1])
    return finish_kernel(sch.mod["main"])


def emit_head_split(bb: relax.BlockBuilder, x: relax.Expr, b: int, s: int, h: int, d: int
                    ) -> tuple[relax.Expr, relax.Expr, relax.Expr]:
    func = head_split_kernel(b, s, h, d)
    gv = bb.add_func(func, f"lamina_head_split_{b}x{s}x{h}x{d}")
    x2 = bb.emit(relax.op.reshape(x, (b * s, 3 * h * d)))
    out = bb.emit(relax.call_tir(gv, [x2], [relax.TensorType((b, h, s, d), "float32"),
                                             relax.TensorType((b, h, d, s), "float32"),
                                             relax.TensorType((b, h, s, d), "float32")]))
    return (bb.emit(relax.TupleGetItem(out, 0)), bb.emit(relax.TupleGetItem(out, 1)),
            bb.emit(relax.TupleGetItem(out, 2)))
