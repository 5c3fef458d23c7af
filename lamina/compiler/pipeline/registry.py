"""Pass base class, typed options, the ``@register`` registry and named pipelines."""

from __future__ import annotations

import abc
import dataclasses
import difflib
import typing
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

import onnx_ir as ir

from lamina.compiler.errors import PipelineError


def option(default: Any, doc: str) -> Any:
    """A pass option: a dataclass field with a default and a one-line doc."""
    return field(default=default, metadata={"doc": doc})


@dataclass(frozen=True)
class NoOptions:
    """Passes without options use this."""


@dataclass
class PassResult:
    model: ir.Model
    changed: bool
    stats: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassContext:
    """What a pass may read besides the model: user settings and a channel for match
    explanations."""

    debug_match: frozenset[str] = frozenset()
    dims: dict[str, int] = field(default_factory=dict)
    explanations: list[str] = field(default_factory=list)
    current_pass: str = ""

    def explain(self, where: str, reason: str) -> None:
        """Record why a pattern did not match at ``where`` (shown with ``--debug-match``)."""
        self.explanations.append(f"[{self.current_pass}] {where}: {reason}")

    def wants_explanations(self, pass_name: str) -> bool:
        return pass_name in self.debug_match or "all" in self.debug_match


@dataclass(frozen=True)
class Property:
    """A property of a model that passes establish (``ensures``) and rely on (``requires``).

    ``holds`` checks a model for it (None: only running ``established_by`` establishes it).
    """

    name: str
    doc: str
    established_by: str
    holds: Callable[[ir.Model], bool] | None = None


_PROPERTIES: dict[str, Property] = {}


def register_property(name: str, doc: str, established_by: str,
                      holds: Callable[[ir.Model], bool] | None = None) -> Property:
    """Declare a property passes can name in ``requires``/``ensures`` (registering it again with the
    same pass that establishes it is a no-op, so modules may be re-imported)."""
    known = _PROPERTIES.get(name)
    if known is not None and known.established_by != established_by:
        raise PipelineError(f"property {name!r} is registered twice ({known.established_by} and "
                            f"{established_by})")
    prop = Property(name, doc, established_by, holds)
    _PROPERTIES[name] = prop
    return prop


class Pass(abc.ABC):
    """Base class of all passes. Subclasses set ``Options`` and implement :meth:`run`.

    ``atol``/``rtol`` bound the numeric change ``--verify-each`` accepts from the pass (0 = exact).

    Contracts (optional, as in onnx-ir's pass infrastructure): ``requires`` names the properties
    (:func:`register_property`) the pass needs; ``ensures`` those it establishes. The pass manager
    checks a pipeline before running it: a required property must be ensured by an earlier pass
    or hold on the input model, else one line says which pass to run first.
    """

    name: ClassVar[str] = ""
    Options: ClassVar[type] = NoOptions
    atol: ClassVar[float] = 1e-6
    rtol: ClassVar[float] = 0.0
    requires: ClassVar[frozenset[str]] = frozenset()
    ensures: ClassVar[frozenset[str]] = frozenset()

    def __init__(self, options: Any = None) -> None:
        self.options = options if options is not None else self.Options()

    @abc.abstractmethod
    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        """Rewrite ``model`` (in place or not) and say whether anything changed."""

    def __call__(self, model: ir.Model, ctx: PassContext | None = None) -> PassResult:
        return self.run(model, ctx or PassContext())

    @classmethod
    def doc_line(cls) -> str:
        doc = (cls.__doc__ or "").strip()
        return doc.splitlines()[0] if doc else ""

    def spec(self) -> str:
        """The textual form of this pass with its non-default options, e.g.
        ``fold-constants{max-size=1024}``."""
        parts = []
        default = self.Options()
        for f in dataclasses.fields(self.options):
            value = getattr(self.options, f.name)
            if value != getattr(default, f.name):
                parts.append(f"{f.name.replace('_', '-')}={format_option(value)}")
        return self.name + ("{" + ",".join(parts) + "}" if parts else "")


class PassGroup(Pass):
    """Member passes (``members``, a textual pipeline) run in order, cycled until every member has
    run once since the last change, at most ``max_rounds`` rounds: the fixed point onnx-ir's
    ``PassManager(steps=N, early_stop=True)`` gives, so a pipeline lists each pass once. The pass
    manager runs the members one by one under its instruments (dumps, timing, ``--verify-each`` and
    ``--print-ir-*`` see every member run); calling the group directly runs the same loop."""

    members: ClassVar[str] = ""
    max_rounds: ClassVar[int] = 4

    def member_passes(self) -> list[Pass]:
        if not hasattr(self, "_members"):
            from lamina.compiler.pipeline.textual import parse_pipeline

            self._members = parse_pipeline(self.members)
        return self._members

    def run(self, model: ir.Model, ctx: PassContext) -> PassResult:
        members = self.member_passes()
        changed_any, quiet = False, 0
        for _ in range(self.max_rounds):
            for p in members:
                result = p.run(model, ctx)
                model = result.model
                changed_any |= result.changed
                quiet = 0 if result.changed else quiet + 1
                if quiet >= len(members):
                    return PassResult(model, changed=changed_any)
        return PassResult(model, changed=changed_any)


