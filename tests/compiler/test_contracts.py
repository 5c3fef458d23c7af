"""Pass contracts: ``requires`` / ``ensures`` checked before a pipeline runs, one clear line when a
pass would otherwise silently match nothing."""

from __future__ import annotations

import pytest

from lamina.compiler.driver import api
from lamina.compiler.driver.cli import main
from lamina.compiler.errors import PipelineError
from lamina.compiler.pipeline import Pass, PassResult, register
from lamina.compiler.pipeline.registry import unregister
from tests.compiler._graphs import reshape_graph
from tests.passes.fusion._graphs import HID, const, dense, f32, h, model, rand


def _linear_then_erf_gelu():
    """``y = gelu_erf(x @ W + b)`` with the GELU still as Div / Erf / Add / Mul / Mul."""
    nodes = [h.make_node("MatMul", ["x", "W"], ["xw"]), h.make_node("Add", ["xw", "b"], ["z"]),
             h.make_node("Div", ["z", "s2"], ["u"]), h.make_node("Erf", ["u"], ["e"]),
             h.make_node("Add", ["e", "one"], ["a"]), h.make_node("Mul", ["z", "a"], ["m"]),
             h.make_node("Mul", ["m", "half"], ["y"])]
    inits = [rand("W", HID, HID), rand("b", HID), const("s2", 1.4142135), const("one", 1.0),
             const("half", 0.5)]
    return model(nodes, [f32("x", ["batch", "seq", HID])], [f32("y", None)], inits)


def test_simplify_reshape_without_shapes_names_infer_shapes():
    with pytest.raises(PipelineError) as info:
        api.optimize(reshape_graph(), "simplify-reshape")
    msg = str(info.value)
    assert "'simplify-reshape'" in msg and "requires shapes" in msg
    assert "run infer-shapes before it" in msg and "\n" not in msg
    api.optimize(reshape_graph(), "infer-shapes,simplify-reshape")  # established by the pipeline


def test_bias_residual_before_gelu_names_fuse_gelu():
    m = _linear_then_erf_gelu()
    with pytest.raises(PipelineError, match="bias-residual.*requires gelu-fused.*run fuse-gelu"):
        api.optimize(m.clone(), "fuse-bias-residual,fuse-gelu")
    fused, _ = api.optimize(m, "fuse-gelu,fuse-bias-residual")
    linear = [n for n in fused.graph if n.op_type == "Linear"]
    assert len(linear) == 1 and linear[0].attributes["activation"].value == "gelu"


def test_a_property_that_holds_on_the_input_needs_no_pass():
    """Without GELU arithmetic in the model, fuse-bias-residual runs on its own."""
    result, _ = api.optimize(dense(gelu_act=False), "fuse-bias-residual")
    assert any(n.op_type == "Linear" for n in result.graph)


def test_cli_prints_one_line(tmp_path, capsys):
    path = api.save(_linear_then_erf_gelu(), tmp_path / "m.onnx")
    code = main(["opt", str(path), "-o", str(tmp_path / "o.onnx"), "--pipeline",
                 "fuse-bias-residual"])
    err = [line for line in capsys.readouterr().err.splitlines() if line.strip()]
    assert code != 0 and len(err) == 1 and "run fuse-gelu before it" in err[0]


def test_passes_without_contracts_still_register_and_run():
    @register("test-no-contract")
    class NoContractPass(Pass):
        """A pass written before contracts existed."""

        def run(self, model, ctx):
            return PassResult(model, changed=False)

    try:
        assert NoContractPass.requires == frozenset() and NoContractPass.ensures == frozenset()
        api.optimize(reshape_graph(), "test-no-contract")
    finally:
        unregister("test-no-contract")


def test_unknown_required_property_is_named():
    @register("test-needs-magic")
    class NeedsMagicPass(Pass):
        """Requires a property nobody declares."""

        requires = frozenset({"magic"})

        def run(self, model, ctx):
            return PassResult(model, changed=False)

    try:
        with pytest.raises(PipelineError, match="requires 'magic'.*register_property"):
            api.optimize(reshape_graph(), "test-needs-magic")
    finally:
        unregister("test-needs-magic")
