"""Token pruning's length search: per-layer keep ratios against an accuracy target.

``lamina compile MODEL -o OUT --prune-tokens --max-loss L --calibration TXT --tokenizer DIR``
compiles the layer-by-layer functions (``backends/tvm/staged.py``) and then searches, on the
artifact itself, which tokens each layer may drop; ``lamina tune-length ARTIFACT ...`` searches
again (another ``--max-loss``, another corpus) and rewrites the artifact's configurations.

- Loss = 1 - top-1 nearest-neighbour agreement of the mean-pooled ``last_hidden_state`` with the
  unpruned model's (each sentence's nearest other sentence, by cosine; the INT8 measure).
- The calibration sentences are split: the first part drives the search, the last third
  (``holdout``) checks the result. A configuration is kept only if it meets ``--max-loss`` on the
  held-out part too.
- Greedy search (in the spirit of Length-Adaptive Transformer's, without training): start from
  keeping every token; each step lowers one layer's keep ratio (and the later layers' to at most
  it) by one grid step, trying every layer, and takes the step that saves the most computed
  token-layers per unit of loss, while the search loss stays within ``--max-loss``.
- With a plot or report, the path continues past ``--max-loss`` (to a loss of 0.6) to show the
  curve beyond the chosen point; those points are never chosen nor stored.
- Every configuration on that path is timed on the held-out batches (batches of ``batch`` in
  corpus order), giving the latency-vs-agreement curve; the Pareto points that meet
  ``--max-loss`` go into the artifact's manifest (``length_configs``) with a latency model per
  configuration (``ms_fixed + ms_per_token * tokens``, times the measured p90 slack) so that
  ``CompiledModel.run(feeds, budget_ms=B)`` can pick one; the most pruned of them is the default.
"""

from __future__ import annotations

import json
import logging
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from lamina.compiler.errors import UsageError

log = logging.getLogger(__name__)

GRID = (1.0, 0.9, 0.8, 0.7, 0.6, 0.5, 0.4, 0.3, 0.2)
MIN_SENTENCES = 60


@dataclass
class LengthSearchConfig:
    calibration: str
    tokenizer: str
    max_loss: float = 0.08
    holdout: float = 1 / 3
    batch: int = 8
    eval_batch: int = 32
    limit: int | None = None          # use only the first N calibration sentences
    plot: str | None = None
    report: str | None = None
    grid: Sequence[float] = GRID
    max_configs: int = 4              # length configurations kept in the artifact (0: all)
    # With a plot or report the path goes on past max_loss up to this loss, to draw the curve
    # beyond the chosen point (those points are never chosen nor stored).
    explore_loss: float = 0.0


@dataclass
class Point:
    keep: list[float]
    search_loss: float
    cost: float                       # computed token-layers, relative to the unpruned model
    heldout_agreement: float = float("nan")
    ms_per_batch: float = float("nan")
    ms_fixed: float = 0.0
    ms_per_token: float = 0.0
    slack: float = 1.0
    pareto: bool = False
    chosen: bool = False


@dataclass
class SearchResult:
    points: list[Point]
    chosen: Point
    max_loss: float
    search_sentences: int
    heldout_sentences: int
    batch: int
    evaluations: int
    seconds: float
    cpu: str = ""
    extra: dict[str, Any] = field(default_factory=dict)

    def configs(self, max_configs: int = 0) -> dict[str, Any]:
        """The manifest's ``length_configs``: Pareto points within the loss, most accurate first;
        with ``max_configs``, at most that many (the most accurate, the chosen one, and between
        them the points that split the latency range most evenly)."""
        keep = [p for p in self.points if p.pareto and 1 - p.heldout_agreement <= self.max_loss]
        keep.sort(key=lambda p: (-p.heldout_agreement, p.ms_per_batch))
        if max_configs and len(keep) > max_configs:
            picked = [keep[0]] + ([self.chosen] if self.chosen is not keep[0] else [])
            rest = [p for p in keep if p not in picked]
            while len(picked) < max_configs and rest:
                lat = sorted(q.ms_per_batch for q in picked)
                best = max(rest, key=lambda p: min(abs(p.ms_per_batch - x) for x in lat))
                picked.append(best)
                rest.remove(best)
            keep = sorted(picked, key=lambda p: (-p.heldout_agreement, p.ms_per_batch))
        out, default = [], None
        for i, p in enumerate(keep):
            name = f"c{i}"
            out.append({"name": name, "keep": p.keep, "agreement": round(p.heldout_agreement, 4),
                        "ms_fixed": round(p.ms_fixed, 4), "ms_per_token": round(p.ms_per_token, 5),
                        "slack": round(p.slack, 3), "ms_per_batch": round(p.ms_per_batch, 3)})
            if p is self.chosen:
                default = name
        return {"configs": out, "default": default, "max_loss": self.max_loss,
                "metric": "top-1 neighbour agreement of mean-pooled last_hidden_state, held out",
                "batch": self.batch}


