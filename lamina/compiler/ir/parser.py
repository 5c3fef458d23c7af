"""Parse the text form of :mod:`lamina.compiler.ir.printer` back into a model.

The text holds the whole graph except the payloads of big tensors (printed as dtype, shape and a
content hash) and subgraph attributes (printed as ``<graph>``). Those come from ``weights``: the
model the text was printed from, or the ``.onnx`` file ``--dump-ir`` writes beside every ``.txt``. A
big tensor is looked up by initializer name, then by hash, and its hash is checked, so an edited
text cannot pick up the wrong payload silently::

    text = Path("dump/012_fuse-attention.txt").read_text()
    model = parse_ir(text, weights=load_model("dump/012_fuse-attention.onnx"))
    assert print_ir(model) == text

Everything else (values, types and symbolic dims, attributes, node origins, model-local functions)
round-trips through the text alone, so a dump can be edited by hand and run again
(``lamina opt dump/012_fuse-attention.txt -o out.onnx``).
"""

from __future__ import annotations

import ast
import re
from collections.abc import Mapping

import numpy as np
import onnx
import onnx_ir as ir

from lamina.compiler.errors import FrontendError
from lamina.compiler.ir.core import ORIGIN_KEY
from lamina.compiler.ir.printer import tensor_digest

_DTYPES = {t.name.lower(): t for t in ir.DataType} | {"float32": ir.DataType.FLOAT,
                                                      "float64": ir.DataType.DOUBLE}
_GRAPH_RE = re.compile(r"^graph (?P<name>\S+) \(opsets: (?P<opsets>.*)\) \{$")
_FUNC_RE = re.compile(r"^function (?P<title>\S+)\((?P<params>.*)\) \{$")


class _Weights:
    """Payloads the text leaves out: tensors by initializer name and by hash, subgraph attributes by
    the first output of the node that holds them."""

    def __init__(self, weights: ir.Model | Mapping[str, ir.TensorProtocol] | None) -> None:
        self.by_name: dict[str, ir.TensorProtocol] = {}
        self.by_hash: dict[str, ir.TensorProtocol] = {}
        self.graph_attrs: dict[tuple[str, str], ir.Attr] = {}
        if weights is None:
            return
        if isinstance(weights, ir.Model):
            graphs = [weights.graph, *weights.functions.values()]
            for name, init in weights.graph.initializers.items():
                if init.const_value is not None:
                    self._add(name, init.const_value)
            for g in graphs:
                for node in ir.traversal.RecursiveGraphIterator(g):
                    for attr in node.attributes.values():
                        if attr.is_ref():
                            continue
                        if attr.type == ir.AttributeType.TENSOR:
                            self._add(None, attr.value)
                        elif attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS):
                            if node.outputs:
                                self.graph_attrs[(node.outputs[0].name or "", attr.name)] = attr
        else:
            for name, tensor in weights.items():
                self._add(name, tensor)

    def _add(self, name: str | None, tensor: ir.TensorProtocol) -> None:
        if name is not None:
            self.by_name[name] = tensor
        self.by_hash.setdefault(tensor_digest(tensor), tensor)


