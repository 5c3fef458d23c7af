"""Sparsity detection (``_analysis``), magnitude pruning (``_prune``) and their CLI verbs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from lamina.passes.sparsity._analysis import analyze_weight
from lamina.passes.sparsity._prune import prune_weight

RNG = np.random.default_rng(0)


def lamina(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "lamina.compiler.driver.cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONHASHSEED": "0"},
    )


@pytest.mark.parametrize(
    "pattern", ["unstructured", "4x1", "1x4", "8x1", "1x8", "16x1", "1x16", "2:4"]
)
def test_detects_the_pattern_it_was_not_told(pattern: str):
    w = RNG.normal(size=(64, 96)).astype(np.float32)
    sparsity = 0.5 if pattern == "2:4" else 0.8
    pruned = prune_weight(w, sparsity, pattern)
    info = analyze_weight(pruned)
    assert info.pattern == pattern
    assert abs(info.zeros - sparsity) < 0.02


def test_block_fractions_follow_the_out_in_orientation():
    # "4x1" = 4 consecutive outputs (columns of W[K, N]) of one input row.
    w = np.ones((8, 8), np.float32)
    w[0, 0:4] = 0
    info = analyze_weight(w)
    assert info.blocks["4x1"] == pytest.approx(1 / 16)
    assert info.blocks["1x4"] == 0.0


def test_dense_zero_rows_and_columns():
    w = RNG.normal(size=(32, 16)).astype(np.float32)
    assert analyze_weight(w).pattern == "dense"
    w[:, :8] = 0
    info = analyze_weight(w)
    assert (info.zero_outputs, info.zero_inputs, info.pattern) == (8, 0, "outputs")
    w = RNG.normal(size=(32, 16)).astype(np.float32)
    w[:16] = 0
    assert analyze_weight(w).pattern == "inputs"


def test_prune_and_inspect_cli(tiny_bert: Path, tmp_path: Path):
    out = tmp_path / "p.onnx"
    proc = lamina(
        "prune", str(tiny_bert), "-o", str(out), "--sparsity", "0.5", "--pattern", "heads,neurons"
    )
    assert proc.returncode == 0, proc.stderr
    info = json.loads(lamina("inspect", "--json", str(out)).stdout)["sparsity"]
    attn = [lay for lay in info["layers"] if lay["kind"] == "attention"]
    ffn = [lay for lay in info["layers"] if lay["kind"] == "ffn"]
    assert attn and all(lay["zero_heads"] == lay["heads"] // 2 for lay in attn)
    assert ffn and all(lay["zero_neurons"] == lay["neurons"] // 2 for lay in ffn)
    proc = lamina("prune", str(tiny_bert), "-o", str(out), "--sparsity", "0.8", "--pattern", "4x1")
    assert proc.returncode == 0, proc.stderr
    text = lamina("inspect", str(out)).stdout
    assert "patterns: 4x1" in text
    bad = lamina("prune", str(tiny_bert), "-o", str(out), "--sparsity", "0.5", "--pattern", "3:7")
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "--pattern" in bad.stderr
