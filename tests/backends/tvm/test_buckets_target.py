"""Bucket specs and selection (no TVM), and target resolution (ISA-neutral)."""

from __future__ import annotations

import pytest

from lamina.backends.tvm.buckets import default_buckets, parse_buckets, plan_request
from lamina.compiler.errors import UsageError


def test_parse_buckets():
    assert parse_buckets("4x64, 1x128,1x128") == [(1, 128), (4, 64)]
    assert parse_buckets([(2, 8)]) == [(2, 8)]


@pytest.mark.parametrize("bad", ["128", "1x", "ax4", "0x16", ""])
def test_parse_buckets_rejects(bad):
    with pytest.raises(UsageError, match="bucket|no buckets"):
        parse_buckets(bad)


def test_default_buckets_capped_by_max_positions():
    d = default_buckets(512)
    assert (1, 128) in d and (1, 512) in d and max(s for _, s in d) == 512
    small = default_buckets(100)
    assert max(s for _, s in small) == 100 and (1, 64) in small


def test_plan_request_splits_batches_when_cheaper():
    bs = [(1, 16), (1, 128), (4, 128)]
    assert plan_request(bs, 3, 7) == ((1, 16), 3)
    assert plan_request(bs, 4, 100) == ((4, 128), 1)
    assert plan_request(bs, 9, 100) == ((1, 128), 9)  # 1152 tokens, not 1536
    assert plan_request(bs, 9, 100, split_batch=False) is None
    assert plan_request(bs, 1, 129) is None


def test_target_presets_and_auto():
    from lamina.backends.tvm.target import ISA_LEVELS, host_features, resolve_target

    auto = resolve_target("auto", threads=3)
    assert auto.num_cores == 3
    assert set(auto.required_features) <= host_features()
    # auto picks the highest level the host supports, x86-avx512-bf16 only for bf16 and INT8
    for lvl in ISA_LEVELS.values():
        if set(lvl.features) <= host_features() and lvl.name != "x86-avx512-bf16":
            assert len(auto.required_features) >= len(lvl.features)
    assert auto.isa_level != "x86-avx512-bf16"
    bf16 = resolve_target("auto", threads=3, precision="bf16")
    if {"avx512bf16", "avx512vnni"} <= host_features():
        assert "avx512bf16" in bf16.required_features and "+avx512bf16" in bf16.mattr
        assert bf16.isa_level in ("x86-avx512-bf16", "x86-avx512-amx")
    else:
        assert bf16 == auto
    # An INT8 model's attention runs the BF16 kernel where the host has it.
    assert resolve_target("auto", threads=3, int8=True) == bf16
    preset = resolve_target("x86-avx512-bf16")
    assert preset.mcpu == "x86-64-v4" and preset.mattr == ("+avx512vnni", "+avx512bf16")
    avx2 = resolve_target("x86-avx2")
    assert avx2.mcpu == "x86-64-v3" and avx2.isa_level == "x86-avx2"
    vnni = resolve_target("x86-avx512-vnni")
    assert "avx512vnni" in vnni.required_features and "+avx512vnni" in vnni.mattr
    raw = resolve_target('{"kind": "llvm", "mcpu": "znver3"}')
    assert raw.isa_level == "x86-avx2" and raw.mcpu == "znver3"
    assert "mcpu" in raw.to_manifest() and raw.to_manifest()["isa_level"] == "x86-avx2"


def test_unknown_precision_is_refused():
    from lamina.backends.tvm.target import resolve_target
    from lamina.compiler.errors import BackendError

    with pytest.raises(BackendError, match="unknown precision 'fp16'"):
        resolve_target("auto", precision="fp16")


@pytest.mark.parametrize("bad,match", [("x86-avx51", "did you mean x86-avx512"),
                                       ('{"kind": "llvm", "mcpu": "native"}', "native"),
                                       ('{"kind": "cuda"}', "not supported")])
def test_target_rejects(bad, match):
    from lamina.backends.tvm.target import resolve_target
    from lamina.compiler.errors import BackendError

    with pytest.raises(BackendError, match=match):
        resolve_target(bad)


def test_narrowed_requires_only_the_features_the_code_uses():
    import tvm  # noqa: F401 - a hard dependency: a broken install fails

    from lamina.backends.tvm.target import resolve_target

    vnni = resolve_target("x86-avx512-vnni", threads=2)
    fp32 = vnni.narrowed(set())  # no kernel used VNNI
    assert fp32.mattr == () and "avx512vnni" not in fp32.required_features
    assert fp32.isa_level == "x86-avx512" and "avx512f" in fp32.required_features
    int8 = vnni.narrowed({"avx512vnni"})
    assert int8.mattr == ("+avx512vnni",) and int8.isa_level == "x86-avx512-vnni"
    amx = resolve_target("x86-avx512-amx", threads=2).narrowed({"avx512vnni"})
    assert amx.isa_level == "x86-avx512-vnni" and "amx-int8" not in amx.required_features
    # BF16 code without VNNI: the AVX-512 level plus the one feature it uses.
    bf16 = resolve_target("x86-avx512-bf16", threads=2).narrowed({"avx512bf16"})
    assert bf16.mattr == ("+avx512bf16",) and bf16.isa_level == "x86-avx512+avx512bf16"
    assert "avx512bf16" in bf16.required_features and "avx512vnni" not in bf16.required_features