class _Parser:
    def __init__(self, text: str, weights: _Weights, source: str) -> None:
        self.lines = text.splitlines()
        self.weights = weights
        self.source = source
        self.lineno = 0

    # -- errors -------------------------------------------------------------------------------
    def error(self, msg: str) -> FrontendError:
        line = self.lines[self.lineno - 1].strip() if 0 < self.lineno <= len(self.lines) else ""
        return FrontendError(f"{self.source}:{self.lineno}: {msg}: {line[:120]!r}")

    # -- lexical pieces -----------------------------------------------------------------------
    @staticmethod
    def _name_end(s: str, i: int) -> int:
        """End of a value name starting at ``i``: names may hold ':' (``onnx::MatMul_7``) but not
        ': ', ', ', ')', a space or a newline."""
        j = i
        while j < len(s):
            c = s[j]
            if c in ") \t" or (c in ",:" and (j + 1 == len(s) or s[j + 1] == " ")):
                break
            j += 1
        return j

    def parse_type(self, s: str) -> tuple[ir.DataType | None, ir.Shape | None]:
        s = s.strip()
        m = re.fullmatch(r"([a-z0-9_?]+)(?:\[(.*)\])?", s)
        if not m:
            raise self.error(f"bad type {s!r}")
        dt = None if m.group(1) == "?" else _DTYPES.get(m.group(1))
        if m.group(1) != "?" and dt is None:
            raise self.error(f"unknown dtype {m.group(1)!r}")
        if m.group(2) is None:
            return dt, None
        dims: list[int | str | None] = []
        for d in (x.strip() for x in m.group(2).split(",")) if m.group(2) else []:
            dims.append(None if d == "?" else int(d) if re.fullmatch(r"-?\d+", d) else d)
        return dt, ir.Shape(dims)

    def parse_tensor(self, s: str, name: str | None = None) -> ir.TensorProtocol:
        """``float32[2,3] = [1.0, ...]`` (inline) or ``float32[384,384] #9f2c41d07a3b`` (from
        weights)."""
        m = re.fullmatch(r"([a-z0-9_]+)\[([0-9,]*)\] (?:= \[(.*)\]|(#\w+))", s.strip())
        if not m:
            raise self.error(f"bad tensor {s!r}")
        dtype = _DTYPES.get(m.group(1))
        if dtype is None:
            raise self.error(f"unknown dtype {m.group(1)!r}")
        shape = [int(d) for d in m.group(2).split(",")] if m.group(2) else []
        if m.group(4) is None:
            body = m.group(3).strip()
            vals = [self._scalar(v) for v in body.split(",")] if body else []
            arr = np.array(vals, dtype=dtype.numpy()).reshape(shape)
            return ir.Tensor(arr, name=name)
        digest = m.group(4)
        found = self.weights.by_name.get(name) if name is not None else None
        if found is None or tensor_digest(found) != digest:
            found = self.weights.by_hash.get(digest)
        if found is None:
            what = f"initializer {name!r}" if name else "a tensor attribute"
            raise self.error(
                f"{what} ({m.group(1)}[{m.group(2)}] {digest}) is not inline: keep the "
                "dump's .onnx beside the text under the same name (or pass weights=)"
            )
        if list(found.shape) != shape or found.dtype != dtype:
            raise self.error(
                f"the weights' tensor for {digest} is {found.dtype}{list(found.shape)}"
            )
        if name is not None and found.name != name:
            found = ir.Tensor(found.numpy(), name=name)
        return found

    @staticmethod
    def _scalar(v: str) -> object:
        v = v.strip()
        if v in ("True", "False"):
            return v == "True"
        try:
            return int(v)
        except ValueError:
            return float(v)

    # -- attributes ---------------------------------------------------------------------------
    def _split_top(self, s: str) -> list[str]:
        """Split ``s`` at top-level ', ' (outside brackets and quotes)."""
        parts, depth, quote, start, i = [], 0, None, 0, 0
        while i < len(s):
            c = s[i]
            if quote:
                if c == "\\":
                    i += 1
                elif c == quote:
                    quote = None
            elif c in "'\"":
                quote = c
            elif c in "[{(":
                depth += 1
            elif c in "]})":
                depth -= 1
            elif c == "," and depth == 0:
                parts.append(s[start:i].strip())
                start = i + 1
            i += 1
        if s[start:].strip():
            parts.append(s[start:].strip())
        return parts

    def parse_attr(self, item: str, schema_types: Mapping[str, int], out0: str) -> ir.Attr:
        name, _, value = item.partition("=")
        name, value = name.strip(), value.strip()
        if not name or not value:
            raise self.error(f"bad attribute {item!r}")
        A = ir.AttributeType
        if value.startswith("@"):
            kind = schema_types.get(name)
            return ir.Attr(name, A(kind) if kind else A.INT, None, ref_attr_name=value[1:])
        if value == "<graph>":
            attr = self.weights.graph_attrs.get((out0, name))
            if attr is None:
                raise self.error(f"subgraph attribute {name!r} is not in the text: keep the dump's "
                                 ".onnx beside the text under the same name (or pass weights=)")
            return attr
        if value[0] in "'\"":
            return ir.AttrString(name, ast.literal_eval(value))
        if re.match(r"[a-z0-9_]+\[[0-9,]*\] (=|#)", value):
            return ir.AttrTensor(name, self.parse_tensor(value))
        if value.startswith("["):
            items = self._split_top(value[1:-1])
            if items and items[0][0] in "'\"":
                return ir.AttrStrings(name, [ast.literal_eval(v) for v in items])
            vals = [self._scalar(v) for v in items]
            kind = schema_types.get(name)
            if kind == A.FLOATS or any(isinstance(v, float) for v in vals):
                return ir.AttrFloat32s(name, [float(v) for v in vals])
            return ir.AttrInt64s(name, [int(v) for v in vals])
        v = self._scalar(value)
        if schema_types.get(name) == A.FLOAT or isinstance(v, float):
            return ir.AttrFloat32(name, float(v))
        return ir.AttrInt64(name, int(v))

    # -- nodes --------------------------------------------------------------------------------
    def parse_node(self, line: str, values: dict[str, ir.Value], opsets: Mapping[str, int]
                   ) -> ir.Node:
        origin = None
        if "  # " in line:
            line, _, origin = line.rpartition("  # ")
        lhs, sep, rhs = line.partition(" = ")
        if not sep:
            raise self.error("expected '%out = Op(...)'")
        outs: list[ir.Value] = []
        for part in self._split_top(lhs):
            if not part.startswith("%"):
                raise self.error(f"bad output {part!r}")
            end = self._name_end(part, 1)
            out = ir.Value(name=part[1:end])
            rest = part[end:].strip()
            if rest.startswith(":"):
                out.dtype, out.shape = self.parse_type(rest[1:])
            outs.append(out)
        open_at = rhs.find("(")
        if open_at < 0:
            raise self.error("expected an argument list")
        op = rhs[:open_at]
        domain, _, op_type = op.rpartition("::") if "::" in op else ("", "", op)
        op_type, _, overload = op_type.partition(":")
        args: list[ir.Value | None] = []
        i = open_at + 1
        while i < len(rhs) and rhs[i] != ")":
            if rhs[i] == "_":
                args.append(None)
                i += 1
            elif rhs[i] == "%":
                end = self._name_end(rhs, i + 1)
                name = rhs[i + 1:end]
                if name not in values:
                    raise self.error(f"%{name} is used before it is defined")
                args.append(values[name])
                i = end
            else:
                raise self.error(f"bad argument at column {i + 1}")
            if rhs.startswith(", ", i):
                i += 2
        if i >= len(rhs):
            raise self.error("unclosed argument list")
        tail = rhs[i + 1:].strip()
        attrs: list[ir.Attr] = []
        if tail:
            if not (tail.startswith("{") and tail.endswith("}")):
                raise self.error(f"unexpected {tail!r} after the arguments")
            types = _schema_attr_types(op_type, domain, opsets.get(domain, 1))
            attrs = [self.parse_attr(item, types, outs[0].name if outs else "")
                     for item in self._split_top(tail[1:-1])]
        node = ir.Node(domain, op_type, args, attrs, outputs=outs, overload=overload)
        if origin:
            node.metadata_props[ORIGIN_KEY] = origin
        for out in outs:
            values[out.name or ""] = out
        return node

    # -- graph and functions ------------------------------------------------------------------
    def next_line(self) -> str | None:
        while self.lineno < len(self.lines):
            self.lineno += 1
            line = self.lines[self.lineno - 1]
            if line.strip():
                return line
        return None

    def parse_graph(self) -> tuple[ir.Graph, dict[str, int]]:
        header = self.next_line()
        m = _GRAPH_RE.match(header.strip()) if header is not None else None
        if m is None:
            raise self.error("expected 'graph NAME (opsets: ...) {'")
        opsets: dict[str, int] = {}
        for item in self._split_top(m.group("opsets")):
            dom, _, ver = item.partition("=")
            opsets["" if dom == '""' else dom] = int(ver)
        values: dict[str, ir.Value] = {}
        inputs, inits, nodes, outputs = [], [], [], []
        while True:
            line = self.next_line()
            if line is None:
                raise self.error("unterminated graph (no closing '}')")
            s = line.strip()
            if s == "}":
                break
            if s.startswith("input  %") or s.startswith("init   %") or s.startswith("output %"):
                kind, body = s[:6].strip(), s[7:].strip()
                end = self._name_end(body, 1)
                name, rest = body[1:end], body[end:].strip()
                if not rest.startswith(":"):
                    raise self.error(f"expected ': type' after %{name}")
                rest = rest[1:].strip()
                if kind == "output":
                    if name not in values:
                        raise self.error(f"output %{name} is not defined")
                    v = values[name]
                    v.dtype, v.shape = self.parse_type(rest)
                    outputs.append(v)
                    continue
                v = ir.Value(name=name)
                if kind == "init":
                    if rest.endswith("<no data>"):
                        raise self.error(f"initializer %{name} has no data")
                    v.const_value = self.parse_tensor(rest, name)
                    v.dtype, v.shape = v.const_value.dtype, ir.Shape(list(v.const_value.shape))
                    inits.append(v)
                else:
                    v.dtype, v.shape = self.parse_type(rest)
                    inputs.append(v)
                values[name] = v
            else:
                nodes.append(self.parse_node(s, values, opsets))
        graph = ir.Graph(inputs, outputs, nodes=nodes, initializers=inits, name=m.group("name"),
                         opset_imports=opsets)
        return graph, opsets

    def parse_function(self, header: str, opsets: dict[str, int]) -> ir.Function:
        m = _FUNC_RE.match(header.strip())
        if m is None:
            raise self.error("expected 'function DOMAIN::NAME(%a, ...) {'")
        title = m.group("title")
        domain, _, name = title.rpartition("::")
        name, _, overload = name.partition(":")
        values: dict[str, ir.Value] = {}
        params = []
        for p in self._split_top(m.group("params")):
            v = ir.Value(name=p.lstrip("%"))
            values[v.name or ""] = v
            params.append(v)
        nodes, outputs = [], []
        while True:
            line = self.next_line()
            if line is None:
                raise self.error(f"unterminated function {title}")
            s = line.strip()
            if s == "}":
                break
            if s.startswith("return "):
                for p in self._split_top(s[len("return "):]):
                    if p.lstrip("%") not in values:
                        raise self.error(f"returned {p} is not defined")
                    outputs.append(values[p.lstrip("%")])
            else:
                nodes.append(self.parse_node(s, values, opsets))
        refs = sorted({a.ref_attr_name: a for n in nodes for a in n.attributes.values()
                       if a.is_ref()}.items())
        attrs = [ir.Attr(ref, a.type, None) for ref, a in refs]
        graph = ir.Graph(params, outputs, nodes=nodes, opset_imports=dict(opsets))
        return ir.Function(domain, name, overload, graph=graph, attributes=attrs)

    def parse(self) -> ir.Model:
        graph, opsets = self.parse_graph()
        functions = []
        while (line := self.next_line()) is not None:
            functions.append(self.parse_function(line, opsets))
        return ir.Model(graph, ir_version=10, functions=functions)


def _schema_attr_types(op_type: str, domain: str, version: int) -> dict[str, int]:
    """Attribute types from the ONNX schema (tells ``[]`` and ``1`` apart from floats)."""
    try:
        schema = onnx.defs.get_schema(op_type, version, "" if domain == "ai.onnx" else domain)
    except Exception:  # noqa: BLE001 - custom domains have no schema
        return {}
    return {name: int(a.type) for name, a in schema.attributes.items()}


def parse_ir(text: str, *, weights: ir.Model | Mapping[str, ir.TensorProtocol] | None = None,
             source: str = "<text>") -> ir.Model:
    """The model the text of :func:`lamina.compiler.ir.printer.print_ir` describes (see the module
    doc).

    Errors are :class:`FrontendError` naming ``source:line`` and the offending text.
    """
    return _Parser(text, _Weights(weights), source).parse()