def check_max_loss(value: float) -> float:
    if not (isinstance(value, (int, float)) and 0 < value < 1):
        raise UsageError(f"--max-loss must be in (0, 1) (a loss of neighbour agreement), got "
                         f"{value}")
    return float(value)


def split_sentences(path: str, holdout: float, limit: int | None = None
                    ) -> tuple[list[str], list[str]]:
    from lamina.compiler.driver.bench_text import read_sentences

    lines = read_sentences(path, limit or 0)
    held = int(round(len(lines) * holdout))
    if len(lines) < MIN_SENTENCES or held < MIN_SENTENCES // 3:
        raise UsageError(f"--calibration {path}: {len(lines)} sentences are too few to search and "
                         f"hold out a third; give at least {MIN_SENTENCES} (one per line)")
    return lines[: len(lines) - held], lines[len(lines) - held:]


def _mask(feeds: dict[str, np.ndarray]) -> np.ndarray:
    return next(v for k, v in feeds.items() if "mask" in k.lower())


def embed(model: Any, batches: list[dict[str, np.ndarray]], keep: Sequence[float] | str
          ) -> np.ndarray:
    """Mean-pooled ``last_hidden_state`` rows of ``model`` run with the keep ratios ``keep``."""
    from lamina.compiler.driver.quantize import pooled

    out_name = model._staged.token_output
    return np.concatenate([pooled(model.run(feeds, length_config=keep)[out_name], feeds)
                           for feeds in batches])


def token_cost(keep: Sequence[float], lengths: np.ndarray) -> float:
    """Token-layers computed with ``keep``, relative to every token in every layer."""
    from lamina.compiler.ir.ops.token_pruning import keep_counts

    alive = lengths.astype(np.int64)
    total = 0
    for layer, r in enumerate(keep):
        if layer > 0 and r < keep[layer - 1]:
            alive = keep_counts(alive, lengths, r)
        total += int(alive.sum())
    return total / (len(keep) * int(lengths.sum()))


def _time_interleaved(model: Any, batches: list[dict[str, np.ndarray]],
                      keeps: list[Sequence[float]], repeats: int = 3
                      ) -> tuple[np.ndarray, list[np.ndarray]]:
    """``(real tokens per batch, [ms [repeats, batches]] per configuration)``, every call timed
    after a warm-up, configurations interleaved: each batch runs under every configuration back to
    back (order rotating), so a shared machine's slow phases hit all of them alike."""
    from tqdm import tqdm

    tokens = np.array([int(_mask(b).sum()) for b in batches])
    ms = [np.zeros((repeats, len(batches))) for _ in keeps]
    for keep in keeps:
        for feeds in batches[:2]:
            model.run(feeds, length_config=keep)   # warm-up
    order = list(range(len(keeps)))
    with tqdm(total=repeats * len(batches), desc="timing", unit="batch", leave=False,
              disable=None) as bar:
        for r in range(repeats):
            for i, feeds in enumerate(batches):
                order = order[1:] + order[:1]
                for c in order:
                    t = time.perf_counter()
                    model.run(feeds, length_config=keeps[c])
                    ms[c][r, i] = (time.perf_counter() - t) * 1e3
                bar.update(1)
    return tokens, ms


def _latency_model(tokens: np.ndarray, ms: np.ndarray) -> tuple[float, float, float]:
    """``(ms_fixed, ms_per_token, slack)``: least squares on each batch's median time, and the
    p90 of every measured time over its prediction (so a budget is met in about 9 calls of 10)."""
    med = np.median(ms, axis=0)
    a = np.stack([np.ones_like(tokens, dtype=np.float64), tokens.astype(np.float64)], axis=1)
    (fixed, per), *_ = np.linalg.lstsq(a, med, rcond=None)
    fixed, per = max(float(fixed), 0.0), max(float(per), 1e-6)
    pred = fixed + per * tokens
    slack = float(np.percentile(ms / pred[None, :], 90))
    return fixed, per, max(slack, 1.0)


