#!/usr/bin/env bash
# Side-by-side benchmark of the README example: MiniLM fp32, Lamina vs ONNX Runtime vs PyTorch.
# Usage: bench/run_bench.sh [ARTIFACT] [extra lamina bench flags]
set -euo pipefail
ART=${1:-minilm-work/minilm-torchscript.lamina}
shift || true
lamina bench "$ART" --torch minilm --batch 1 --seq 128 --threads 2 --text "$@"
