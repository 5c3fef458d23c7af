"""The schedule shared by the row kernels (softmax, LayerNorm): one parallel loop over rows, every
stage of a row computed inside it, row-long loops vectorized and lane reductions (``[rows, lanes]``
partial results reduced over ``k``) vectorized over their lanes."""

from __future__ import annotations

import tvm

from .common import finish_kernel
from .isa import vector_lanes


def lanes_for(n: int, target: tvm.target.Target | None) -> int:
    """Vector lanes of ``target`` for rows of length ``n`` (16 on AVX-512, 8 on AVX2; 1: scalar
    code when n does not split into lanes). Without a target: 16, which LLVM splits as needed."""
    vec = vector_lanes(target) if target is not None else 16
    return vec if n % vec == 0 and n >= 2 * vec else 1


def schedule_rows(sch: tvm.s_tir.Schedule, output: str, inner: list[str], row_loops: list[str],
                  lane_reductions: list[str], lanes: int,
                  after: tuple[str, ...] = ()) -> tvm.tirx.PrimFunc:
    """Parallelize ``output`` over rows, compute the ``inner`` blocks at its row loop (and the
    ``after`` blocks, which read ``output``, after it), vectorize the row loops of ``output``
    and ``row_loops`` and the lane reductions, and each ``after`` row loop whole (split into
    lanes, TVM left it scalar and LLVM turned it into gathers); returns the scheduled,
    symbol-less PrimFunc."""
    r, j = sch.get_loops(sch.get_sblock(output))
    sch.parallel(r)
    for name in inner:
        sch.compute_at(sch.get_sblock(name), r)
    for name in after:
        sch.reverse_compute_at(sch.get_sblock(name), r)
    if lanes > 1:
        sch.vectorize(sch.split(j, [None, lanes])[1])
        for name in after:
            sch.vectorize(sch.get_loops(sch.get_sblock(name))[-1])
        for name in row_loops:
            loop = sch.get_loops(sch.get_sblock(name))[-1]
            sch.vectorize(sch.split(loop, [None, lanes])[1])
        for name in lane_reductions:
            block = sch.get_sblock(name)
            loops = sch.get_loops(block)  # r, v, k
            sch.reorder(loops[-1], loops[-2])
            sch.vectorize(sch.get_loops(block)[-1])
    return finish_kernel(sch.mod["main"])
