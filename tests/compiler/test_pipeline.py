"""Pass registry, textual pipelines, pass manager, instruments and reproducers."""

from __future__ import annotations

import json
from dataclasses import dataclass

import pytest

from lamina.backends import reference
from lamina.compiler.errors import PassError, PipelineError, VerifyError
from lamina.compiler.ir import count_nodes, print_ir
from lamina.compiler.pipeline import (
    Pass,
    PassContext,
    PassManager,
    PassResult,
    format_pipeline,
    option,
    parse_pipeline,
    register,
)
from lamina.compiler.pipeline.instruments import DumpIR, PrintIR, Recorder, VerifyEach
from lamina.compiler.pipeline.registry import PassGroup, flatten, unregister
from tests.compiler._graphs import reshape_graph


@dataclass(frozen=True)
class _Opts:
    factor: float = option(2.0, "scale")
    name_prefix: str = option("t", "prefix")
    enabled: bool = option(True, "on/off")


@pytest.fixture
def scaling_pass():
    @register("test-scale")
    class ScalePass(Pass):
        """Multiply the output by a factor (a deliberately lossy pass)."""

        Options = _Opts

        def run(self, model, ctx):
            import onnx_ir as ir

            graph = model.graph
            out = graph.outputs[0]
            producer = out.producer()
            c = ir.Value(name="test_factor", const_value=ir.tensor(
                __import__("numpy").array(self.options.factor, dtype="float32")))
            graph.register_initializer(c)
            node = ir.Node("", "Mul", [producer.outputs[0], c], name="test_mul")
            out_name = out.name
            graph.append(node)
            new = node.outputs[0]
            out.name = "pre_scale"
            new.name = out_name
            graph.outputs[0] = new
            return PassResult(model, changed=True)

    yield ScalePass
    unregister("test-scale")


def test_parse_options_and_named_pipelines(scaling_pass):
    passes = parse_pipeline("O0,test-scale{factor=3.5,enabled=false,name-prefix=q}")
    assert passes[-1].options == _Opts(3.5, "q", False)
    assert format_pipeline(passes).endswith("test-scale{factor=3.5,name-prefix=q,enabled=false}")
    assert len(flatten(parse_pipeline("O0"))) > 5


@pytest.mark.parametrize("text, message", [
    ("fold-constant", "did you mean fold-constants"),
    ("test-scale{factr=2}", "did you mean 'factor'"),
    ("test-scale{factor=abc}", "expects float"),
    ("test-scale{factor=2", "missing '}'"),
    ("", "empty pipeline"),
    ("O0{x=1}", "takes no options"),
])
def test_pipeline_errors(scaling_pass, text, message):
    with pytest.raises(PipelineError, match=message):
        parse_pipeline(text)


def test_register_twice_is_an_error(scaling_pass):
    with pytest.raises(PipelineError, match="registered twice"):
        register("test-scale")(type("Other", (Pass,), {}))


def test_print_ir_is_deterministic():
    texts = []
    for _ in range(2):
        import io

        stream = io.StringIO()
        model = reshape_graph()
        PassManager(parse_pipeline("O0"), [PrintIR(after_all=True, stream=stream)]).run(model)
        texts.append(stream.getvalue())
    assert texts[0] == texts[1]
    assert "IR Dump After fold-constants" in texts[0]


def test_dump_ir_files(tmp_path):
    rec = Recorder()
    model = PassManager(parse_pipeline("O0"), [rec, DumpIR(tmp_path, rec)]).run(reshape_graph())
    names = sorted(p.name for p in tmp_path.iterdir())
    assert "000_input.txt" in names and "000_input.onnx" in names
    assert "pipeline.txt" in names and "stats.json" in names
    assert "001_lift-constants.txt" in names and "001_lift-constants.diff" in names
    stats = json.loads((tmp_path / "stats.json").read_text())
    assert [p["name"] for p in stats["passes"]][:2] == ["lift-constants", "cleanup"]
    assert count_nodes(model) < count_nodes(reshape_graph())


def test_verify_each_catches_a_numeric_change(scaling_pass):
    rec = Recorder()
    with pytest.raises(VerifyError, match="test-scale.*beyond its tolerance"):
        PassManager(
            parse_pipeline("test-scale"), [rec, VerifyEach(rec, reference.run)], crash_dir=None
        ).run(reshape_graph())


