"""GFLOP/s of Lamina's dense and attention kernels against numpy (OpenBLAS) and MetaSchedule.

    python bench/matmul_kernels.py [--search] [--ms-trials N] [--isa avx2|avx512] [--attention]

The code lives in ``backends/tvm/kernels/bench.py`` (TVM stays inside backends/tvm).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from lamina.backends.tvm.kernels.bench import main  # noqa: E402

if __name__ == "__main__":
    raise SystemExit(main())
