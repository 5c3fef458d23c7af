"""Small graphs for the fusion pass tests, plus structural comparison and numeric checks."""

from __future__ import annotations

import math

import numpy as np
import onnx
import onnx.helper as h
import onnx_ir as ir

from lamina.backends.reference import run
from lamina.compiler.ir import clone
from lamina.compiler.pipeline import PassContext, get_pass

RNG = np.random.default_rng(0)
B, S, HID, HEADS, FF = 2, 6, 16, 2, 32


def f32(name: str, shape) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape)


def i64(name: str, shape) -> onnx.ValueInfoProto:
    return h.make_tensor_value_info(name, onnx.TensorProto.INT64, shape)


def const(name: str, array, dtype=np.float32) -> onnx.TensorProto:
    return onnx.numpy_helper.from_array(np.asarray(array, dtype), name)


def rand(name: str, *shape: int) -> onnx.TensorProto:
    return const(name, RNG.normal(0, 0.3, shape))


def model(nodes, inputs, outputs, inits=(), domains=()) -> ir.Model:
    graph = h.make_graph(nodes, "g", inputs, outputs, list(inits))
    opsets = [h.make_opsetid("", 18)] + [h.make_opsetid(d, 1) for d in domains]
    m = ir.serde.deserialize_model(h.make_model(graph, opset_imports=opsets, ir_version=10))
    # Shapes as the frontend would have them (infer-shapes is part of O0).
    return get_pass("infer-shapes")().run(m, PassContext()).model


def signature(m: ir.Model) -> list[str]:
    """The graph modulo value names: one line per node, inputs named by producer position."""
    index = {}
    lines = []
    for i, node in enumerate(m.graph):
        for j, out in enumerate(node.outputs):
            index[id(out)] = f"%{i}" + (f".{j}" if len(node.outputs) > 1 else "")
        args = []
        for v in node.inputs:
            if v is None:
                args.append("-")
            elif id(v) in index:
                args.append(index[id(v)])
            elif v.is_graph_input():
                args.append(v.name)
            else:
                arr = v.const_value.numpy() if v.const_value is not None else None
                args.append(f"const{list(arr.shape)}" if arr is not None else "?")
        attrs = ", ".join(f"{k}={a.value!r}" for k, a in sorted(node.attributes.items()))
        op = f"{node.domain}::{node.op_type}" if node.domain else node.op_type
        lines.append(f"{op}({', '.join(args)}){{{attrs}}}")
    return lines


def apply(pass_name: str, m: ir.Model, explain: bool = True):
    ctx = PassContext(debug_match=frozenset([pass_name]) if explain else frozenset())
    ctx.current_pass = pass_name
    result = get_pass(pass_name)().run(m, ctx)
    return result, ctx


