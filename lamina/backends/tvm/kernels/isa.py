"""The kernels' view of the ISA model in :mod:`lamina.backends.tvm.target` (the one model of CPU
features, ISA levels and host detection).

Kernels pick their register tile and instruction family from the *target's* features, never from
the host, so a cross-compile for an AVX2 machine on an AVX-512 host gets AVX2 tiles. Two families:

- the vector ISA of the fp32 kernels (:func:`isa_of`): ``avx512``, ``avx2`` (with FMA), ``generic``;
- the INT8 dot-product family (:func:`int8_isa`): ``amx`` (``tdpbusd`` on tiles), ``vnni``
  (AVX-512 ``vpdpbusd``), ``avx2`` (``vpmaddubsw`` + ``vpmaddwd``);
- the BF16 dot-product family (:func:`bf16_isa`): ``amx`` (``tdpbf16ps`` on tiles), ``avx512bf16``
  (``vdpbf16ps``), or none (``--precision bf16`` is refused).

A kernel that uses an instruction beyond its target's base vector ISA reports the LLVM features it
needs (:data:`INT8_FEATURES`) to the lowering, and only those end up in the artifact's
``required_features``: an fp32 artifact built on a VNNI host loads on any AVX-512 host.
"""

from __future__ import annotations

import os
from typing import Literal

import tvm
from tvm.target import codegen

from ..target import ISA_LEVELS, host_features

Isa = Literal["avx512", "avx2", "generic"]
Int8Isa = Literal["amx", "vnni", "avx2"]
Bf16Isa = Literal["amx", "avx512bf16"]

# The ISA level each kernel family needs at least (see target.ISA_LEVELS).
_LEVEL_OF: dict[str, str] = {"avx512": "x86-avx512", "avx2": "x86-avx2", "generic": "x86-64",
                             "vnni": "x86-avx512-vnni", "avx512bf16": "x86-avx512-bf16",
                             "amx": "x86-avx512-amx"}
# Extra LLVM features (beyond the base vector ISA) each INT8 family's code uses.
INT8_FEATURES: dict[str, tuple[str, ...]] = {"amx": ("amx-tile", "amx-int8"),
                                             "vnni": ("avx512vnni",), "avx2": ()}
# Extra LLVM features each BF16 family's code uses.
BF16_FEATURES: dict[str, tuple[str, ...]] = {"amx": ("amx-tile", "amx-bf16"),
                                             "avx512bf16": ("avx512bf16",)}
_LANES: dict[str, int] = {"avx512": 16, "avx2": 8, "generic": 4}


def target_has(feature: str, target: tvm.target.Target) -> bool:
    """True when the LLVM ``target`` enables ``feature`` (e.g. ``"avx512f"``)."""
    try:
        return bool(codegen.target_has_features(feature, target))
    except Exception:  # non-x86 targets or an LLVM that does not know the feature
        return False


def isa_of(target: tvm.target.Target) -> Isa:
    """The vector ISA the kernels use for ``target``: ``avx512``, ``avx2`` (with FMA) or
    ``generic``."""
    if target.kind.name != "llvm":
        return "generic"
    if target_has("avx512f", target) and target_has("avx512bw", target):
        return "avx512"
    if target_has("avx2", target) and target_has("fma", target):
        return "avx2"
    return "generic"


def int8_isa(target: tvm.target.Target) -> Int8Isa | None:
    """The INT8 dot-product family for ``target`` (None: no INT8 kernel for it)."""
    vec = isa_of(target)
    if vec == "avx512" and all(target_has(f, target) for f in INT8_FEATURES["amx"]):
        return "amx"
    if vec == "avx512" and target_has("avx512vnni", target):
        return "vnni"
    if vec in ("avx512", "avx2"):
        return "avx2"
    return None


def bf16_isa(target: tvm.target.Target) -> Bf16Isa | None:
    """The BF16 dot-product family for ``target`` (None: the target has no BF16 instruction)."""
    if isa_of(target) != "avx512":
        return None
    if all(target_has(f, target) for f in BF16_FEATURES["amx"]):
        return "amx"
    if target_has("avx512bf16", target):
        return "avx512bf16"
    return None


def lanes(isa: Isa) -> int:
    """fp32 lanes of one vector register."""
    return _LANES[isa]


def vector_lanes(target: tvm.target.Target) -> int:
    """fp32 lanes of one vector register of ``target`` (16 AVX-512, 8 AVX2, 4 otherwise)."""
    return _LANES[isa_of(target)]


def num_threads(target: tvm.target.Target) -> int:
    """Thread count the kernels are laid out for: the target's ``num-cores``, else the host's."""
    cores = target.attrs.get("num-cores") if hasattr(target, "attrs") else None
    if cores:
        return int(cores)
    return int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))


def target_for(isa: str, num_cores: int | None = None) -> tvm.target.Target:
    """The portable target of a kernel family (``avx512``, ``avx2``, ``generic``, ``vnni``,
    ``avx512bf16``, ``amx``): the ``x86-64-vN`` CPU of its ISA level plus the level's extra
    features."""
    lvl = ISA_LEVELS[_LEVEL_OF[isa]]
    cfg: dict[str, object] = {
        "kind": "llvm",
        "mcpu": lvl.mcpu,
        "num-cores": int(num_cores or os.cpu_count() or 1),
    }
    if lvl.mattr:
        cfg["mattr"] = list(lvl.mattr)
    return tvm.target.Target(cfg)


def host_target(num_cores: int | None = None, isa: str | None = None) -> tvm.target.Target:
    """The portable target for this host's best level (or for kernel family ``isa``)."""
    if isa is None:
        best = "generic"
        for name in ("avx2", "avx512", "vnni", "amx"):
            if host_supports(name):
                best = name
        isa = best
    return target_for(isa, num_cores)


def host_supports(isa: str) -> bool:
    """True when code of kernel family ``isa`` runs on this host (features from /proc/cpuinfo)."""
    return set(ISA_LEVELS[_LEVEL_OF[isa]].features) <= host_features()
