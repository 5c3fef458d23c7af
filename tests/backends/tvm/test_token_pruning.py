"""Token pruning at run time: the selection math, budget selection, staged artifacts against the
unpruned run and ONNX Runtime on the ``prune-tokens`` graph, the length search and its errors."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest

from lamina.backends.tvm.pruned_runtime import LengthConfig, choose_config
from lamina.compiler.ir.ops.token_pruning import keep_counts, select_rows
from tests.compiler.test_cli import _one_clear_line, lamina


def _brute_select(imp: np.ndarray, n: int, length: int, r: float) -> set[int]:
    k = min(n, max(2, math.ceil(np.float32(r) * np.float32(length) - np.float32(0.001))))
    forced = {0, n - 1}
    rest = sorted((t for t in range(n) if t not in forced), key=lambda t: (-imp[t], t))
    return set(sorted(forced)[:k]) | set(rest[: max(0, k - len(forced))])


def test_keep_counts_round_up_without_float_surprises() -> None:
    lengths = np.array([10, 10, 10, 3, 1, 21, 128])
    alive = lengths.copy()
    assert keep_counts(alive, lengths, 0.7).tolist() == [7, 7, 7, 3, 1, 15, 90]
    assert keep_counts(alive, lengths, 0.3).tolist() == [3, 3, 3, 2, 1, 7, 39]
    # never more than what is still alive
    assert keep_counts(np.array([4, 2]), np.array([10, 10]), 0.9).tolist() == [4, 2]


@pytest.mark.parametrize("seed", range(5))
def test_select_rows_matches_brute_force(seed: int) -> None:
    rng = np.random.default_rng(seed)
    seg = rng.integers(1, 30, size=6)
    longest = int(seg.max())
    valid = np.arange(longest)[None, :] < seg[:, None]
    imp = rng.random((6, longest)).astype(np.float32)
    imp[:, ::5] = 0.5  # ties: the earlier token wins
    lengths = seg + rng.integers(0, 10, size=6)  # original lengths (rows already pruned)
    for r in (0.9, 0.5, 0.2):
        got = select_rows(imp, valid, lengths, r)
        assert not got[~valid].any()
        for b in range(6):
            want = _brute_select(imp[b], int(seg[b]), int(lengths[b]), r)
            assert set(np.flatnonzero(got[b]).tolist()) == want, (b, r)


def test_select_rows_always_keeps_first_and_last() -> None:
    imp = np.array([[0.0, 9.0, 9.0, 9.0, 0.0]], np.float32)
    valid = np.ones((1, 5), bool)
    got = select_rows(imp, valid, np.array([5]), 0.2)
    assert got.tolist() == [[True, False, False, False, True]]


@pytest.mark.parametrize("lens", [[5, 1, 17, 40], [64], [3, 3, 3, 3, 3, 3], [2]])
def test_received_attention_kernel_matches_reference(lens: list[int]) -> None:
    import tvm

    from lamina.backends.tvm.kernels.common import standalone_module
    from lamina.backends.tvm.kernels.isa import host_target
    from lamina.backends.tvm.kernels.varlen_attention import (
        varlen_received_attention_kernel,
        varlen_received_attention_reference,
    )

    tokens, seqs, heads, d = 80, 8, 4, 16
    tgt = host_target()
    lib = tvm.compile(standalone_module(varlen_received_attention_kernel(
        tokens, seqs, heads, d, 64, scale=d ** -0.5, target=tgt)), tgt)
    cu = np.zeros(seqs + 1, np.int32)
    cu[1:len(lens) + 1] = np.cumsum(lens)
    cu[len(lens) + 1:] = cu[len(lens)]
    x = np.random.default_rng(0).standard_normal((tokens, 3 * heads * d)).astype(np.float32)
    n = int(cu[-1])
    x[n:] = np.nan  # an unwritten bucket tail (see test_packed) must not reach a real token
    dev = tvm.cpu()
    out = tvm.runtime.tensor(np.zeros((heads, tokens), np.float32), dev)
    lib["main"](tvm.runtime.tensor(x, dev), tvm.runtime.tensor(cu, dev), out)
    want = varlen_received_attention_reference(x, cu, heads, d ** -0.5)
    np.testing.assert_allclose(out.numpy()[:, :n], want[:, :n], rtol=1e-5, atol=1e-6)
    # each sequence's queries hand out one unit of attention each, per head
    for b, length in enumerate(lens):
        np.testing.assert_allclose(want[:, cu[b]:cu[b + 1]].sum(1), length, rtol=1e-5)


def _cfgs() -> list[LengthConfig]:
    # accurate and slow -> less accurate and fast; expected = (fixed + per_token * tokens) * slack
    return [LengthConfig("c0", (1, 1, 1), 1.0, 1.0, 0.10),
            LengthConfig("c1", (1, 0.8, 0.8), 0.95, 1.0, 0.08),
            LengthConfig("c2", (1, 0.6, 0.4), 0.91, 1.0, 0.05, slack=1.2)]


def test_budget_picks_the_most_accurate_configuration_that_fits() -> None:
    cfgs = _cfgs()
    assert choose_config(cfgs, cfgs[2], None, 100)[0].name == "c2"   # no budget: the default
    assert choose_config(cfgs, cfgs[2], 11.0, 100)[0].name == "c0"   # 11 ms fits all
    assert choose_config(cfgs, cfgs[2], 9.0, 100)[0].name == "c1"    # c0 expects 11
    assert choose_config(cfgs, cfgs[2], 7.2, 100)[0].name == "c2"    # c2 expects 7.2
    assert choose_config(cfgs, cfgs[2], 90.0, 1000)[0].name == "c1"  # scales with tokens


def test_budget_below_every_configuration_runs_the_fastest_and_says_so(
        caplog: pytest.LogCaptureFixture) -> None:
    cfgs = _cfgs()
    with caplog.at_level("WARNING"):
        cfg, why = choose_config(cfgs, cfgs[0], 1.0, 100)
    assert cfg.name == "c2" and "below every configuration" in why
    assert "running the fastest" in caplog.text


# -- end to end on a tiny model -----------------------------------------------------------------


@pytest.fixture(scope="module")
def staged_tiny(tiny_bert: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lamina.compiler.driver import api

    out = tmp_path_factory.mktemp("staged") / "tiny.lamina"
    api.compile(tiny_bert, out, buckets=[(4, 32)], staged=[32, 64, 128], packed_seqs=8,
                threads=1)
    return out


def _feeds(lens: list[int], seq: int, seed: int = 0) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    ids = np.zeros((len(lens), seq), np.int64)
    mask = np.zeros((len(lens), seq), np.int64)
    for b, n in enumerate(lens):
        ids[b, :n] = rng.integers(5, 90, size=n)
        ids[b, 0], ids[b, n - 1] = 1, 2
        mask[b, :n] = 1
    return {"input_ids": ids, "attention_mask": mask, "token_type_ids": np.zeros_like(ids)}


@pytest.mark.slow
def test_unpruned_staged_run_equals_the_fixed_bucket(staged_tiny: Path) -> None:
    import lamina

    model = lamina.load(staged_tiny)
    feeds = _feeds([7, 32, 3, 19], 32)
    got = model.run(feeds, length_config="unpruned")
    assert model.last_plan.startswith("pruned unpruned")
    staged, model._staged = model._staged, None
    want = model.run(feeds)
    model._staged = staged
    mask = feeds["attention_mask"][..., None].astype(bool)
    out = "last_hidden_state"
    np.testing.assert_allclose(np.where(mask, got[out], 0), np.where(mask, want[out], 0),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_pruned_run_matches_onnx_runtime_on_the_prune_tokens_graph(
        staged_tiny: Path, tiny_bert: Path) -> None:
    pytest.importorskip("lamina.passes.pruning.prune_tokens")
    import lamina
    from lamina.backends.reference import session
    from lamina.compiler.driver import api

    graph, _ = api.optimize(api.load(tiny_bert), "O1,prune-tokens{keep=1:0.5}")
    sess = session(graph)
    model = lamina.load(staged_tiny)
    feeds = _feeds([7, 32, 3, 19, 12], 32, seed=3)
    got = model.run(feeds, length_config=[1.0, 0.5])
    want = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, feeds), strict=True))
    mask = feeds["attention_mask"][..., None].astype(bool)
    out = "last_hidden_state"
    np.testing.assert_allclose(np.where(mask, got[out], 0), np.where(mask, want[out], 0),
                               atol=1e-4, rtol=1e-4)


@pytest.mark.slow
def test_bad_keep_ratios_and_budget_are_one_line_errors(staged_tiny: Path) -> None:
    import lamina
    from lamina.compiler.errors import UsageError

    model = lamina.load(staged_tiny)
    feeds = _feeds([5, 9], 16)
    with pytest.raises(UsageError, match="keep ratios"):
        model.run(feeds, length_config=[0.5, 0.5])
    with pytest.raises(UsageError, match="no length configurations"):
        model.run(feeds, budget_ms=5.0)   # compiled without a search
    with pytest.raises(UsageError, match="budget_ms must be > 0"):
        model.run(feeds, budget_ms=-1)


# -- the length search (real MiniLM, real sentences, small budgets) -----------------------------


def _tokenizer() -> str:
    from lamina.zoo import minilm_tokenizer_dir

    return str(minilm_tokenizer_dir())


@pytest.fixture(scope="module")
def staged_minilm(minilm_ts17: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    from lamina.compiler.driver import api

    out = tmp_path_factory.mktemp("staged") / "minilm.lamina"
    api.compile(minilm_ts17, out, buckets=[(1, 32)], staged=[64, 128, 256], threads=2)
    return out


@pytest.mark.slow
def test_length_search_honours_max_loss_on_held_out_sentences(staged_minilm: Path,
                                                               tmp_path: Path) -> None:
    import shutil

    import lamina
    from lamina.compiler.driver import length

    art = tmp_path / "a.lamina"
    shutil.copytree(staged_minilm, art)
    corpus = Path(__file__).resolve().parents[3] / "data" / "corpus" / "calibration.txt"
    cfg = length.LengthSearchConfig(str(corpus), _tokenizer(), max_loss=0.3, limit=150,
                                    grid=(1.0, 0.8, 0.6, 0.4))
    model = lamina.load(art, threads=2)
    result = length.search(model, cfg)
    assert result.heldout_sentences == 50 and result.search_sentences == 100
    assert result.points[0].keep == [1.0] * 6 and result.points[0].heldout_agreement == 1.0
    assert 1 - result.chosen.heldout_agreement <= 0.3
    costs = [p.cost for p in result.points]
    assert costs == sorted(costs, reverse=True)
    configs = length.apply(art, result)
    assert all(1 - c["agreement"] <= 0.3 for c in configs["configs"])
    reloaded = lamina.load(art, threads=2)
    names = [c.name for c in reloaded.length_configs]
    assert configs["default"] in names
    # the default runs the chosen keep ratios; a huge budget runs the most accurate
    from lamina.compiler.frontend.text import tokenize

    feeds = tokenize(["A short sentence.", "Another, somewhat longer sentence about tokens."],
                     _tokenizer(), [i.name for i in reloaded.inputs])
    reloaded.run(feeds)
    assert reloaded.last_config == configs["default"]
    reloaded.run(feeds, budget_ms=1e6)
    assert reloaded.last_config == "c0"
    depth = reloaded.last_depth
    assert depth is not None and (depth[feeds["attention_mask"] == 0] == 0).all()
    assert (depth[feeds["attention_mask"] != 0] == 6).all()  # c0 keeps every token


@pytest.mark.slow
def test_tune_length_cli_writes_plot_report_and_bad_input_is_one_line(
        staged_minilm: Path, tmp_path: Path, tiny_bert: Path) -> None:
    import shutil

    from lamina.compiler.driver.cli import main

    art = tmp_path / "a.lamina"
    shutil.copytree(staged_minilm, art)
    corpus = tmp_path / "corpus.txt"
    src = Path(__file__).resolve().parents[3] / "data" / "corpus" / "calibration.txt"
    corpus.write_text("\n".join(src.read_text().splitlines()[:90]) + "\n")
    plot, report = tmp_path / "pareto.png", tmp_path / "r.json"
    assert main(["tune-length", str(art), "--calibration", str(corpus), "--tokenizer",
                 _tokenizer(), "--max-loss", "0.5", "--plot", str(plot), "--report",
                 str(report), "--threads", "2"]) == 0
    assert plot.stat().st_size > 10_000
    import json

    data = json.loads(report.read_text())
    assert data["max_loss"] == 0.5 and data["points"][0]["keep"] == [1.0] * 6

    small = tmp_path / "small.txt"
    small.write_text("one sentence.\nanother one.\n")
    _one_clear_line(lamina("tune-length", str(art), "--calibration", str(small), "--tokenizer",
                           _tokenizer()), "too few", "small.txt")
    _one_clear_line(lamina("tune-length", str(art), "--calibration", str(corpus),
                           "--tokenizer", _tokenizer(), "--max-loss", "1.5"), "--max-loss")
    _one_clear_line(lamina("compile", str(tiny_bert), "-o", str(tmp_path / "x.lamina"),
                           "--prune-tokens", "--max-loss", "0"), "--max-loss")
    assert not (tmp_path / "x.lamina").exists()


@pytest.mark.slow
def test_compile_prune_tokens_then_run_with_a_budget(minilm_ts17: Path, tmp_path: Path) -> None:
    import json

    from lamina.compiler.driver.cli import main

    corpus = tmp_path / "corpus.txt"
    src = Path(__file__).resolve().parents[3] / "data" / "corpus" / "calibration.txt"
    corpus.write_text("\n".join(src.read_text().splitlines()[:90]) + "\n")
    art = tmp_path / "p.lamina"
    assert main(["compile", str(minilm_ts17), "-o", str(art), "--buckets", "1x32", "--packed",
                 "64,128,256", "--threads", "2", "--prune-tokens", "--max-loss", "0.5",
                 "--calibration", str(corpus), "--tokenizer", _tokenizer()]) == 0
    manifest = json.loads((art / "manifest.json").read_text())
    lc = manifest["length_configs"]
    assert lc["max_loss"] == 0.5 and lc["default"] in [c["name"] for c in lc["configs"]]
    assert manifest["packed"] and manifest["staged"]["layers"] == 6
    proc = lamina("run", str(art), "--text", "Budgets pick a length configuration.",
                  "--tokenizer", _tokenizer(), "--budget-ms", "0.001")
    assert proc.returncode == 0, proc.stderr
    assert "ran as: pruned" in proc.stdout and "below every configuration" in proc.stdout


@pytest.mark.slow
def test_tune_length_on_an_artifact_without_staged_functions_is_one_line(
        tiny_bert: Path, tmp_path: Path) -> None:
    from lamina.compiler.driver import api

    art = api.compile(tiny_bert, tmp_path / "plain.lamina", buckets=[(1, 16)], threads=1)
    corpus = tmp_path / "c.txt"
    src = Path(__file__).resolve().parents[3] / "data" / "corpus" / "calibration.txt"
    corpus.write_text("\n".join(src.read_text().splitlines()[:90]) + "\n")
    _one_clear_line(lamina("tune-length", str(art), "--calibration", str(corpus), "--tokenizer",
                           _tokenizer()), "--prune-tokens")
