"""The QDQ form of quantized dense layers (static u8 / s8 activations, dynamic, per-channel int8
weights on lamina::Linear, MatMul and Gemm) lowered to INT8 kernels, against ONNX Runtime running
the same QDQ graph."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper, numpy_helper

pytestmark = pytest.mark.tvm

F = TensorProto.FLOAT
B, S, H, FF = 1, 16, 64, 128


def _qdq_weight(name: str, w: np.ndarray, axis: int, bits: int = 8):
    """Per-channel symmetric int8 weight (``bits`` 7: in [-63, 63]) + its DequantizeLinear (the
    quantize-int8 contract)."""
    top = 2 ** (bits - 1) - 1
    amax = np.abs(w).max(axis=1 - axis)
    scale = (amax / top).astype(np.float32)
    shape = (1, -1) if axis == 1 else (-1, 1)
    wq = np.clip(np.rint(w / scale.reshape(shape)), -top, top).astype(np.int8)
    inits = [(f"{name}_q", wq), (f"{name}_s", scale), (f"{name}_zp", np.zeros_like(wq[0] if axis
                                                                               else wq[:, 0]))]
    node = helper.make_node("DequantizeLinear", [f"{name}_q", f"{name}_s", f"{name}_zp"], [name],
                            axis=axis)
    return [node], inits


def _qdq_act(x: str, scale: float, zp: int, signed: bool):
    zdt = np.int8 if signed else np.uint8
    inits = [(f"{x}_s", np.float32(scale)), (f"{x}_zp", np.array(zp, zdt))]
    nodes = [helper.make_node("QuantizeLinear", [x, f"{x}_s", f"{x}_zp"], [f"{x}_q"]),
             helper.make_node("DequantizeLinear", [f"{x}_q", f"{x}_s", f"{x}_zp"], [f"{x}_dq"])]
    return nodes, inits


def _pruned(w: np.ndarray, density: float | None, seed: int) -> np.ndarray:
    """``w [K, N]`` with all but ``density`` of its 4x1 blocks (4 outputs of one input) zeroed."""
    if density is None:
        return w
    k, n = w.shape
    keep = np.random.default_rng(seed).random((k, n // 4)) < density
    return (w.reshape(k, n // 4, 4) * keep[:, :, None]).reshape(k, n)


def qdq_model(seq: int = S, density: float | None = None, bits: int = 8) -> ir.Model:
    """LayerNorm -> Linear(gelu) -> Mul (smooth-quant) -> Linear(+residual) with u8 activations;
    a Gemm (transB) on s8 activations; a MatMul on dynamically quantized activations. Three
    outputs. ``density``: the two Linears' weights pruned to that fraction of 4x1 blocks; ``bits``:
    the weights' bits."""
    rng = np.random.default_rng(0)
    nodes, inits = [], []
    inits += [("ln_g", np.ones(H, np.float32)), ("ln_b", np.zeros(H, np.float32))]
    nodes.append(helper.make_node("LayerNormalization", ["x", "ln_g", "ln_b"], ["h"], axis=-1))
    for part in (_qdq_act("h", 8.0 / 255, 128, False),
                 _qdq_weight("w1", _pruned(rng.standard_normal((H, FF)).astype(np.float32) * 0.1,
                                           density, 1), 1, bits),
                 _qdq_act("gs", 2.5 / 255, 20, False),
                 _qdq_weight("w2", _pruned(rng.standard_normal((FF, H)).astype(np.float32) * 0.1,
                                           density, 2), 1, bits),
                 _qdq_act("y2d", 6.0 / 127, 0, True),
                 _qdq_weight("w3", rng.standard_normal((32, H)).astype(np.float32) * 0.1, 0,
                             bits),
                 _qdq_weight("w4", rng.standard_normal((H, 16)).astype(np.float32) * 0.1, 1,
                             bits)):
        nodes += part[0]
        inits += part[1]
    inits += [("b1", rng.standard_normal(FF).astype(np.float32) * 0.1),
              ("b2", rng.standard_normal(H).astype(np.float32) * 0.1),
              ("b3", rng.standard_normal(32).astype(np.float32) * 0.1),
              ("g_smooth", rng.uniform(0.5, 2.0, FF).astype(np.float32))]
    nodes += [
        helper.make_node("Linear", ["h_dq", "w1", "b1"], ["g"], domain="lamina", activation="gelu"),
        # smooth-quant's per-channel Mul before the quantizer (fused into the producer's kernel)
        helper.make_node("Mul", ["g", "g_smooth"], ["gs"]),
        helper.make_node("Linear", ["gs_dq", "w2", "b2", "h"], ["y"], domain="lamina",
                         has_residual=1),
        helper.make_node("Reshape", ["y", "shape2d"], ["y2d"]),
        helper.make_node("Gemm", ["y2d_dq", "w3", "b3"], ["out_gemm"], transB=1),
        helper.make_node("DynamicQuantizeLinear", ["y"], ["yd_q", "yd_s", "yd_zp"]),
        helper.make_node("DequantizeLinear", ["yd_q", "yd_s", "yd_zp"], ["yd_dq"]),
        helper.make_node("MatMul", ["yd_dq", "w4"], ["out_dyn"]),
    ]
    inits.append(("shape2d", np.array([B * seq, H], np.int64)))
    return _ir_model("qdq", nodes, inits, [helper.make_tensor_value_info("x", F, [B, seq, H])],
                     ["y", "out_gemm", "out_dyn"])


