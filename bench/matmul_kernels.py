"""Runs ``lamina.backends.tvm.bench.matmul_kernels`` (its doc gives the options); the benchmark
lives in the backend because it drives TVM directly."""

from __future__ import annotations

import sys

from lamina.backends.tvm.bench.matmul_kernels import main

if __name__ == "__main__":
    sys.exit(main())
