#!/usr/bin/env bash
# Real-text throughput of padding-free batches: MiniLM compiled with --packed, fp32 and static INT8,
# against ONNX Runtime padded to each batch's longest row and to 128 (and, for the INT8 artifact, ONNX
# Runtime's dynamic INT8 padded to the longest row), on the held-out corpus in batches of 8, 2 threads.
# Usage: bench/run_text_bench.sh [WORKDIR] [extra lamina bench flags]
set -euo pipefail
WORK=${1:-minilm-work}
shift || true
mkdir -p "$WORK"
MODEL=$(python -c 'from lamina.zoo import export_model; print(export_model("minilm", "torchscript", 17))')
TOK=$(python -c 'from lamina.compiler.driver.bench import _minilm_dir; print(_minilm_dir())')
ART="$WORK/minilm-packed.lamina"
INT8="$WORK/minilm-packed-int8.lamina"
# Token buckets: steps of 16 to 256 tokens, 32 to 512, 128 to 1,024 (a batch of 8 real sentences is 160-300).
TOKENS=$(python -c 'print(",".join(map(str, [*range(32, 257, 16), *range(288, 513, 32), 640, 768, 896, 1024])))')
[ -d "$ART" ] || lamina compile "$MODEL" -o "$ART" --threads 2 --packed "$TOKENS"
[ -d "$INT8" ] || lamina compile "$MODEL" -o "$INT8" --threads 2 --packed "$TOKENS" --quantize int8 \
    --calibration data/corpus/calibration.txt --tokenizer "$TOK"
lamina bench "$ART" --text-file data/corpus/heldout.txt --batch 8 --sentences 256 --threads 2 --rounds 5 "$@"
lamina bench "$INT8" --baseline "$ART" --text-file data/corpus/heldout.txt --batch 8 --sentences 256 \
    --threads 2 --rounds 5 "$@"