def flatten(passes: list[Pass]) -> list[Pass]:
    """``passes`` with every group replaced by one round of its members."""
    out: list[Pass] = []
    for p in passes:
        out.extend(flatten(p.member_passes()) if isinstance(p, PassGroup) else [p])
    return out


@dataclass(frozen=True)
class OptionInfo:
    name: str
    type: str
    default: Any
    doc: str


def option_infos(cls: type[Pass]) -> list[OptionInfo]:
    hints = typing.get_type_hints(cls.Options)
    infos = []
    for f in dataclasses.fields(cls.Options):
        tp = hints.get(f.name, str)
        infos.append(
            OptionInfo(f.name.replace("_", "-"), getattr(tp, "__name__", str(tp)), f.default,
                       f.metadata.get("doc", ""))
        )
    return infos


def format_option(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


def parse_option(pass_name: str, key: str, text: str, tp: Any) -> Any:
    try:
        if tp is bool:
            low = text.lower()
            if low in ("1", "true", "yes", "on"):
                return True
            if low in ("0", "false", "no", "off"):
                return False
            raise ValueError(text)
        if tp in (int, float, str):
            return tp(text)
    except ValueError:
        raise PipelineError(
            f"pass {pass_name!r}: option {key!r} expects {tp.__name__}, got {text!r}"
        ) from None
    return text


_PASSES: dict[str, type[Pass]] = {}
_PIPELINES: dict[str, tuple[str, str]] = {}


def register(name: str) -> Callable[[type[Pass]], type[Pass]]:
    """Class decorator: register a pass under its kebab-case ``name``."""

    def deco(cls: type[Pass]) -> type[Pass]:
        if name in _PASSES or name in _PIPELINES:
            raise PipelineError(
                f"pass name {name!r} is registered twice ({_PASSES.get(name, cls).__module__} and "
                f"{cls.__module__}); pick another name"
            )
        cls.name = name
        _PASSES[name] = cls
        return cls

    return deco


def register_pipeline(name: str, text: str, doc: str = "") -> None:
    """Register a named pipeline (``O0``, ``O1``...) that expands to ``text``."""
    if name in _PASSES or name in _PIPELINES:
        raise PipelineError(f"pipeline name {name!r} is registered twice")
    _PIPELINES[name] = (text, doc)


def unregister(name: str) -> None:
    """Remove a pass or pipeline (tests and interactive sessions)."""
    _PASSES.pop(name, None)
    _PIPELINES.pop(name, None)


def registered_passes() -> dict[str, type[Pass]]:
    """The passes registered so far (whoever assembles a pipeline registers the ones it offers: the
    driver imports :mod:`lamina.passes` and the ``lamina.passes`` entry points)."""
    return dict(sorted(_PASSES.items()))


def registered_pipelines() -> dict[str, tuple[str, str]]:
    return dict(_PIPELINES)


def check_contracts(passes: list[Pass], model: ir.Model) -> None:
    """Raise :class:`PipelineError` naming the first pass whose ``requires`` nothing before it in
    ``passes`` ensures and ``model`` does not satisfy."""
    passes = flatten(passes)
    established: set[str] = set()
    holds: dict[str, bool] = {}
    for index, p in enumerate(passes):
        for req in sorted(p.requires):
            if req in established:
                continue
            prop = _PROPERTIES.get(req)
            if prop is None:
                raise PipelineError(f"pass {p.name!r} requires {req!r}, which no registered pass "
                                    "establishes (a property must be declared with "
                                    "register_property)")
            if req not in holds:
                holds[req] = prop.holds is not None and prop.holds(model)
            if holds[req]:
                continue
            example = ",".join([prop.established_by] + [q.spec() for q in passes[index:index + 1]])
            where = f"after [{', '.join(q.name for q in passes[:index])}]" if index else "first"
            raise PipelineError(
                f"pass {p.name!r} (run {where}) requires {req} ({prop.doc}), which no earlier "
                f"pass establishes and the input model lacks; run {prop.established_by} before it, "
                f"e.g. --pipeline {example}")
        established |= p.ensures


def get_pass(name: str) -> type[Pass]:
    if name in _PASSES:
        return _PASSES[name]
    candidates = list(_PASSES) + list(_PIPELINES)
    close = difflib.get_close_matches(name, candidates, n=3)
    if close:
        hint = f"; did you mean {', '.join(close)}?"
    elif not _PASSES:
        hint = "; no passes are registered: import lamina.passes (the driver does) or --load-passes"
    else:
        hint = "; `lamina passes` lists them"
    raise PipelineError(f"unknown pass {name!r}{hint}")