def _pareto(points: list[Point]) -> None:
    for p in points:
        p.pareto = not any(
            (q.ms_per_batch <= p.ms_per_batch and q.heldout_agreement >= p.heldout_agreement)
            and (q.ms_per_batch < p.ms_per_batch or q.heldout_agreement > p.heldout_agreement)
            for q in points)


def search(model: Any, cfg: LengthSearchConfig,
           progress: Callable[[str], None] | None = None) -> SearchResult:
    """Run the length search on a loaded artifact with staged functions (see the module doc)."""
    from tqdm import tqdm

    from lamina.compiler.driver.bench_text import make_batches
    from lamina.compiler.driver.quantize import nn_agreement

    staged = model._staged
    if staged is None:
        raise UsageError(f"{model.path}: has no layer-by-layer functions; compile it with "
                         "`lamina compile ... --prune-tokens`")
    if staged.token_output is None:
        raise UsageError(f"{model.path}: has no token output (last_hidden_state) to pool")
    check_max_loss(cfg.max_loss)
    t0 = time.perf_counter()
    search_txt, held_txt = split_sentences(cfg.calibration, cfg.holdout, cfg.limit)
    names = [s.name for s in model.inputs]
    max_len = min(128, staged.max_tokens)
    search_b = make_batches(search_txt, cfg.eval_batch, cfg.tokenizer, names, None, max_len)
    held_eval = make_batches(held_txt, cfg.eval_batch, cfg.tokenizer, names, None, max_len)
    held_b = make_batches(held_txt, cfg.batch, cfg.tokenizer, names, None, max_len)
    lengths = np.concatenate([_mask(b).sum(1) for b in search_b])
    layers = staged.layers
    unpruned = [1.0] * layers
    ref_search = embed(model, search_b, unpruned)
    evals = 0
    state = list(unpruned)
    path = [Point(state, 0.0, 1.0)]
    grid = sorted(set(float(g) for g in cfg.grid), reverse=True)
    bar = tqdm(desc="length search", unit="config", leave=False, disable=None)
    try:
        while True:
            cands = []
            for layer in range(1, layers):
                lower = [g for g in grid if g < state[layer]]
                if not lower:
                    continue
                cand = state[:layer] + [min(s, lower[0]) for s in state[layer:]]
                if cand not in cands:
                    cands.append(cand)
            best = None
            for cand in cands:
                loss = 1 - nn_agreement(ref_search, embed(model, search_b, cand))
                evals += 1
                bar.update(1)
                cost = token_cost(cand, lengths)
                bar.set_postfix_str(f"{':'.join(f'{r:g}' for r in cand)} loss {loss:.3f} "
                                    f"cost {cost:.2f}")
                if loss > max(cfg.max_loss, cfg.explore_loss):
                    continue
                gain = (path[-1].cost - cost) / max(loss - path[-1].search_loss, 1e-3)
                if best is None or gain > best[0]:
                    best = (gain, Point(cand, loss, cost))
            if best is None:
                break
            state = best[1].keep
            path.append(best[1])
            if progress:
                progress(f"step {len(path) - 1}: keep {':'.join(f'{r:g}' for r in state)}, "
                         f"search loss {best[1].search_loss:.3f}, cost {best[1].cost:.2f}")
    finally:
        bar.close()
    # Held-out agreement and latency of every point on the path.
    ref_held = embed(model, held_eval, unpruned)
    for p in tqdm(path, desc="held-out check", unit="config", leave=False, disable=None):
        p.heldout_agreement = nn_agreement(ref_held, embed(model, held_eval, p.keep))
    tokens, times = _time_interleaved(model, held_b, [p.keep for p in path])
    for p, ms in zip(path, times, strict=True):
        p.ms_per_batch = float(np.median(ms, axis=0).mean())
        p.ms_fixed, p.ms_per_token, p.slack = _latency_model(tokens, ms)
    _pareto(path)
    ok = [p for p in path if 1 - p.heldout_agreement <= cfg.max_loss]
    chosen = min(ok, key=lambda p: p.ms_per_batch) if ok else path[0]
    chosen.chosen = True
    chosen.pareto = True
    return SearchResult(path, chosen, cfg.max_loss, len(search_txt), len(held_txt), cfg.batch,
                        evals, time.perf_counter() - t0, _cpu_name())


def _cpu_name() -> str:
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    import platform

    return platform.processor() or platform.machine()