def _ir_model(name: str, nodes: list, inits: list, inputs: list, outputs: list[str]) -> ir.Model:
    """The graph (float outputs ``outputs``, initializers ``(name, array)``) as an opset-19 model
    with the lamina domain."""
    g = helper.make_graph(nodes, name, inputs,
                          [helper.make_tensor_value_info(n, F, None) for n in outputs],
                          [numpy_helper.from_array(np.asarray(v), n) for n, v in inits])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 19),
                                            helper.make_opsetid("lamina", 1)])
    m.ir_version = 9
    return ir.from_proto(m)


def test_plan_absorbs_the_qdq_nodes():
    from lamina.backends.tvm.kernels import host_supports, target_for
    from lamina.backends.tvm.lower.ops.quant_dense import plan_int8, quantized_values

    if not host_supports("avx2"):
        pytest.skip("host CPU runs no INT8 kernel family")
    m = qdq_model()
    matches, skip = plan_int8(m.graph, target_for("avx2", 2))
    assert sorted(n.op_type for n in matches) == ["Gemm", "Linear", "Linear", "MatMul"]
    kinds = sorted(n.op_type for n in skip)
    assert kinds == (["DequantizeLinear"] * 8 + ["DynamicQuantizeLinear"] + ["Mul"]
                     + ["QuantizeLinear"] * 3)
    # The smooth Mul goes into the quantization of the GELU output, and that into the first
    # Linear's epilogue (nothing else reads its float output).
    first, second = (n for n in matches if n.op_type == "Linear")
    assert matches[second].smooth is not None and matches[second].x.name == "g"
    assert matches[first].quant_out is matches[second]
    assert all(matches[n].quant_out is None for n in matches if n is not first)
    # The LayerNorm quantizes its own output for the first Linear; dynamic inputs stay apart.
    assert {v.name for v in quantized_values(matches, skip)} == {"h", "g", "y2d"}
    assert plan_int8(m.graph, target_for("generic", 2)) == ({}, set())
    assert plan_int8(m.graph, None) == ({}, set())


# A block-sparse INT8 cost table (``calibrate_int8``'s form, ns per token) whose sparse kernel pays
# even at this test model's size (measured ones have a per-output cost, 0.16 ns on Zen5, that only
# layers of a few hundred inputs amortize).
_TABLE = {"target": "test", "tokens": 128, "dense": {"ns_per_mac": 0.0013},
          "sparse": {"ns_per_block": 0.0065, "ns_per_col": 0.01}}


def _policy(table: dict = _TABLE):
    from lamina.backends.tvm.lower.ops.quant_dense import SparseInt8Policy
    from lamina.passes.sparsity._cost import Int8CostTable

    return SparseInt8Policy(lambda: Int8CostTable.from_dict(table))


