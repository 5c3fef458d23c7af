"""Kernel benchmarks that drive TVM directly (compiled kernels timed against numpy, MetaSchedule or
each other). They live in the backend, where ``import tvm`` belongs; ``bench/matmul_kernels.py``
and ``bench/bf16_kernels.py`` run them."""