def feeds_for(m: ir.Model, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    feeds = {}
    for v in m.graph.inputs:
        shape = [
            d if isinstance(d, int) else {"batch": B, "seq": S}.get(str(d), B) for d in v.shape
        ]
        if v.name == "attention_mask":
            mask = np.ones(shape, np.int64)
            mask[1, S - 2:] = 0
            feeds[v.name] = mask
        else:
            feeds[v.name] = rng.normal(0, 1, shape).astype(np.float32)
    return feeds


def assert_same_numbers(
    before: ir.Model, after: ir.Model, rtol: float = 1e-4, atol: float = 1e-5
) -> None:
    feeds = feeds_for(before)
    a, b = run(before, feeds), run(after, feeds)
    for k in a:
        np.testing.assert_allclose(b[k], a[k], rtol=rtol, atol=atol)


def check_fusion(pass_name: str, m: ir.Model, expected: list[str] | None = None) -> ir.Model:
    """Run ``pass_name``: it must change the graph (to ``expected``), keep the numbers, and be
    idempotent."""
    before = clone(m)
    result, _ = apply(pass_name, m)
    assert result.changed, f"{pass_name} did not fire"
    if expected is not None:
        assert signature(result.model) == expected
    assert_same_numbers(before, result.model)
    again, _ = apply(pass_name, result.model)
    assert not again.changed, f"{pass_name} is not idempotent"
    return result.model


def check_no_fire(pass_name: str, m: ir.Model, reason: str) -> None:
    before = signature(m)
    result, ctx = apply(pass_name, m)
    assert not result.changed
    assert signature(result.model) == before
    assert any(reason in e for e in ctx.explanations), ctx.explanations


# ---- layer norm ---------------------------------------------------------------------------------


def layernorm(*, twice=False, mul_self=False, reciprocal=False, eps_after=False, swap=False,
              pow_exp=2.0) -> ir.Model:
    n = [h.make_node("ReduceMean", ["x", "ax"], ["m"]), h.make_node("Sub", ["x", "m"], ["d"])]
    if twice:
        n += [
            h.make_node("ReduceMean", ["x", "ax"], ["m2"]),
            h.make_node("Sub", ["x", "m2"], ["d2"]),
        ]
    dn = "d2" if twice else "d"
    n.append(
        h.make_node("Mul", ["d", "d"], ["sq"])
        if mul_self
        else h.make_node("Pow", ["d", "two"], ["sq"])
    )
    n.append(h.make_node("ReduceMean", ["sq", "ax"], ["v"]))
    if eps_after:
        n += [h.make_node("Sqrt", ["v"], ["r"]), h.make_node("Add", ["r", "eps"], ["std"])]
    else:
        n += [h.make_node("Add", ["eps", "v"] if swap else ["v", "eps"], ["ve"]),
              h.make_node("Sqrt", ["ve"], ["std"])]
    if reciprocal:
        n += [h.make_node("Reciprocal", ["std"], ["rs"]), h.make_node("Mul", [dn, "rs"], ["nrm"])]
    else:
        n.append(h.make_node("Div", [dn, "std"], ["nrm"]))
    n += [h.make_node("Mul", ["gamma", "nrm"] if swap else ["nrm", "gamma"], ["g"]),
          h.make_node("Add", ["g", "beta"], ["y"])]
    inits = [const("ax", [-1], np.int64), const("two", pow_exp), const("eps", 1e-5),
             rand("gamma", HID), rand("beta", HID)]
    return model(n, [f32("x", ["batch", "seq", HID])], [f32("y", None)], inits)


# ---- GELU ---------------------------------------------------------------------------------------


def gelu(*, form="erf", mul_sqrt=False, half_first=False, half_on_sum=False, k=0.5) -> ir.Model:
    if form == "erf":
        n = [
            h.make_node("Mul", ["x", "rs2"], ["u"])
            if mul_sqrt
            else h.make_node("Div", ["x", "s2"], ["u"]),
            h.make_node("Erf", ["u"], ["t"]),
        ]
    else:
        n = [
            h.make_node("Pow", ["x", "three"], ["x3"]),
            h.make_node("Mul", ["x3", "c044"], ["kx3"]),
            h.make_node("Add", ["x", "kx3"], ["inner"]),
            h.make_node("Mul", ["c079", "inner"], ["u"]),
            h.make_node("Tanh", ["u"], ["t"]),
        ]
    n.append(h.make_node("Add", ["one", "t"], ["a"]))
    if half_first:
        n += [h.make_node("Mul", ["x", "half"], ["hx"]), h.make_node("Mul", ["hx", "a"], ["y"])]
    elif half_on_sum:
        n += [h.make_node("Mul", ["a", "half"], ["ha"]), h.make_node("Mul", ["x", "ha"], ["y"])]
    else:
        n += [h.make_node("Mul", ["x", "a"], ["xa"]), h.make_node("Mul", ["xa", "half"], ["y"])]
    inits = [const("s2", math.sqrt(2)), const("rs2", 1 / math.sqrt(2)), const("one", 1.0),
             const("half", k), const("three", 3.0), const("c044", 0.044715),
             const("c079", math.sqrt(2 / math.pi))]
    return model(n, [f32("x", ["batch", "seq", FF])], [f32("y", None)], inits)


# ---- attention ----------------------------------------------------------------------------------


def attention(*, scale="after", kt="0231", mask="torchscript", guard=False, mask_first=False,
              probs_output=False) -> ir.Model:
    """A BERT self-attention block on x [batch, seq, HID] with attention_mask [batch, seq]
    (int64)."""
    dh = HID // HEADS
    n = []
    for p in "qkv":
        n += [
            h.make_node("MatMul", ["x", f"W{p}"], [f"{p}mm"]),
            h.make_node("Add", [f"b{p}", f"{p}mm"], [p]),
            h.make_node("Reshape", [p, "split"], [f"{p}4"]),
        ]
    n += [h.make_node("Transpose", ["q4"], ["qh"], perm=[0, 2, 1, 3]),
          h.make_node("Transpose", ["v4"], ["vh"], perm=[0, 2, 1, 3])]
    if kt == "0231":
        n.append(h.make_node("Transpose", ["k4"], ["kt"], perm=[0, 2, 3, 1]))
    else:
        n += [h.make_node("Transpose", ["k4"], ["kh"], perm=[0, 2, 1, 3]),
              h.make_node("Transpose", ["kh"], ["kt"], perm=[0, 1, 3, 2])]
    qa, ka = "qh", "kt"
    if scale == "sqrt_both":
        n += [h.make_node("Mul", ["qh", "sq"], ["qs"]), h.make_node("Mul", ["kt", "sq"], ["ks"])]
        qa, ka = "qs", "ks"
    n.append(h.make_node("MatMul", [qa, ka], ["qk"]))
    sc = "qk"
    if scale == "after":
        n.append(h.make_node("Div", ["qk", "sqrt_dh"], ["sc"]))
        sc = "sc"
    inputs = [f32("x", ["batch", "seq", HID]), i64("attention_mask", ["batch", "seq"])]
    if mask == "torchscript":  # (1 - mask) * min, [b, 1, 1, s]
        n += [
            h.make_node("Unsqueeze", ["attention_mask", "ax12"], ["m4"]),
            h.make_node("Cast", ["m4"], ["mf"], to=onnx.TensorProto.FLOAT),
            h.make_node("Sub", ["one", "mf"], ["inv"]),
            h.make_node("Mul", ["inv", "fmin"], ["bias"]),
        ]
    elif mask == "bias":  # a learned additive bias: not a padding mask
        inputs.append(f32("bias", [1, HEADS, "seq", "seq"]))
    if mask != "none":
        n.append(h.make_node("Add", ["bias", sc] if mask_first else [sc, "bias"], ["masked"]))
        sc = "masked"
    n.append(h.make_node("Softmax", [sc], ["p"], axis=-1))
    pv_in = "p"
    if guard:
        n += [
            h.make_node("IsNaN", ["p"], ["nan"]),
            h.make_node("Where", ["nan", "zero", "p"], ["pg"]),
        ]
        pv_in = "pg"
    n += [
        h.make_node("MatMul", [pv_in, "vh"], ["o"]),
        h.make_node("Transpose", ["o"], ["o4"], perm=[0, 2, 1, 3]),
        h.make_node("Reshape", ["o4", "merge"], ["y"]),
    ]
    outputs = [f32("y", None)] + ([f32("p", None)] if probs_output else [])
    inits = [rand(f"W{p}", HID, HID) for p in "qkv"] + [rand(f"b{p}", HID) for p in "qkv"]
    inits += [
        const("split", [0, 0, HEADS, dh], np.int64),
        const("merge", [0, 0, HID], np.int64),
        const("sqrt_dh", math.sqrt(dh)),
        const("sq", dh**-0.25),
        const("ax12", [1, 2], np.int64),
        const("one", 1.0),
        const("fmin", np.finfo(np.float32).min),
        const("zero", 0.0),
    ]
    return model(n, inputs, outputs, inits)


# ---- dense layers -------------------------------------------------------------------------------


def dense(*, gelu_act=True, residual=True, const_weight=True) -> ir.Model:
    n = [h.make_node("MatMul", ["x", "W" if const_weight else "w_in"], ["xw"]),
         h.make_node("Add", ["xw", "b"], ["z"])]
    out = "z"
    if gelu_act:
        n.append(h.make_node("Gelu", ["z"], ["a"], domain="lamina", approximate="none"))
        out = "a"
    if residual:
        n.append(h.make_node("Add", ["r", out], ["y"]))
    else:
        n.append(h.make_node("Identity", [out], ["y"]))
    inputs = [f32("x", ["batch", "seq", HID]), f32("r", ["batch", "seq", HID])]
    if not const_weight:
        inputs.append(f32("w_in", [HID, HID]))
    inits = [rand("W", HID, HID), rand("b", HID)]
    return model(n, inputs, [f32("y", None)], inits, domains=("lamina",))