def _build(tmp: Path, target: str, seq: int = S, density: float | None = None,
           int8_sparse=None, bits: int = 8) -> Path:
    from lamina.backends.tvm import build_artifact

    if int8_sparse is None:
        int8_sparse = _policy()
    return build_artifact({(B, seq): qdq_model(seq, density, bits)}, tmp / f"{target}.lamina",
                          target=target, threads=2, schedule="none", int8_sparse=int8_sparse)


def _feeds(seq: int = S) -> dict[str, np.ndarray]:
    return {"x": np.random.default_rng(1).standard_normal((B, seq, H)).astype(np.float32)}


@pytest.mark.parametrize("fam, bits", [("vnni", 8), ("avx2", 7), ("avx2", 8)])
def test_int8_artifact_matches_onnxruntime_on_the_qdq_graph(fam, bits, tmp_path, caplog):
    """The same integers as ONNX Runtime on the QDQ graph; on AVX2 for 7-bit weights (what
    ``lamina compile`` quantizes for it), while 8-bit ones are re-rounded to 7 bits, with one
    warning."""
    from lamina.backends.reference import run
    from lamina.backends.tvm import load
    from lamina.backends.tvm.kernels import host_supports

    if not host_supports(fam):
        pytest.skip(f"host CPU cannot run {fam} code")
    with caplog.at_level("WARNING", logger="lamina.backends.tvm.lower.ops.quant_dense"):
        art = _build(tmp_path, {"vnni": "x86-avx512-vnni", "avx2": "x86-avx2"}[fam], bits=bits)
    warned = [r for r in caplog.records if "re-rounded to 7 bits" in r.getMessage()]
    assert len(warned) == (1 if (fam, bits) == ("avx2", 8) else 0)
    got = load(art).run(_feeds())
    want = run(qdq_model(bits=bits), _feeds())
    for name, w in want.items():
        g = got[name]
        assert g.shape == w.shape, name
        err = np.abs(g - w)
        if bits == 7 or fam == "vnni":
            # Same integers as ONNX Runtime; only float rounding differs, and where it moves a
            # value across a rounding boundary of the next quantizer, one quantization step.
            assert np.mean(err < 1e-4) > 0.97, (name, err.max())
            assert err.max() < 0.1, name
        else:
            # 8-bit weights re-rounded to 7 bits against ORT's 8-bit ones.
            cos = float(np.dot(g.ravel(), w.ravel())
                        / (np.linalg.norm(g) * np.linalg.norm(w)))
            assert cos > 0.999, (name, cos)


# The cost model, not a density threshold, decides: a table whose sparse kernel is slow keeps the
# same pruned layers dense.
_SLOW_SPARSE = {**_TABLE, "sparse": {"ns_per_block": 0.05, "ns_per_col": 0.01}}


@pytest.mark.parametrize("sparse", ["fast", "slow", "off"])
def test_pruned_int8_layers_run_block_sparse_and_match_onnxruntime(sparse, tmp_path):
    """Linears on 4x1-pruned int8 weights run the block-sparse INT8 kernel (their activations
    quantized transposed, not by their producers) where the cost table predicts a gain, and the
    manifest lists each decision; the same integers as ONNX Runtime either way."""
    import json

    from lamina.backends.reference import run
    from lamina.backends.tvm import load
    from lamina.backends.tvm.kernels import host_supports

    if not host_supports("vnni"):
        pytest.skip("host CPU cannot run AVX-512 VNNI code")
    seq = 64  # whole 64-token tiles
    policy = {"fast": _policy(), "slow": _policy(_SLOW_SPARSE), "off": False}[sparse]
    art = _build(tmp_path, "x86-avx512-vnni", seq, density=0.15, int8_sparse=policy)
    info = json.loads((art / "manifest.json").read_text())["extra"].get("int8_sparse")
    if sparse == "off":
        assert info is None
    else:
        # w1 and w2 (w3, w4: N not 64-wide)
        assert info["pruned"] == 2 and len(info["decisions"]) == 2, info
        assert info["sparse"] == (2 if sparse == "fast" else 0), info
        assert all(("SPARSE" in d) == (sparse == "fast") and "predicted gain" in d
                   for d in info["decisions"]), info
    got = load(art).run(_feeds(seq))
    want = run(qdq_model(seq, 0.15), _feeds(seq))
    for name, w in want.items():
        err = np.abs(got[name] - w)
        assert np.mean(err < 1e-4) > 0.97, (name, err.max())
        assert err.max() < 0.1, name


