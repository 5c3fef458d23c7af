"""Head layout tracking for ``fuse-attention``.

Exporters split and merge attention heads with different chains of Reshape / Transpose (and fold the
softmax scale into them): ``Transpose{0,2,3,1}(Reshape(k))`` for K^T, or ``Transpose{0,1,3,2}``
after the head transpose, or a 3-D ``Reshape -> Transpose{0,2,1} -> Reshape`` round trip, or no-op
4-D reshapes. Instead of listing every chain, we replay it on *axis labels*: a tensor's layout is a
list of axis groups, each a tuple of atoms ``b`` (batch), ``s`` (sequence), ``h`` (head), ``d``
(head dim). A Transpose permutes the groups; a Reshape regroups the flattened atom sequence,
matching each target piece (a constant, 0, -1, or a runtime value from ``Shape``) against the atoms.
The chain is accepted when it ends in the layout the attention math needs, e.g. ``[b, h, d, s]`` for
K^T.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import onnx_ir as ir

from lamina.compiler.ir import const_array
from lamina.passes.fusion._match import NoMatch, is_op, rank, scalar

Groups = list[tuple[str, ...]]
DYN = "dyn"  # a runtime-valued piece of a shape vector: matches exactly one atom


@dataclass
class HeadPath:
    """A projected tensor ``proj`` [b, s, H*D] and the chain that lays it out for the attention
    core."""

    proj: ir.Value
    heads: int
    head_dim: int
    scale: float = 1.0
    nodes: list[ir.Node] = field(default_factory=list)


def reshape_pieces(node: ir.Node) -> list[int | str]:
    """The target of a Reshape as pieces: ints (incl. 0 and -1) or DYN; inferred static dims fill
    gaps."""
    target = node.inputs[1]
    out_shape = node.outputs[0].shape
    arr = const_array(target)
    pieces: list[int | str] | None = None
    if arr is not None:
        pieces = [int(v) for v in arr.reshape(-1)]
    else:
        concat = target.producer() if target is not None else None
        if is_op(concat, "Concat"):
            pieces = []
            for inp in concat.inputs:
                c = const_array(inp)
                if c is not None:
                    pieces.extend(int(v) for v in c.reshape(-1))
                elif inp is not None and inp.shape is not None and list(inp.shape) == [1]:
                    pieces.append(DYN)
                else:
                    pieces = None
                    break
        if pieces is None and out_shape is not None:
            pieces = [DYN] * len(out_shape)
    if pieces is None:
        raise NoMatch(
            f"Reshape {node.name!r}: target shape is neither constant nor a Concat of pieces"
        )
    if out_shape is not None and len(out_shape) == len(pieces):
        pieces = [
            d if p == DYN and isinstance(d, int) else p
            for p, d in zip(pieces, out_shape, strict=True)
        ]
    return pieces


def regroup(
    groups: Groups, sizes: dict[str, int | None], pieces: list[int | str], where: str
) -> Groups:
    """Apply a Reshape with ``pieces`` to a labelled layout."""
    atoms = [a for g in groups for a in g]
    starts = [sum(len(g) for g in groups[:j]) for j in range(len(groups))]
    if pieces.count(-1) > 1:
        raise NoMatch(f"{where}: two -1 in the reshape target")
    split = pieces.index(-1) if -1 in pieces else len(pieces)

    def take(piece: int | str, pos: int, j: int, step: int) -> tuple[tuple[str, ...], int]:
        if piece == 0:
            if step < 0 or j >= len(groups) or starts[j] != pos:
                raise NoMatch(f"{where}: 0 in the target copies a dim that was regrouped")
            return groups[j], pos + len(groups[j])
        if piece == DYN:
            if not 0 <= pos < len(atoms) if step > 0 else not 0 < pos <= len(atoms):
                raise NoMatch(f"{where}: reshape target has more pieces than the input has axes")
            return ((atoms[pos],), pos + 1) if step > 0 else ((atoms[pos - 1],), pos - 1)
        got: list[str] = []
        prod = 1
        while prod < int(piece):
            idx = pos if step > 0 else pos - 1
            if not 0 <= idx < len(atoms) or sizes.get(atoms[idx]) is None:
                raise NoMatch(f"{where}: cannot prove target dim {piece} covers whole axes")
            got.append(atoms[idx])
            prod *= sizes[atoms[idx]]  # type: ignore[operator]
            pos += step
        if prod != int(piece):
            raise NoMatch(f"{where}: target dim {piece} splits an axis ({prod} != {piece})")
        return tuple(got if step > 0 else reversed(got)), pos

    out: Groups = []
    pos = 0
    for j in range(split):
        g, pos = take(pieces[j], pos, j, 1)
        out.append(g)
    tail: Groups = []
    end = len(atoms)
    for j in range(len(pieces) - 1, split, -1):
        g, end = take(pieces[j], end, j, -1)
        tail.insert(0, g)
    if split < len(pieces):
        if end <= pos:
            raise NoMatch(f"{where}: -1 in the target covers no axis")
        out.append(tuple(atoms[pos:end]))
    elif pos != end:
        raise NoMatch(f"{where}: reshape target covers {pos} of {end} axes")
    return out + tail


def trace_back(value: ir.Value, expect: Groups, role: str) -> HeadPath:
    """Walk from an attention-core operand back to the head-split Reshape of a [b, s, H*D]
    projection."""
    chain: list[ir.Node] = []
    scale = 1.0
    cur = value
    while True:
        node = cur.producer()
        if is_op(node, "Mul", "Div"):
            k = scalar(node.inputs[1])
            data = node.inputs[0]
            if k is None and node.op_type == "Mul":
                k, data = scalar(node.inputs[0]), node.inputs[1]
            if k is None or k == 0:
                break
            scale = scale / k if node.op_type == "Div" else scale * k
        elif is_op(node, "Transpose", "Reshape"):
            data = node.inputs[0]
        else:
            break
        chain.append(node)
        cur = data
        if len(chain) > 12:
            raise NoMatch(f"{role}: head layout chain is too long")
    chain.reverse()
    first = next(
        (
            i
            for i, n in enumerate(chain)
            if n.op_type == "Reshape" and rank(n.inputs[0]) == 3 and rank(n.outputs[0]) == 4
        ),
        None,
    )
    if first is None:
        got = cur.producer()
        got_s = f"{got.op_type} {got.name!r}" if got is not None else "a graph input"
        raise NoMatch(f"{role}: no head-split Reshape between the attention core and {got_s}")
    split = chain[first]
    proj = split.inputs[0]
    if proj.shape is None or len(proj.shape) != 3:
        raise NoMatch(
            f"{role}: the head split input {proj.name!r} is not rank 3 [batch, seq, hidden]"
        )
    chain = chain[first:]
    scale = 1.0
    for node in chain:  # factors applied before the split stay outside, in the projection
        if node.op_type in ("Mul", "Div"):
            k = scalar(node.inputs[1])
            k = scalar(node.inputs[0]) if k is None else k
            scale = scale / k if node.op_type == "Div" else scale * k
    hidden = proj.shape[2]
    pieces = reshape_pieces(split)
    if len(pieces) != 4 or not all(isinstance(p, int) for p in pieces[2:]):
        raise NoMatch(
            f"{role}: Reshape {split.name!r} is not [b, s, heads, head_dim] with constant heads/dim"
        )
    heads, dim = int(pieces[2]), int(pieces[3])
    if -1 in (heads, dim):
        if not isinstance(hidden, int):
            raise NoMatch(f"{role}: head split uses -1 and the hidden size is unknown")
        heads, dim = (hidden // dim, dim) if heads == -1 else (heads, hidden // heads)
    if heads <= 0 or dim <= 0 or (isinstance(hidden, int) and heads * dim != hidden):
        raise NoMatch(f"{role}: head split {heads} x {dim} does not cover the hidden size {hidden}")
    for j in (0, 1):
        p = pieces[j]
        if isinstance(p, int) and p not in (0, -1) and p != proj.shape[j]:
            raise NoMatch(f"{role}: head split changes dim {j} of the projection")
    b, s = proj.shape[0], proj.shape[1]
    sizes = {"b": b if isinstance(b, int) else None, "s": s if isinstance(s, int) else None,
             "h": heads, "d": dim}
    groups: Groups = [("b",), ("s",), ("h",), ("d",)]
    for node in chain[1:]:
        if node.op_type in ("Mul", "Div"):
            continue
        if node.op_type == "Transpose":
            perm = [int(p) for p in node.attributes["perm"].value]
            if len(perm) != len(groups):
                raise NoMatch(f"{role}: Transpose {node.name!r} rank mismatch")
            groups = [groups[p] for p in perm]
        elif node.op_type == "Reshape":
            groups = regroup(groups, sizes, reshape_pieces(node), f"{role}: Reshape {node.name!r}")
    if groups != expect:
        have = "[" + ", ".join("*".join(g) for g in groups) + "]"
        want = "[" + ", ".join("*".join(g) for g in expect) + "]"
        raise NoMatch(f"{role}: layout after the head chain is {have}, expected {want}")
    return HeadPath(proj, heads, dim, scale, chain)


def trace_forward(value: ir.Value, sizes: dict[str, int | None]) -> tuple[ir.Value, list[ir.Node]]:
    """From the P@V output [b, h, s, d], follow the head merge to a [b, s, h*d] value."""
    groups: Groups = [("b",), ("h",), ("s",), ("d",)]
    want: Groups = [("b",), ("s",), ("h", "d")]
    cur, nodes = value, []
    while groups != want:
        users = [u.node for u in cur.uses() if not is_op(u.node, "Shape")]
        if len(users) != 1 or cur.is_graph_output():
            raise NoMatch(
                f"head merge: {cur.name!r} has {len(users)} users, expected one Transpose/Reshape"
            )
        node = users[0]
        if is_op(node, "Transpose"):
            groups = [groups[int(p)] for p in node.attributes["perm"].value]
        elif is_op(node, "Reshape") and node.inputs[0] is cur:
            groups = regroup(
                groups, sizes, reshape_pieces(node), f"head merge: Reshape {node.name!r}"
            )
        else:
            raise NoMatch(f"head merge: {node.op_type} {node.name!r} is not a Transpose/Reshape")
        nodes.append(node)
        cur = node.outputs[0]
        if len(nodes) > 6:
            raise NoMatch("head merge: chain too long")
    return cur, nodes
