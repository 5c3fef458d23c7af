"""Compilation targets for the host CPU: ISA presets, ``auto`` detection, raw TVM target JSON.

An *ISA level* names what the generated code may use, and so which hosts can run it:

===================  =========================  =================================================
level                LLVM mcpu (+mattr)         required features
===================  =========================  =================================================
``x86-64``           ``x86-64``                 none beyond x86-64 (SSE2)
``x86-avx2``         ``x86-64-v3``              avx2, fma
``x86-avx512``       ``x86-64-v4``              avx2, fma, avx512f, avx512bw, avx512vl, avx512dq
``x86-avx512-vnni``  ``x86-64-v4`` +avx512vnni  the above + avx512vnni
``x86-avx512-bf16``  ``x86-64-v4`` +avx512vnni  the above + avx512bf16
                     +avx512bf16
``x86-avx512-amx``   ``x86-64-v4`` +amx-...     the above + amx-tile, amx-int8, amx-bf16
===================  =========================  =================================================

This module is the one model of CPU features; the kernels see it through ``kernels/isa.py``.
A level's extra features (``mattr``) are what the target *allows*; the artifact *requires* only the
ones its kernels use (:meth:`TargetSpec.narrowed`): an fp32 model built with ``auto`` on a VNNI
host uses no VNNI instruction and loads on any AVX-512 host, an INT8-VNNI one refuses a host without
VNNI.

``auto`` picks the highest level the host supports (features from ``/proc/cpuinfo``, which
agree with LLVM's), except that ``x86-avx512-bf16`` is picked only for ``--precision bf16``
(:func:`resolve_target`'s ``precision``): nothing else uses its instructions, and an fp32 build
keeps the level it always had. It uses the portable ``x86-64-vN`` CPU names, never the host's own
CPU model, so an artifact built on a Zen4 runs on any AVX-512 VNNI machine; ``host`` uses LLVM's
name for this CPU (``znver4``...) when the last few percent matter more than portability. Never
``mcpu=native``: LLVM 22 rejects it with this wheel's triple and silently emits generic code.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import tvm
from tvm.target import codegen

from ._errors import BackendError

# Canonical (LLVM) feature names Lamina cares about -> /proc/cpuinfo flag.
FEATURES: dict[str, str] = {
    "avx2": "avx2",
    "fma": "fma",
    "avx512f": "avx512f",
    "avx512bw": "avx512bw",
    "avx512vl": "avx512vl",
    "avx512dq": "avx512dq",
    "avx512vnni": "avx512_vnni",
    "avx512bf16": "avx512_bf16",
    "amx-tile": "amx_tile",
    "amx-int8": "amx_int8",
    "amx-bf16": "amx_bf16",
}

_AVX2 = ("avx2", "fma")
_AVX512 = (*_AVX2, "avx512f", "avx512bw", "avx512vl", "avx512dq")


@dataclass(frozen=True)
class IsaLevel:
    name: str
    mcpu: str
    mattr: tuple[str, ...]
    features: tuple[str, ...]


# Ordered lowest to highest.
ISA_LEVELS: dict[str, IsaLevel] = {
    lvl.name: lvl
    for lvl in (
        IsaLevel("x86-64", "x86-64", (), ()),
        IsaLevel("x86-avx2", "x86-64-v3", (), _AVX2),
        IsaLevel("x86-avx512", "x86-64-v4", (), _AVX512),
        IsaLevel("x86-avx512-vnni", "x86-64-v4", ("+avx512vnni",), (*_AVX512, "avx512vnni")),
        IsaLevel("x86-avx512-bf16", "x86-64-v4", ("+avx512vnni", "+avx512bf16"),
                 (*_AVX512, "avx512vnni", "avx512bf16")),
        IsaLevel("x86-avx512-amx", "x86-64-v4",
                 ("+avx512vnni", "+avx512bf16", "+amx-tile", "+amx-int8", "+amx-bf16"),
                 (*_AVX512, "avx512vnni", "avx512bf16", "amx-tile", "amx-int8", "amx-bf16")),
    )
}
PRESETS: tuple[str, ...] = ("auto", "host", *ISA_LEVELS)
# Levels ``auto`` picks only for the precisions that use them: the BF16 level for bf16 artifacts
# and for INT8 ones (their attention runs the BF16 kernel, ``kernels/attention_bf16.py``); an exact
# fp32 artifact keeps the VNNI level and the tuning records shipped for it.
_AUTO_ONLY_FOR: dict[str, tuple[str, ...]] = {"x86-avx512-bf16": ("bf16", "int8")}
PRECISIONS: tuple[str, ...] = ("fp32", "bf16")


@dataclass(frozen=True)
class TargetSpec:
    """A resolved target: what to build with, and what a host needs to run the result."""

    mcpu: str
    mattr: tuple[str, ...] = ()
    num_cores: int = 1
    isa_level: str = "x86-64"
    required_features: tuple[str, ...] = ()
    requested: str = "auto"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def tvm_target(self) -> tvm.target.Target:
        cfg: dict[str, Any] = {"kind": "llvm", "mcpu": self.mcpu, "num-cores": self.num_cores,
                               **self.extra}
        if self.mattr:
            cfg["mattr"] = list(self.mattr)
        return tvm.target.Target(cfg)

    def narrowed(self, used: set[str] | frozenset[str]) -> TargetSpec:
        """This target with only the extra (``mattr``) features the code ``used`` enabled and
        required. A portable ``x86-64-vN`` CPU's own features stay; a CPU-model target (``host``)
        enables its CPU's features anyway and is returned unchanged."""
        if self.mcpu not in PORTABLE_CPUS:
            return self
        extra = {a.lstrip("+") for a in self.mattr if a.startswith("+")}
        mattr = tuple(a for a in self.mattr if a.lstrip("+-") not in extra or a.lstrip("+") in used)
        required = tuple(f for f in self.required_features if f not in extra or f in used)
        return replace(self, mattr=mattr, required_features=required,
                       isa_level=level_name(required))

    def to_manifest(self) -> dict[str, Any]:
        return {
            "kind": "llvm",
            "requested": self.requested,
            "mcpu": self.mcpu,
            "mattr": list(self.mattr),
            "num_cores": self.num_cores,
            "isa_level": self.isa_level,
            "required_features": list(self.required_features),
            "tvm_target": str(self.tvm_target),
            "built_on_cpu": host_cpu(),
        }