def test_manifest_requires_vnni_only_for_int8_vnni_code(tmp_path, monkeypatch):
    import json

    import lamina.backends.tvm.target as target
    from lamina.backends.tvm import load
    from lamina.backends.tvm.kernels import host_supports
    from lamina.compiler.errors import ArtifactError

    if not host_supports("vnni"):
        pytest.skip("host CPU has no AVX-512 VNNI")
    art = _build(tmp_path, "x86-avx512-vnni")
    tgt = json.loads((art / "manifest.json").read_text())["target"]
    assert "avx512vnni" in tgt["required_features"] and tgt["isa_level"] == "x86-avx512-vnni"
    have = target.host_features() - {"avx512vnni"}
    monkeypatch.setattr(target, "host_features", lambda: have)
    with pytest.raises(ArtifactError, match=r"lacks avx512vnni") as err:
        load(art)
    assert "\n" not in str(err.value)


def test_amx_artifact_requires_amx_and_is_refused_without_it(tmp_path):
    """Built for AMX anywhere (LLVM has the intrinsics); runs only where the CPU has AMX."""
    import json

    from lamina.backends.reference import run
    from lamina.backends.tvm import load
    from lamina.backends.tvm.kernels import host_supports
    from lamina.compiler.errors import ArtifactError

    art = _build(tmp_path, "x86-avx512-amx", seq=32)  # 32 rows: the 32 x 32 AMX task tile
    manifest = json.loads((art / "manifest.json").read_text())
    req = manifest["target"]["required_features"]
    assert {"amx-tile", "amx-int8"} <= set(req) and "amx-bf16" not in req
    assert manifest["precision"] == "int8"
    if host_supports("amx"):
        got = load(art).run(_feeds(32))
        for name, w in run(qdq_model(32), _feeds(32)).items():
            assert np.mean(np.abs(got[name] - w) < 1e-4) > 0.97, name
        return
    with pytest.raises(ArtifactError, match=r"lacks .*amx-int8") as err:
        load(art)
    assert "\n" not in str(err.value)


def _qkv_attention_model(seq: int = 32, hid: int = 64, heads: int = 2) -> ir.Model:
    """An INT8 merged QKV projection (lamina Linear, u8 activations) split into Q, K, V for an
    attention of ``heads`` heads (head size 32 or more: the BF16 attention's shapes)."""
    rng = np.random.default_rng(3)
    nodes, inits = [], []
    for part in (_qdq_act("x", 8.0 / 255, 128, False),
                 _qdq_weight("wqkv", rng.standard_normal((hid, 3 * hid)).astype(np.float32)
                             * (0.2 * (64 / hid) ** 0.5), 1)):
        nodes += part[0]
        inits += part[1]
    inits += [("bqkv", rng.standard_normal(3 * hid).astype(np.float32) * 0.1),
              ("split", np.array([hid] * 3, np.int64))]
    nodes += [
        helper.make_node("Linear", ["x_dq", "wqkv", "bqkv"], ["qkv"], domain="lamina"),
        helper.make_node("Split", ["qkv", "split"], ["q", "k", "v"], axis=-1),
        helper.make_node("Attention", ["q", "k", "v", "m"], ["y"], domain="lamina",
                         num_heads=heads, scale=0.25, mask_kind="key_padding"),
    ]
    return _ir_model("qkv", nodes, inits,
                     [helper.make_tensor_value_info("x", F, [1, seq, hid]),
                      helper.make_tensor_value_info("m", TensorProto.INT64, [1, seq])], ["y"])


