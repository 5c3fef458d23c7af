"""Linux's permission for the AMX tile state, which a process must request before its first tile
instruction (without it the kernel kills the process with SIGILL).

``arch_prctl(ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)`` once per process is enough: TVM's pool
threads inherit the permission (TVM_NOTES.md). The runtime calls :func:`request_amx` when it loads
an artifact whose code uses AMX (``amx-tile`` among its required features).
"""

from __future__ import annotations

import ctypes
import logging
import sys

log = logging.getLogger(__name__)

SYS_ARCH_PRCTL = 158  # x86-64
ARCH_REQ_XCOMP_PERM = 0x1023
XFEATURE_XTILEDATA = 18

_granted = False


def request_amx(libc: object | None = None) -> bool:
    """Ask Linux for the AMX tile state; True when granted (or already granted in this process).

    ``libc``: an object with ``syscall`` (tests pass a fake); default: this process's C library.
    """
    global _granted
    if _granted:
        return True
    if not sys.platform.startswith("linux"):
        return False
    lib = libc if libc is not None else ctypes.CDLL(None, use_errno=True)
    rc = lib.syscall(SYS_ARCH_PRCTL, ARCH_REQ_XCOMP_PERM, XFEATURE_XTILEDATA)  # type: ignore[attr-defined]
    if rc != 0:
        log.debug("arch_prctl(ARCH_REQ_XCOMP_PERM, XTILEDATA) returned %s", rc)
        return False
    _granted = libc is None  # a fake libc grants nothing for the real process
    return True