@cache
def host_cpu() -> str:
    """LLVM's name for this CPU (``znver3``, ``znver4``, ``skylake-avx512``...)."""
    return str(codegen.llvm_get_system_cpu())


@cache
def host_features() -> frozenset[str]:
    """Canonical names of the :data:`FEATURES` this host has."""
    flags: set[str] = set()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.split(":", 1)[1].split())
                    break
    except OSError:
        pass
    if flags:
        return frozenset(k for k, flag in FEATURES.items() if flag in flags)
    # No /proc/cpuinfo (not Linux): ask LLVM about the host CPU model.
    tgt = tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()})
    return frozenset(k for k in FEATURES if _has(k, tgt))


def host_cores() -> int:
    """Cores this process may use (affinity-aware)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def host_isa_level(precision: str = "fp32") -> str:
    """The highest level this host supports (of those ``auto`` picks for ``precision``: ``fp32``,
    ``bf16`` or ``int8``)."""
    feats = host_features()
    best = "x86-64"
    for lvl in ISA_LEVELS.values():
        if precision not in _AUTO_ONLY_FOR.get(lvl.name, (precision,)):
            continue
        if set(lvl.features) <= feats:
            best = lvl.name
    return best


def level_name(features: tuple[str, ...] | list[str] | set[str] | frozenset[str]) -> str:
    """The name of the highest level whose features are all in ``features``, followed by
    ``+feature`` for each required feature beyond it (``x86-avx512+avx512bf16``: AVX-512 code
    that also uses ``vdpbf16ps`` but no VNNI)."""
    have = set(features)
    best = ISA_LEVELS["x86-64"]
    for lvl in ISA_LEVELS.values():
        if set(lvl.features) <= have:
            best = lvl
    more = [f for f in FEATURES if f in have and f not in best.features]
    return best.name + "".join(f"+{f}" for f in more)


def missing_features(required: list[str] | tuple[str, ...]) -> list[str]:
    """The ``required`` features this host lacks (empty: it can run the code)."""
    have = host_features()
    return [f for f in required if f not in have]


PORTABLE_CPUS = frozenset({"x86-64", "x86-64-v2", "x86-64-v3", "x86-64-v4"})


def llvm_cpu_features(mcpu: str, mattr: tuple[str, ...] | list[str] = ()) -> frozenset[str]:
    """Every LLVM feature enabled by ``mcpu`` (+``mattr``)."""
    cfg: dict[str, Any] = {"kind": "llvm", "mcpu": mcpu}
    if mattr:
        cfg["mattr"] = list(mattr)
    return frozenset(str(f) for f in codegen.llvm_get_cpu_features(tvm.target.Target(cfg)))


def unsupported_cpu_features(mcpu: str, mattr: tuple[str, ...] | list[str] = ()) -> list[str]:
    """For a CPU-model target (``znver4``...), the LLVM features it enables that this host's CPU
    model lacks. Portable ``x86-64-vN`` targets are checked by :func:`missing_features` alone."""
    if mcpu in PORTABLE_CPUS:
        return []
    return sorted(llvm_cpu_features(mcpu, mattr) - llvm_cpu_features(host_cpu()))


def _has(feature: str, target: tvm.target.Target) -> bool:
    try:
        return bool(codegen.target_has_features(feature, target))
    except Exception:  # an LLVM that does not know the feature
        return False


def _from_tvm_target(tgt: tvm.target.Target, requested: str, threads: int | None) -> TargetSpec:
    if tgt.kind.name != "llvm":
        raise BackendError(f"target {requested!r}: kind {tgt.kind.name!r} is not supported; "
                           "the TVM backend builds for the host CPU (kind 'llvm')")
    attrs = dict(tgt.attrs)
    mcpu = str(attrs.get("mcpu", "")) or "x86-64"
    if mcpu == "native":
        raise BackendError(f"target {requested!r}: mcpu 'native' silently builds generic code "
                           "with this TVM; use target 'auto' or 'host'")
    mattr = tuple(str(a) for a in attrs.get("mattr", []) or [])
    cores = threads or int(attrs.get("num-cores", 0) or 0) or host_cores()
    probe = tvm.target.Target({"kind": "llvm", "mcpu": mcpu, **({"mattr": list(mattr)}
                                                                 if mattr else {})})
    feats = tuple(f for f in FEATURES if _has(f, probe))
    level = "x86-64"
    for lvl in ISA_LEVELS.values():
        if set(lvl.features) <= set(feats):
            level = lvl.name
    return TargetSpec(mcpu, mattr, cores, level, feats, requested)


def check_precision(precision: str) -> None:
    if precision not in PRECISIONS:
        raise BackendError(f"unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}")


def resolve_target(target: str | dict[str, Any] | TargetSpec = "auto",
                   threads: int | None = None, precision: str = "fp32",
                   int8: bool = False) -> TargetSpec:
    """Resolve a preset name, ``auto``, ``host``, a TVM target dict or its JSON text.

    ``precision``: what the dense layers compute in; ``int8``: the model has INT8 layers. ``auto``
    picks ``x86-avx512-bf16`` only for ``bf16`` or INT8 (on an AMX host ``x86-avx512-amx`` either
    way)."""
    check_precision(precision)
    if isinstance(target, TargetSpec):
        return target
    if threads is not None and threads < 1:
        raise BackendError(f"threads must be >= 1, got {threads}")
    if isinstance(target, dict) or (isinstance(target, str) and target.lstrip().startswith("{")):
        try:
            cfg = json.loads(target) if isinstance(target, str) else dict(target)
            tgt = tvm.target.Target(cfg)
        except Exception as e:
            raise BackendError(f"target JSON {target!r} is not a valid TVM target: {e}") from e
        return _from_tvm_target(tgt, json.dumps(cfg, sort_keys=True), threads)
    cores = threads or host_cores()
    if target == "auto":
        lvl = ISA_LEVELS[host_isa_level("int8" if int8 and precision == "fp32" else precision)]
        return TargetSpec(lvl.mcpu, lvl.mattr, cores, lvl.name, lvl.features, "auto")
    if target == "host":
        spec = _from_tvm_target(tvm.target.Target({"kind": "llvm", "mcpu": host_cpu()}),
                                "host", cores)
        return spec
    if target in ISA_LEVELS:
        lvl = ISA_LEVELS[target]
        return TargetSpec(lvl.mcpu, lvl.mattr, cores, lvl.name, lvl.features, target)
    import difflib

    close = difflib.get_close_matches(str(target), PRESETS, n=3)
    hint = f" (did you mean {', '.join(close)}?)" if close else ""
    raise BackendError(f"unknown target {target!r}{hint}; use one of {', '.join(PRESETS)} "
                       "or a TVM target JSON like '{\"kind\": \"llvm\", \"mcpu\": \"znver3\"}'")