@pytest.mark.parametrize("hid, heads, kernel", [
    (64, 2, "lamina_dense_int8_32x64x192_bf16"),
    # 6 panels of 96 columns: each thread's 3 heads of Q, K and V in whole panels
    (192, 6, "lamina_dense_int8_32x192x576_bf16_heads"),
])
def test_int8_qkv_projection_writes_bf16_for_the_bf16_attention(hid, heads, kernel, tmp_path):
    """On a BF16 target the INT8 QKV projection writes bf16 straight for the BF16 attention (its
    float form is dead code): the same result as rounding its float output, within bf16's error
    of ONNX Runtime on the QDQ graph. For one sequence, where its panels allow, each thread
    computes the Q, K and V columns of the heads its attention thread takes (``_heads``)."""
    from lamina.backends.reference import run
    from lamina.backends.tvm import build_artifact, load
    from lamina.backends.tvm.kernels import host_supports

    model = _qkv_attention_model(hid=hid, heads=heads)
    dump = tmp_path / "dump"
    art = build_artifact({(1, 32): model}, tmp_path / "qkv.lamina", target="x86-avx512-bf16",
                         threads=2, schedule="none", dump_dir=dump)
    import re

    final = sorted((dump / "tvm").glob("*"))[-1].read_text()
    assert "_bf16in" in final
    # the float projection was removed
    assert set(re.findall(r"lamina_dense_int8_\w+", final)) == {kernel}
    if not host_supports("avx512bf16"):
        return
    rng = np.random.default_rng(4)
    feeds = {"x": rng.standard_normal((1, 32, hid)).astype(np.float32),
             "m": (np.arange(32) < 29).astype(np.int64)[None]}
    got, want = load(art).run(feeds)["y"], run(model, feeds)["y"]
    assert np.abs(got - want).max() < 5e-2
    assert float(np.corrcoef(got.ravel(), want.ravel())[0, 1]) > 0.999


def _attention_out_proj_model(seq: int = 32, bits: int = 8) -> ir.Model:
    """A 2-head attention (head size 32) whose output feeds only an INT8 out-projection through
    smooth-quant's Mul and a static Q / DQ, plus the residual (``bits``-bit weights)."""
    rng = np.random.default_rng(5)
    hid = 64
    nodes, inits = [], []
    for part in (_qdq_act("ys", 6.0 / 255, 120, False),
                 _qdq_weight("wo", rng.standard_normal((hid, hid)).astype(np.float32) * 0.2, 1,
                             bits)):
        nodes += part[0]
        inits += part[1]
    inits += [("bo", rng.standard_normal(hid).astype(np.float32) * 0.1),
              ("smooth", rng.uniform(0.5, 2.0, hid).astype(np.float32))]
    nodes += [
        helper.make_node("Attention", ["q", "k", "v", "m"], ["y"], domain="lamina", num_heads=2,
                         scale=0.25, mask_kind="key_padding"),
        helper.make_node("Mul", ["y", "smooth"], ["ys"]),
        helper.make_node("Linear", ["ys_dq", "wo", "bo", "q"], ["out"], domain="lamina",
                         has_residual=1),
    ]
    return _ir_model("attn_out", nodes, inits,
                     [helper.make_tensor_value_info(n, F, [1, seq, hid]) for n in ("q", "k", "v")]
                     + [helper.make_tensor_value_info("m", TensorProto.INT64, [1, seq])], ["out"])


@pytest.mark.parametrize("target, kernel", [("x86-avx2", "lamina_attention_q_k_v"),
                                            ("x86-avx512-bf16", "lamina_attention_bf16_q_k_v")])
def test_attention_writes_the_out_projections_u8(target, kernel, tmp_path):
    """An attention output that only an INT8 projection reads is quantized by the attention kernel
    itself (no quantize kernel, no float output), with the same codes as ONNX Runtime on the QDQ
    graph up to float rounding and the exponential's 8e-5 (``softmax_exp``: a few codes one step
    apart; bf16 attention: within its error)."""
    import re

    from lamina.backends.reference import run
    from lamina.backends.tvm import build_artifact, load
    from lamina.backends.tvm.kernels import host_supports

    model = _attention_out_proj_model(bits=7 if target == "x86-avx2" else 8)
    dump = tmp_path / "dump"
    art = build_artifact({(1, 32): model}, tmp_path / "a.lamina", target=target, threads=2,
                         schedule="none", dump_dir=dump)
    final = sorted((dump / "tvm").glob("*"))[-1].read_text()
    assert f"{kernel}_1x32x32x2x32_masked_q" in final
    assert not re.findall(r"lamina_quantize_\w+", final)
    isa = "avx512bf16" if "bf16" in target else "avx2"
    if not host_supports(isa):
        return
    rng = np.random.default_rng(6)
    feeds = {n: rng.standard_normal((1, 32, 64)).astype(np.float32) for n in ("q", "k", "v")}
    feeds["m"] = (np.arange(32) < 27).astype(np.int64)[None]
    got, want = load(art).run(feeds)["out"], run(model, feeds)["out"]
    if isa == "avx2":
        err = np.abs(got - want)
        assert np.mean(err < 1e-4) > 0.95 and err.max() < 0.1
    else:
        assert float(np.corrcoef(got.ravel(), want.ravel())[0, 1]) > 0.999


