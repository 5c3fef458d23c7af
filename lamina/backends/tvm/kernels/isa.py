"""ISA detection for the hand-written kernels.

Kernels pick their register tile from the *target's* features, never from the host, so a
cross-compile for an AVX2 machine on an AVX-512 host gets AVX2 tiles. ``host_target()`` builds
the dict-form LLVM target for the machine we run on (``mcpu: native`` silently yields generic
code with this wheel, see TVM_NOTES.md).
"""

from __future__ import annotations

import os
from functools import cache
from typing import Literal

import tvm
from tvm.target import codegen

Isa = Literal["avx512", "avx2", "generic"]


def target_has(feature: str, target: tvm.target.Target) -> bool:
    """True when the LLVM ``target`` enables ``feature`` (e.g. ``"avx512f"``)."""
    try:
        return bool(codegen.target_has_features(feature, target))
    except Exception:  # non-x86 targets or an LLVM that does not know the feature
        return False


def isa_of(target: tvm.target.Target) -> Isa:
    """The vector ISA the kernels use for ``target``: ``avx512``, ``avx2`` (with FMA) or ``generic``."""
    if target.kind.name != "llvm":
        return "generic"
    if target_has("avx512f", target):
        return "avx512"
    if target_has("avx2", target) and target_has("fma", target):
        return "avx2"
    return "generic"


def num_threads(target: tvm.target.Target) -> int:
    """Thread count the kernels are laid out for: the target's ``num-cores``, else the host's."""
    cores = target.attrs.get("num-cores") if hasattr(target, "attrs") else None
    if cores:
        return int(cores)
    return int(os.environ.get("TVM_NUM_THREADS", os.cpu_count() or 1))


@cache
def host_cpu() -> str:
    """LLVM's name for the host CPU (``znver3``, ``znver4``, ...)."""
    return str(codegen.llvm_get_system_cpu())


def host_target(num_cores: int | None = None, mcpu: str | None = None) -> tvm.target.Target:
    """Dict-form LLVM target for this host (or for ``mcpu``), with ``num-cores`` set."""
    cfg: dict[str, object] = {"kind": "llvm", "mcpu": mcpu or host_cpu()}
    cfg["num-cores"] = int(num_cores or os.cpu_count() or 1)
    return tvm.target.Target(cfg)


def host_supports(isa: Isa) -> bool:
    """True when code built for ``isa`` runs on this host."""
    return isa_of(host_target()) in _SUPERSETS[isa]


_SUPERSETS: dict[str, tuple[str, ...]] = {
    "avx512": ("avx512",),
    "avx2": ("avx512", "avx2"),
    "generic": ("avx512", "avx2", "generic"),
}

# A representative LLVM CPU per ISA, for building variants the host may or may not run.
ISA_MCPU: dict[str, str] = {"avx512": "znver4", "avx2": "znver3", "generic": "x86-64"}
