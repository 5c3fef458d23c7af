#!/usr/bin/env bash
# Real-text throughput of padding-free batches: MiniLM fp32 compiled with --packed, Lamina vs ONNX Runtime
# padded to each batch's longest row and to 128, on the held-out corpus in batches of 8 (2 threads).
# Usage: bench/run_text_bench.sh [WORKDIR] [extra lamina bench flags]
set -euo pipefail
WORK=${1:-minilm-work}
shift || true
mkdir -p "$WORK"
MODEL=$(python -c 'from lamina.zoo import export_model; print(export_model("minilm", "torchscript", 17))')
ART="$WORK/minilm-packed.lamina"
# Token buckets: steps of 16 to 256 tokens, 32 to 512, 128 to 1,024 (a batch of 8 real sentences is 160-300).
TOKENS=$(python -c 'print(",".join(map(str, [*range(32, 257, 16), *range(288, 513, 32), 640, 768, 896, 1024])))')
[ -d "$ART" ] || lamina compile "$MODEL" -o "$ART" --threads 2 --packed "$TOKENS"
lamina bench "$ART" --text-file data/corpus/heldout.txt --batch 8 --sentences 256 --threads 2 "$@"