def _residual_layer_norm_model(seq: int, extra_reader: bool, bits: int) -> ir.Model:
    """INT8 Linear(+residual) -> LayerNorm -> static Q / DQ -> INT8 Linear, as in every encoder
    layer, on ``bits``-bit weights; ``extra_reader``: the residual sum is also a graph output."""
    rng = np.random.default_rng(9)
    nodes, inits = [], []
    for part in (_qdq_act("x", 8.0 / 255, 128, False),
                 _qdq_weight("w1", rng.standard_normal((H, H)).astype(np.float32) * 0.2, 1, bits),
                 _qdq_act("h", 8.0 / 255, 120, False),
                 _qdq_weight("w2", rng.standard_normal((H, FF)).astype(np.float32) * 0.1, 1,
                             bits)):
        nodes += part[0]
        inits += part[1]
    inits += [("b1", rng.standard_normal(H).astype(np.float32) * 0.1),
              ("b2", rng.standard_normal(FF).astype(np.float32) * 0.1),
              ("ln_g", rng.uniform(0.5, 1.5, H).astype(np.float32)),
              ("ln_b", rng.standard_normal(H).astype(np.float32) * 0.1)]
    nodes += [
        helper.make_node("Linear", ["x_dq", "w1", "b1", "x"], ["y"], domain="lamina",
                         has_residual=1),
        helper.make_node("LayerNormalization", ["y", "ln_g", "ln_b"], ["h"], axis=-1,
                         epsilon=1e-12),
        helper.make_node("Linear", ["h_dq", "w2", "b2"], ["out"], domain="lamina"),
    ]
    return _ir_model("res_ln", nodes, inits, [helper.make_tensor_value_info("x", F, [1, seq, H])],
                     ["out", "h"] + (["y"] if extra_reader else []))


@pytest.mark.parametrize("target", ["x86-avx512-vnni", "x86-avx2"])
@pytest.mark.parametrize("seq, extra_reader, fused", [(128, False, True), (128, True, False),
                                                      (32, False, False)])
def test_layer_norm_runs_inside_the_residual_dense(target, seq, extra_reader, fused, tmp_path):
    """A LayerNorm that is an INT8 dense's only reader runs inside that kernel (``_ln_q``: it
    also quantizes for the next INT8 kernel), when the dense has a row block for each thread;
    not when the sum has another reader, nor with fewer rows. Same codes as ONNX Runtime on the
    QDQ graph either way."""
    import re

    from lamina.backends.reference import run
    from lamina.backends.tvm import build_artifact, load
    from lamina.backends.tvm.kernels import host_supports

    model = _residual_layer_norm_model(seq, extra_reader, 7 if target == "x86-avx2" else 8)
    dump = tmp_path / "dump"
    art = build_artifact({(1, seq): model}, tmp_path / "a.lamina", target=target, threads=2,
                         schedule="none", dump_dir=dump)
    final = sorted((dump / "tvm").glob("*"))[-1].read_text()
    assert (f"lamina_dense_int8_{seq}x{H}x{H}_res_ln_q" in final) == fused
    assert bool(re.findall(r"lamina_layer_norm_\w+", final)) != fused
    fam = "vnni" if "vnni" in target else "avx2"
    if not host_supports(fam):
        return
    feeds = {"x": np.random.default_rng(2).standard_normal((1, seq, H)).astype(np.float32)}
    got, want = load(art).run(feeds), run(model, feeds)
    for name, w in want.items():
        err = np.abs(got[name] - w)
        assert np.mean(err < 1e-4) > 0.97 and err.max() < 0.1, (name, err.max())
