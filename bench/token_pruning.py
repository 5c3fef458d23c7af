"""Token pruning on the real MiniLM: accuracy of a pruned artifact's configurations on held-out
sentences, and how often ``run(feeds, budget_ms=B)`` meets its budget.

    python bench/token_pruning.py ARTIFACT [--sentences 1000] [--budget-ms B] [--threads 2]

ARTIFACT: compiled with ``lamina compile MODEL -o ART --prune-tokens --max-loss L --calibration
data/corpus/calibration.txt --tokenizer DIR`` (or re-tuned with ``lamina tune-length``). Held-out
text: ``data/corpus/heldout.txt`` (never seen by the search), batches of 8 in corpus order.

1. For every length configuration: top-1 neighbour agreement and mean cosine of the mean-pooled
   ``last_hidden_state`` against the unpruned run of the same artifact, and ms per batch.
2. Budget: for every batch, B = the middle configuration's measured latency on it (median of 3;
   or ``--budget-ms``); one call with ``budget_ms=B``; prints the share of calls that finished
   within B and which configurations ran.
"""

from __future__ import annotations

import argparse
import collections
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent


def main() -> int:
    import lamina
    from lamina.compiler.driver import length
    from lamina.compiler.driver.bench_text import make_batches, read_sentences
    from lamina.compiler.driver.quantize import nn_agreement
    from lamina.zoo import minilm_tokenizer_dir

    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("artifact")
    ap.add_argument("--sentences", type=int, default=1000)
    ap.add_argument("--budget-ms", type=float, default=None)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--text-file", default=str(ROOT / "data" / "corpus" / "heldout.txt"))
    args = ap.parse_args()

    model = lamina.load(args.artifact, threads=args.threads)
    tok = str(minilm_tokenizer_dir())
    names = [i.name for i in model.inputs]
    texts = read_sentences(args.text_file, args.sentences)
    batches = make_batches(texts, 8, tok, names, None, 128)
    print(f"{len(texts)} held-out sentences in {len(batches)} batches of 8; "
          f"{length._cpu_name()}, {args.threads} threads")
    ref = length.embed(model, batches, "unpruned")
    configs = model.length_configs
    for cfg in [None, *configs]:
        name = "unpruned" if cfg is None else cfg.name
        emb = length.embed(model, batches, name)
        _, (ms,) = length._time_interleaved(model, batches, [name], repeats=1)
        agree = nn_agreement(ref, emb)
        cos = float((ref * emb).sum(1).mean())
        keep = "all" if cfg is None else ":".join(f"{r:g}" for r in cfg.keep)
        print(f"{name:<9} keep {keep:<24} agreement {agree:.3f}  mean cosine {cos:.4f}  "
              f"{ms.mean():6.2f} ms/batch")
    if len(configs) < 2:
        print("budget: fewer than two length configurations; nothing to choose between")
        return 0
    by_speed = sorted(configs, key=lambda c: c.expected_ms(240))
    middle = by_speed[len(by_speed) // 2]
    # Per request: B = the middle configuration's measured latency on that batch (median of 3);
    # then one call with budget_ms=B.
    met, used, budgets = 0, collections.Counter(), []
    for feeds in batches:
        times = []
        for _ in range(3):
            t = time.perf_counter()
            model.run(feeds, length_config=middle.name)
            times.append((time.perf_counter() - t) * 1e3)
        budget = args.budget_ms or float(np.median(times))
        budgets.append(budget)
        t = time.perf_counter()
        model.run(feeds, budget_ms=budget)
        met += (time.perf_counter() - t) * 1e3 <= budget
        used[model.last_config] += 1
    print(f"budget = configuration {middle.name}'s latency on each batch (median "
          f"{np.median(budgets):.2f} ms): met in {met} of {len(batches)} calls "
          f"({100 * met / len(batches):.1f}%); ran " +
          ", ".join(f"{k} x{v}" for k, v in sorted(used.items())))
    return 0


if __name__ == "__main__":
    np.set_printoptions(precision=4)
    raise SystemExit(main())