def write_report(result: SearchResult, path: str) -> None:
    data = {
        "max_loss": result.max_loss,
        "loss": "1 - top-1 neighbour agreement (mean-pooled last_hidden_state, cosine)",
        "search_sentences": result.search_sentences,
        "heldout_sentences": result.heldout_sentences,
        "batch": result.batch,
        "evaluations": result.evaluations,
        "seconds": round(result.seconds, 1),
        "cpu": result.cpu,
        "chosen": result.chosen.keep,
        "points": [asdict(p) for p in result.points],
    }
    Path(path).write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")


def write_plot(result: SearchResult, path: str, title: str = "") -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UsageError("--plot needs matplotlib: pip install 'lamina[plot]'") from None
    pts = result.points
    fig, ax = plt.subplots(figsize=(6.4, 4.2), dpi=120)
    ax.scatter([p.ms_per_batch for p in pts], [p.heldout_agreement for p in pts], color="0.6",
               label="searched configurations", zorder=2)
    front = sorted((p for p in pts if p.pareto), key=lambda p: p.ms_per_batch)
    ax.plot([p.ms_per_batch for p in front], [p.heldout_agreement for p in front], "-o",
            color="tab:blue", label="Pareto front", zorder=3)
    c = result.chosen
    ax.scatter([c.ms_per_batch], [c.heldout_agreement], s=160, facecolors="none",
               edgecolors="tab:red", linewidths=2, label="chosen", zorder=4)
    ax.annotate(":".join(f"{r:g}" for r in c.keep), (c.ms_per_batch, c.heldout_agreement),
                textcoords="offset points", xytext=(8, -14), fontsize=8, color="tab:red")
    ax.axhline(1 - result.max_loss, color="tab:red", ls="--", lw=1,
               label=f"max loss {result.max_loss:g}")
    ax.set_xlabel(f"latency per batch of {result.batch} (ms, held-out text)")
    ax.set_ylabel("top-1 neighbour agreement (held out)")
    ax.set_title(title or f"token pruning: latency vs accuracy ({result.cpu})", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)


def apply(artifact: str | Path, result: SearchResult, max_configs: int = 0) -> dict[str, Any]:
    """Write the search's configurations into the artifact's manifest."""
    from lamina.backends.tvm.artifact import update_manifest

    configs = result.configs(max_configs)
    update_manifest(artifact, {"length_configs": configs})
    return configs


def tune(artifact: str | Path, cfg: LengthSearchConfig, threads: int | None = None, *,
         remove_on_error: bool = False, progress: Callable[[str], None] | None = None
         ) -> tuple[SearchResult, dict[str, Any]]:
    """Search ``artifact`` (compiled with staged functions) and write its length configurations,
    the report and the plot; with ``remove_on_error``, a failed search removes the artifact (a
    compile never leaves a half-made one)."""
    import shutil

    from lamina.backends import tvm as tvm_backend

    try:
        model = tvm_backend.load(artifact, threads=threads)
        result = search(model, cfg, progress=progress)
        configs = apply(artifact, result, cfg.max_configs)
    except BaseException:
        if remove_on_error:
            shutil.rmtree(artifact, ignore_errors=True)
        raise
    if cfg.report:
        write_report(result, cfg.report)
    if cfg.plot:
        write_plot(result, cfg.plot)
    return result, configs


def describe_configs(artifact: str | Path, configs: dict[str, Any]) -> str:
    names = ", ".join(f"{c['name']} (keep {':'.join(f'{r:g}' for r in c['keep'])}, agreement "
                      f"{c['agreement']:.3f}, {c['ms_per_batch']:.1f} ms/batch)"
                      for c in configs["configs"])
    return f"{artifact}: length configurations {names}; default {configs['default']}"


def summary(result: SearchResult) -> str:
    c = result.chosen
    rows = [f"length search: {result.evaluations} configurations in {result.seconds:.0f}s, "
            f"{result.search_sentences} search / {result.heldout_sentences} held-out sentences"]
    for p in result.points:
        mark = "*" if p.chosen else ("p" if p.pareto else " ")
        rows.append(f"  {mark} keep {':'.join(f'{r:g}' for r in p.keep):<24} "
                    f"cost {p.cost:.2f}  held-out agreement {p.heldout_agreement:.3f}  "
                    f"{p.ms_per_batch:.1f} ms/batch")
    base = result.points[0]
    speed = base.ms_per_batch / c.ms_per_batch if c.ms_per_batch > 0 else math.nan
    rows.append(f"chosen: keep {':'.join(f'{r:g}' for r in c.keep)} (held-out agreement "
                f"{c.heldout_agreement:.3f}, {speed:.2f}x the unpruned latency)")
    return "\n".join(rows)
