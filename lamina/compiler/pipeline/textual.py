"""Textual pipelines: ``canonicalize,fuse-attention,encode-sparsity{block=4x1,min-sparsity=0.7}``.

Grammar: ``item (',' item)*`` with ``item = name ['{' key=value (',' key=value)* '}']``. A name is a
registered pass or a named pipeline (``O0``, ``O1``), which expands in place.
"""

from __future__ import annotations

import dataclasses
import difflib
import typing

from lamina.compiler.errors import PipelineError
from lamina.compiler.pipeline.registry import (
    Pass,
    get_pass,
    parse_option,
    registered_passes,
    registered_pipelines,
)


def split_items(text: str) -> list[str]:
    items, depth, cur = [], 0, []
    for ch in text:
        if ch == "{":
            depth += 1
        elif ch == "}":
            depth -= 1
            if depth < 0:
                raise PipelineError(f"pipeline {text!r}: unbalanced '}}'")
        if ch == "," and depth == 0:
            items.append("".join(cur).strip())
            cur = []
        else:
            cur.append(ch)
    if depth != 0:
        raise PipelineError(f"pipeline {text!r}: missing '}}'")
    items.append("".join(cur).strip())
    return [i for i in items if i]


def _build(name: str, body: str | None) -> Pass:
    cls = get_pass(name)
    kwargs = {}
    if body:
        hints = typing.get_type_hints(cls.Options)
        fields = {f.name: f for f in dataclasses.fields(cls.Options)}
        for pair in body.split(","):
            pair = pair.strip()
            if not pair:
                continue
            if "=" not in pair:
                raise PipelineError(f"pass {name!r}: option {pair!r} must be key=value")
            key, value = (s.strip() for s in pair.split("=", 1))
            attr = key.replace("-", "_")
            if attr not in fields:
                known = [f.replace("_", "-") for f in fields]
                close = difflib.get_close_matches(key, known, n=1)
                hint = f"; did you mean {close[0]!r}?" if close else (
                    f"; options: {', '.join(known)}" if known else "; it takes no options")
                raise PipelineError(f"pass {name!r} has no option {key!r}{hint}")
            kwargs[attr] = parse_option(name, key, value, hints.get(attr, str))
    try:
        options = cls.Options(**kwargs)
    except (TypeError, ValueError) as exc:
        raise PipelineError(f"pass {name!r}: bad options: {exc}") from exc
    return cls(options)


def parse_pipeline(text: str, _seen: tuple[str, ...] = ()) -> list[Pass]:
    """Parse ``text`` into pass instances, expanding named pipelines."""
    if not text or not text.strip():
        raise PipelineError("empty pipeline; give pass names separated by commas, or O0")
    pipelines = registered_pipelines()
    registered_passes()
    result: list[Pass] = []
    for item in split_items(text):
        if "{" in item:
            name, rest = item.split("{", 1)
            if not rest.endswith("}"):
                raise PipelineError(f"pipeline item {item!r}: text after '}}'")
            body: str | None = rest[:-1]
        else:
            name, body = item, None
        name = name.strip()
        if name in pipelines:
            if body:
                raise PipelineError(f"named pipeline {name!r} takes no options")
            if name in _seen:
                raise PipelineError(f"named pipeline {name!r} includes itself")
            result.extend(parse_pipeline(pipelines[name][0], _seen + (name,)))
        else:
            result.append(_build(name, body))
    return result


def format_pipeline(passes: list[Pass]) -> str:
    return ",".join(p.spec() for p in passes)
