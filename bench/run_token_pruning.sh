#!/usr/bin/env bash
# Token pruning on the real MiniLM (README "Token pruning and latency budgets"): compile with the length
# search at --max-loss 0.08 (and the Pareto plot), re-tune a copy into three configurations for the budget
# figures, then accuracy per configuration + budget hit rate on 1,000 held-out sentences, and real-text
# throughput of the pruned copy against the unpruned configuration's artifact and ONNX Runtime.
# Usage: bench/run_token_pruning.sh [WORKDIR]
set -euo pipefail
WORK=${1:-minilm-work}
mkdir -p "$WORK"
MODEL=$(python -c 'from lamina.zoo import export_model; print(export_model("minilm", "torchscript", 17))')
TOK=$(python -c 'from lamina.zoo import minilm_tokenizer_dir; print(minilm_tokenizer_dir())')
TOKENS=$(python -c 'print(",".join(map(str, [*range(32, 257, 16), *range(288, 513, 32), 640, 768, 896, 1024])))')
CAL=data/corpus/calibration.txt
[ -d "$WORK/pruned.lamina" ] || lamina compile "$MODEL" -o "$WORK/pruned.lamina" --threads 2 --packed "$TOKENS" \
    --prune-tokens --max-loss 0.08 --calibration $CAL --tokenizer "$TOK" --plot "$WORK/pareto.png" --report "$WORK/pareto.json"
rm -rf "$WORK/budget.lamina" && cp -r "$WORK/pruned.lamina" "$WORK/budget.lamina"
lamina tune-length "$WORK/budget.lamina" --calibration $CAL --tokenizer "$TOK" --max-loss 0.8 --max-configs 3 --threads 2
python bench/token_pruning.py "$WORK/budget.lamina" --threads 2
[ -d "$WORK/packed.lamina" ] || lamina compile "$MODEL" -o "$WORK/packed.lamina" --threads 2 --packed "$TOKENS"
lamina bench "$WORK/budget.lamina" --text-file data/corpus/heldout.txt --batch 8 --sentences 256 --threads 2 \
    --baseline "$WORK/packed.lamina" --rounds 3 --iters 2