def test_verify_each_checks_what_changed_not_what_the_pass_says():
    """A pass that rewrites the graph but reports ``changed=False`` is still verified."""

    @register("test-quiet-scale")
    class QuietScalePass(Pass):
        """Scale the output and claim nothing changed."""

        def run(self, model, ctx):
            import numpy as np
            import onnx_ir as ir

            out = model.graph.outputs[0]
            c = ir.Value(name="quiet_factor", const_value=ir.tensor(np.array(3.0, dtype="float32")))
            model.graph.register_initializer(c)
            node = ir.Node("", "Mul", [out, c], name="quiet_mul")
            model.graph.append(node)
            new = node.outputs[0]
            new.name, out.name = out.name, "pre_quiet"
            model.graph.outputs[0] = new
            return PassResult(model, changed=False)

    try:
        rec = Recorder()
        with pytest.raises(VerifyError, match="test-quiet-scale.*beyond its tolerance"):
            PassManager(parse_pipeline("test-quiet-scale"), [rec, VerifyEach(rec, reference.run)],
                        crash_dir=None).run(reshape_graph())
    finally:
        unregister("test-quiet-scale")


def test_verify_each_accepts_exact_passes():
    rec = Recorder()
    PassManager(parse_pipeline("O0"), [rec, VerifyEach(rec, reference.run)]).run(reshape_graph())
    assert all((r.max_abs_error or 0.0) == 0.0 for r in rec.records)


def test_failing_pass_writes_reproducer(tmp_path):
    @register("test-boom")
    class BoomPass(Pass):
        """Always fails."""

        def run(self, model, ctx):
            raise RuntimeError("kaboom")

    try:
        with pytest.raises(PassError) as info:
            PassManager(parse_pipeline("lift-constants,test-boom"), crash_dir=tmp_path).run(
                reshape_graph()
            )
        msg = str(info.value)
        assert "pass 'test-boom' failed after [lift-constants]: kaboom" in msg
        assert "lamina --debug opt" in msg and "--pipeline test-boom" in msg
        assert (tmp_path / "input.onnx").exists() and (tmp_path / "reproducer.sh").exists()
        assert (
            "Constant" not in (tmp_path / "input.txt").read_text()
        )  # IR as the failing pass got it
    finally:
        unregister("test-boom")


def test_explanations_are_collected():
    ctx = PassContext(debug_match=frozenset({"x"}))
    ctx.current_pass = "x"
    assert ctx.wants_explanations("x") and not ctx.wants_explanations("y")
    ctx.explain("node n", "bias is not constant")
    assert ctx.explanations == ["[x] node n: bias is not constant"]


def test_printer_shows_origin_and_hashes():
    from lamina.compiler.ir import set_origin

    model = reshape_graph()
    node = next(iter(model.graph))
    set_origin(node, "my-pass:rule")
    text = print_ir(model)
    assert "# my-pass:rule" in text
    assert "input  %x: float32[batch,seq,8]" in text or "input  %x: float[batch,seq,8]" in text


def test_entry_point_plugins_register(tmp_path, monkeypatch):
    """A package exposing ``lamina.passes`` entry points gets its passes registered."""
    import sys

    from lamina.compiler.pipeline.plugins import load_entry_points
    from lamina.compiler.pipeline.registry import registered_passes

    (tmp_path / "lamina_ep_plugin.py").write_text(
        "from lamina.compiler.pipeline import Pass, PassResult, register\n"
        "@register('ep-noop')\n"
        "class EpNoopPass(Pass):\n"
        "    '''Does nothing (entry point test).'''\n"
        "    def run(self, model, ctx):\n"
        "        return PassResult(model, changed=False)\n")
    dist = tmp_path / "lamina_ep_plugin-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: lamina-ep-plugin\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text("[lamina.passes]\nnoop = lamina_ep_plugin\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    try:
        load_entry_points()
        assert "ep-noop" in registered_passes()
        assert parse_pipeline("ep-noop")[0].name == "ep-noop"
    finally:
        unregister("ep-noop")
        sys.modules.pop("lamina_ep_plugin", None)


def test_o0_lists_each_pass_once_and_runs_to_a_fixed_point():
    names = [p.name for p in flatten(parse_pipeline("O0"))]
    assert len(names) == len(set(names)), names
    rec = Recorder()
    model = PassManager(parse_pipeline("O0"), [rec]).run(reshape_graph())
    runs = [r.name for r in rec.records]
    members = [p.name for p in flatten(parse_pipeline("canonicalize"))]
    # The group stops once every member has run since the last change: the last len(members)
    # runs changed nothing, and infer-shapes ran on the final graph.
    assert not any(r.changed for r in rec.records[-len(members):])
    assert "infer-shapes" in runs[-len(members):]
    assert count_nodes(model) < count_nodes(reshape_graph())


def test_a_pass_group_called_directly_runs_the_same_loop():
    group = parse_pipeline("canonicalize")[0]
    assert isinstance(group, PassGroup)
    direct = group.run(reshape_graph(), PassContext()).model
    managed = PassManager([group]).run(reshape_graph())
    assert print_ir(direct) == print_ir(managed)
