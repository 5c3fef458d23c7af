"""Software prefetch in scheduled kernels.

TIR's schedule primitives cannot place a statement with side effects, so a prefetch is added to a
finished (still block-structured) PrimFunc: :func:`prepend_to_loop` rebuilds the path from the root
to one loop and puts ``Evaluate(llvm.prefetch(...))`` calls at the start of that loop's body.

Where it goes matters: a call inside the innermost reduction loop makes LLVM keep the register tile
in memory (the call may touch it), so the dense kernel splits K into chunks and prefetches once per
chunk, outside the loop whose accumulators must stay in registers.
"""

from __future__ import annotations

from collections.abc import Callable

from tvm import s_tir, tirx

PREFETCH = "llvm.prefetch.p0"


def prefetch(buffer: tirx.Buffer, indices: list[tirx.PrimExpr], locality: int = 3) -> tirx.Stmt:
    """``prefetch(&buffer[indices])`` for reading (``locality`` 3 = keep in all cache levels)."""
    addr = tirx.address_of(buffer[tuple(indices)])
    i32 = lambda v: tirx.const(v, "int32")  # noqa: E731
    return tirx.Evaluate(
        tirx.call_llvm_intrin("void", PREFETCH, addr, i32(0), i32(locality), i32(1))
    )


def panel_share(W: tirx.Buffer, panel: tirx.PrimExpr, chunk: tirx.PrimExpr, f: int | tirx.PrimExpr,
                per_chunk: int, lines: int, nv: int, vec: int) -> tirx.PrimExpr:
    """The prefetch call of line ``f`` of chunk ``chunk``'s share of a packed weight panel
    ``W[panel, K steps, nv * vec]`` (``lines = K steps * nv`` vector-sized lines, ``per_chunk``
    of them per chunk, wrapping): the dense kernels' next-panel prefetch, a chunk being one K chunk
    of one row tile (INT8 and BF16 dense)."""
    line = (chunk * per_chunk + f) % lines
    i32 = lambda v: tirx.const(v, "int32")  # noqa: E731
    return tirx.call_llvm_intrin("void", PREFETCH,
                                 tirx.address_of(W[panel, line // nv, line % nv * vec]),
                                 i32(0), i32(3), i32(1))


def prepend_to_loop(func: tirx.PrimFunc, loop_var: tirx.Var,
                    make: Callable[[], list[tirx.Stmt]]) -> tirx.PrimFunc:
    """``func`` with ``make()``'s statements first in the body of the loop over ``loop_var``."""
    found = []

    def visit(stmt: tirx.Stmt) -> tirx.Stmt:
        if isinstance(stmt, tirx.For):
            if stmt.loop_var.same_as(loop_var):
                found.append(stmt)
                body = tirx.SeqStmt([*make(), stmt.body])
            else:
                body = visit(stmt.body)
                if body.same_as(stmt.body):
                    return stmt
            return tirx.For(stmt.loop_var, stmt.min, stmt.extent, stmt.kind, body,
                            stmt.thread_binding, stmt.annotations)
        if isinstance(stmt, tirx.SeqStmt):
            parts = [visit(s) for s in stmt.seq]
            if all(a.same_as(b) for a, b in zip(parts, stmt.seq, strict=True)):
                return stmt
            return tirx.SeqStmt(parts)
        if isinstance(stmt, s_tir.SBlockRealize):
            block = stmt.block
            body = visit(block.body)
            if body.same_as(block.body):
                return stmt
            new = s_tir.SBlock(block.iter_vars, block.reads, block.writes, block.name_hint, body,
                               block.init, block.alloc_buffers, block.match_buffers,
                               block.annotations)
            return s_tir.SBlockRealize(stmt.iter_values, stmt.predicate, new)
        return stmt

    body = visit(func.body)
    if not found:
        raise ValueError(f"no loop over {loop_var} in the function")
    return func.with_body(body)
