"""The scaling family: each variant against a float64 transcription of its formula written here (not calling
the library), every variant on every backend against the NumPy reference, the presets, and validation."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pytest
from conftest import ULP32, assert_close, input_array, to_numpy
from hypothesis import given
from hypothesis import strategies as st
from reference import tables_from_inv_freq

import ropeflow
from ropeflow import RotaryEmbedding
from ropeflow.scaling import compute_frequencies, parse_scaling


# ------------------------------------------------------------------ float64 transcriptions of the formulas
def t_default(dim, base):
    return 1.0 / base ** (np.arange(0, dim, 2, dtype=np.float64) / dim)


def t_mscale(s, m=1.0):
    return 1.0 if s <= 1 else 0.1 * m * math.log(s) + 1.0


def t_yarn_range(dim, base, original, beta_fast, beta_slow, truncate):
    """The dimensions ``(low, high)`` between which YaRN's ramp runs."""
    def corr(rot):
        return dim * math.log(original / (rot * 2 * math.pi)) / (2 * math.log(base))

    low, high = corr(beta_fast), corr(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    low, high = max(low, 0), min(high, dim - 1)
    if low == high:
        high += 0.001
    return low, high


def t_yarn(dim, base, factor, original, beta_fast=32.0, beta_slow=1.0, mscale=1.0, mscale_all_dim=0.0,
           truncate=True):
    low, high = t_yarn_range(dim, base, original, beta_fast, beta_slow, truncate)
    ramp = np.clip((np.arange(dim // 2) - low) / (high - low), 0, 1)
    extrapolation_weight = 1 - ramp
    pos = base ** (np.arange(0, dim, 2) / dim)
    inv = (1 / (factor * pos)) * (1 - extrapolation_weight) + (1 / pos) * extrapolation_weight
    return inv, t_mscale(factor, mscale) / t_mscale(factor, mscale_all_dim)


def t_llama3(dim, base, factor, low_ff, high_ff, old):
    inv = t_default(dim, base)
    out = np.empty_like(inv)
    for j, f in enumerate(inv):
        wavelen = 2 * math.pi / f
        if wavelen < old / high_ff:
            out[j] = f
        elif wavelen > old / low_ff:
            out[j] = f / factor
        else:
            smooth = (old / wavelen - low_ff) / (high_ff - low_ff)
            out[j] = (1 - smooth) * f / factor + smooth * f
    return out


def t_longrope(dim, base, factors, factor, original):
    scale = 1.0 if factor <= 1 else math.sqrt(1 + math.log(factor) / math.log(original))
    return 1.0 / (np.asarray(factors, np.float64) * base ** (np.arange(0, dim, 2) / dim)), scale


def _rel_ulps32(ours, truth):
    """Difference in float32 ulps of the truth."""
    return np.max(np.abs(ours.astype(np.float64) - truth) / np.spacing(np.abs(truth).astype(np.float32)))


def _ulp_bound(base):
    """Reference precision rounds the exponent 2j/dim to float32 first; base ** e then carries a relative error
    up to ln(base) * e * 2**-24, i.e. ln(base) / 2 float32 ulps, plus ~2 ulps for the remaining roundings."""
    return 3 + math.log(base) / 2


def _check(freqs_ref, freqs_exact, truth_inv, truth_scale, base, extra_ulps=0.0):
    assert freqs_exact.inv_freq.dtype == np.float64 and freqs_ref.inv_freq.dtype == np.float32
    np.testing.assert_allclose(freqs_exact.inv_freq, truth_inv, rtol=1e-13, atol=0)
    assert _rel_ulps32(freqs_ref.inv_freq, truth_inv) <= _ulp_bound(base) + extra_ulps
    assert freqs_ref.attention_scaling == pytest.approx(truth_scale, rel=1e-15)
    assert freqs_exact.attention_scaling == pytest.approx(truth_scale, rel=1e-15)


def _both(cfg, dim, base, max_pos, seq_len=None):
    c = parse_scaling(cfg)
    return (compute_frequencies(c, dim, base, max_pos, "reference", seq_len),
            compute_frequencies(c, dim, base, max_pos, "exact", seq_len))


# ---------------------------------------------------------------------------------------- per variant
@given(dim=st.integers(2, 128).map(lambda h: 2 * h), base=st.floats(2.0, 1e7), factor=st.floats(1.0, 64.0))
def test_linear_divides_inv_freq(dim, base, factor):
    # transformers' recipe: inv_freq / factor (one more float32 rounding, and the factor rounded to float32)
    ref, exact = _both({"rope_type": "linear", "factor": factor}, dim, base, 4096)
    _check(ref, exact, t_default(dim, base) / factor, 1.0, base, extra_ulps=2)
    assert ref.position_divisor == exact.position_divisor == 1.0
    plain, _ = _both(None, dim, base, 4096)
    np.testing.assert_array_equal(ref.inv_freq, plain.inv_freq / np.float32(factor))


def test_linear_tables_divide_positions():
    rope = RotaryEmbedding(16, 4096, 10000.0, scaling={"type": "linear", "factor": 4.0}, precision="exact")
    cos, _ = rope.cos_sin(100, "float64")
    p = np.arange(100)[:, None] / 4.0
    np.testing.assert_allclose(np.asarray(cos)[:, :8], np.cos(p * t_default(16, 10000.0)), atol=1e-14)


@given(dim=st.integers(2, 128).map(lambda h: 2 * h), base=st.floats(2.0, 1e7), factor=st.floats(1.0, 64.0))
def test_ntk_static(dim, base, factor):
    ref, exact = _both({"rope_type": "ntk", "factor": factor}, dim, base, 4096)
    _check(ref, exact, t_default(dim, base * factor ** (dim / (dim - 2))), 1.0, base * factor ** (dim / (dim - 2)))


@given(dim=st.integers(2, 128).map(lambda h: 2 * h), base=st.floats(100.0, 1e7), factor=st.floats(1.0, 64.0),
       original=st.integers(256, 65536), beta_slow=st.floats(0.25, 4.0), beta_extra=st.floats(0.0, 64.0),
       mscale=st.floats(0.0, 2.0), mscale_all_dim=st.floats(0.0, 2.0), truncate=st.booleans())
def test_yarn(dim, base, factor, original, beta_slow, beta_extra, mscale, mscale_all_dim, truncate):
    cfg = {"rope_type": "yarn", "factor": factor, "original_max_position_embeddings": original,
           "beta_fast": beta_slow + beta_extra, "beta_slow": beta_slow, "mscale": mscale,
           "mscale_all_dim": mscale_all_dim, "truncate": truncate}
    ref, exact = _both(cfg, dim, base, original * 4)
    inv, scale = t_yarn(dim, base, factor, original, beta_slow + beta_extra, beta_slow, mscale, mscale_all_dim,
                        truncate)
    # the float32 ramp (j - low) / (high - low) errs by about one ulp of each operation, and by the rounding
    # of low to float32 (up to 2**-24 |low|) divided by the ramp's width: a narrow ramp far from dimension 0
    # (beta_fast close to beta_slow) amplifies it. Both are amplified again by (extrapolated - interpolated)
    # / inv_freq <= factor - 1.
    low, high = t_yarn_range(dim, base, original, beta_slow + beta_extra, beta_slow, truncate)
    # float(...): NumPy 2 compares a float32 with a Python float in float32, where they are always equal
    low_rounding = abs(low) / abs(high - low) if float(np.float32(low)) != low else 0.0  # truncated: exact
    _check(ref, exact, inv, scale, base, extra_ulps=4 * factor + (factor - 1) * low_rounding)


def test_yarn_attention_factor_overrides_mscale():
    ref, _ = _both({"rope_type": "yarn", "factor": 8.0, "attention_factor": 1.25, "mscale": 2.0}, 64, 1e4, 4096)
    assert ref.attention_scaling == 1.25
    default, _ = _both({"rope_type": "yarn", "factor": 8.0}, 64, 1e4, 4096)
    assert default.attention_scaling == pytest.approx(0.1 * math.log(8.0) + 1)


@given(base=st.floats(1e4, 1e7), factor=st.floats(1.0, 32.0), low=st.floats(0.5, 2.0), gap=st.floats(0.5, 8.0),
       old=st.integers(1024, 65536), dim=st.sampled_from([32, 64, 128, 256]))
def test_llama3(base, factor, low, gap, old, dim):
    cfg = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": low + gap,
           "original_max_position_embeddings": old}
    ref, exact = _both(cfg, dim, base, old * 8)
    # in the smooth band the float32 weight smooth = (old / wavelen - low) / gap carries a few ulps of
    # (low + gap) / gap, and the output's sensitivity to it, relative to the output, is below factor
    _check(ref, exact, t_llama3(dim, base, factor, low, low + gap, old), 1.0, base,
           extra_ulps=2 * factor * (low + gap) / gap)


def test_longrope_short_and_long_factors():
    dim, base, original, max_pos = 16, 10000.0, 4096, 131072
    rng = np.random.default_rng(0)
    short = list(1 + rng.random(dim // 2))
    long = list(1 + 10 * rng.random(dim // 2))
    cfg = {"rope_type": "longrope", "short_factor": short, "long_factor": long,
           "original_max_position_embeddings": original}
    for seq_len, factors in [(None, short), (original, short), (original + 1, long)]:
        ref, exact = _both(cfg, dim, base, max_pos, seq_len)
        _check(ref, exact, *t_longrope(dim, base, factors, max_pos / original, original), base)
    rope = RotaryEmbedding(dim, max_pos, base, scaling=cfg, precision="exact")
    c_short, _ = rope.cos_sin(100, "float64")
    c_long, _ = rope.cos_sin(original + 50, "float64")
    inv_s, scale = t_longrope(dim, base, short, max_pos / original, original)
    inv_l, _ = t_longrope(dim, base, long, max_pos / original, original)
    p = np.arange(100)[:, None]
    np.testing.assert_allclose(np.asarray(c_short)[:, : dim // 2], scale * np.cos(p * inv_s), atol=1e-13)
    np.testing.assert_allclose(np.asarray(c_long)[:100, : dim // 2], scale * np.cos(p * inv_l), atol=1e-13)


# ----------------------------------------------------------------------- every variant on every backend
VARIANTS = [
    None,
    {"rope_type": "linear", "factor": 4.0},
    {"rope_type": "ntk", "factor": 4.0},
    {"rope_type": "dynamic", "factor": 2.0},
    {"rope_type": "yarn", "factor": 40.0, "original_max_position_embeddings": 4096, "beta_fast": 32,
     "beta_slow": 1, "mscale": 1.0, "mscale_all_dim": 1.0},
    {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 512},
    {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
     "original_max_position_embeddings": 512},
    {"rope_type": "longrope", "short_factor": [1.0, 1.5, 2.0, 3.0] * 8, "long_factor": [2.0, 4.0, 8.0, 16.0] * 8,
     "original_max_position_embeddings": 512},
]


@pytest.mark.parametrize("cfg", VARIANTS, ids=lambda c: "default" if c is None else c["rope_type"])
@given(seq_len=st.integers(1, 3000), precision=st.sampled_from(["reference", "exact"]))
def test_every_variant_on_every_backend(backend, cfg, seq_len, precision):
    rope = RotaryEmbedding(64, 2048, 10000.0, scaling=cfg, backend=backend, precision=precision)
    ref = RotaryEmbedding(64, 2048, 10000.0, scaling=cfg, backend="numpy", precision=precision)
    cos, sin = rope(input_array(backend, (1, seq_len, 64), np.float32))
    rcos, rsin = ref.cos_sin(seq_len, "float32")
    tol = 4 * ULP32 * max(1.0, rope.attention_scaling)
    assert_close(to_numpy(cos), rcos, atol=tol)
    assert_close(to_numpy(sin), rsin, atol=tol)
    # and against the naive loop over the same frequencies, for the last rows
    if precision == "reference":
        ncos, _ = tables_from_inv_freq(rope.inv_freq, max(0, seq_len - 2), seq_len, rope.attention_scaling,
                                       rope._current.position_divisor)
        assert_close(to_numpy(cos[-ncos.shape[0]:]), ncos, atol=tol)
    c = to_numpy(cos).astype(np.float64)
    s = to_numpy(sin).astype(np.float64)
    assert np.abs(c**2 + s**2 - rope.attention_scaling**2).max() <= 8 * ULP32 * max(1.0, rope.attention_scaling**2)


# ------------------------------------------------------------------------------------------- presets
def test_preset_names():
    names = ropeflow.presets.names()
    assert len(names) >= 15
    for required in ["deepseek-v3", "kimi-k2", "kimi-k2-0905", "llama-3.1-8b", "qwen2.5-7b", "llama-3.2-1b",
                     "llama-4-scout-17b-16e", "qwen3-8b", "qwen2.5-vl-7b-instruct", "phi-3.5-mini-instruct",
                     "phi-4-mini-instruct", "gpt-oss-20b", "gemma-3-4b-it", "mistral-nemo-instruct-2407",
                     "deepseek-v2-lite"]:
        assert required in names
    for name in names:
        assert "huggingface" in ropeflow.presets.load(name)["_source"], name
        for layer_type in ropeflow.layer_types(ropeflow.presets.load(name)):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", UserWarning)  # Llama 4 Scout's llama3 low == high
                rope = RotaryEmbedding.from_preset(name, layer_type=layer_type)
            assert rope.cos_sin(8)[0].shape == (8, rope.dim)


@pytest.mark.parametrize("name,dim,base,factor,original,beta", [
    ("deepseek-v3", 64, 10000.0, 40, 4096, (32, 1)),
    ("kimi-k2", 64, 50000.0, 32, 4096, (1, 1)),
    ("kimi-k2-0905", 64, 50000.0, 64, 4096, (1, 1)),
])
def test_yarn_presets(name, dim, base, factor, original, beta):
    rope = RotaryEmbedding.from_preset(name)
    assert (rope.dim, rope.base) == (dim, base)
    assert rope.attention_scaling == 1.0  # mscale == mscale_all_dim == 1: tables not scaled
    inv, _ = t_yarn(dim, base, factor, original, *beta, 1.0, 1.0)
    assert _rel_ulps32(rope.inv_freq, inv) <= _ulp_bound(base)
    exact = RotaryEmbedding.from_preset(name, precision="exact")
    np.testing.assert_allclose(exact.inv_freq, inv, rtol=1e-13)


def test_deepseek_v3_softmax_scale():
    multiplier = (0.1 * math.log(40) + 1) ** 2
    assert ropeflow.yarn_softmax_scale(192, 40, 1.0) == pytest.approx(192**-0.5 * multiplier, rel=1e-15)
    assert ropeflow.softmax_scale(ropeflow.presets.load("deepseek-v3")) == pytest.approx(192**-0.5 * multiplier)
    assert ropeflow.yarn_softmax_scale(192, 40, 0.0) == 192**-0.5
    rope = RotaryEmbedding.from_preset("deepseek-v3")
    assert rope.max_position_embeddings == 163840
    cos, sin = rope.cos_sin(163840)
    assert cos.shape == (163840, 64)


def test_llama31_preset():
    rope = RotaryEmbedding.from_preset("llama-3.1-8b")
    assert (rope.dim, rope.base, rope.max_position_embeddings) == (128, 500000.0, 131072)
    assert _rel_ulps32(rope.inv_freq, t_llama3(128, 500000.0, 8.0, 1.0, 4.0, 8192)) <= _ulp_bound(500000.0)
    assert rope.attention_scaling == 1.0


def test_qwen_preset_is_standard():
    rope = RotaryEmbedding.from_preset("qwen2.5-7b")
    assert (rope.dim, rope.base, rope.max_position_embeddings, rope.scaling) == (128, 1e6, 131072, None)
    np.testing.assert_array_equal(rope.inv_freq, compute_frequencies(None, 128, 1e6, 1, "reference").inv_freq)


def test_from_hf_config_forms(tmp_path):
    cfg = ropeflow.presets.load("llama-3.1-8b")
    path = tmp_path / "config.json"
    path.write_text(json.dumps(cfg))
    a = RotaryEmbedding.from_hf_config(cfg)
    b = RotaryEmbedding.from_hf_config(str(path))
    c = RotaryEmbedding.from_hf_config(tmp_path)

    class Obj:
        pass

    obj = Obj()
    obj.__dict__.update(cfg)
    d = RotaryEmbedding.from_hf_config(obj, precision="exact", backend="numpy")
    assert a.scaling == b.scaling == c.scaling == d.scaling
    np.testing.assert_array_equal(a.inv_freq, b.inv_freq)
    assert d.precision == "exact" and d.backend == "numpy"
    # newer transformers: rope_parameters holding rope_theta; partial rotary factor; explicit head_dim
    new = {"hidden_size": 2048, "num_attention_heads": 16, "max_position_embeddings": 8192, "head_dim": 256,
           "partial_rotary_factor": 0.25, "rope_parameters": {"rope_type": "default", "rope_theta": 25000.0}}
    e = RotaryEmbedding.from_hf_config(new)
    assert (e.dim, e.base, e.scaling) == (64, 25000.0, None)
    f = RotaryEmbedding.from_hf_config({"hidden_size": 512, "num_attention_heads": 8, "max_position_embeddings": 64})
    assert (f.dim, f.base) == (64, 10000.0)


def test_from_hf_config_errors(tmp_path):
    with pytest.raises(ValueError, match="missing required field 'max_position_embeddings'"):
        RotaryEmbedding.from_hf_config({"hidden_size": 64, "num_attention_heads": 1})
    with pytest.raises(TypeError, match="config: expected a dict"):
        RotaryEmbedding.from_hf_config(42)
    with pytest.raises(ValueError, match="unknown preset 'gpt-9'"):
        RotaryEmbedding.from_preset("gpt-9")


# ---------------------------------------------------------------------------------------- validation
@pytest.mark.parametrize("cfg,exc,match", [
    ({"rope_type": "yarn"}, ValueError, r"rope_type 'yarn' needs key\(s\) \['factor'\]"),
    ({"rope_type": "llama3", "factor": 8.0}, ValueError,
     r"needs key\(s\) \['low_freq_factor', 'high_freq_factor', 'original_max_position_embeddings'\]"),
    ({"rope_type": "longrope", "short_factor": [1.0]}, ValueError, r"needs key\(s\) \['long_factor'\]"),
    ({"rope_type": "linear", "factor": 0.5}, ValueError, r"factor.*>= 1.0, got 0.5"),
    ({"rope_type": "yarn", "factor": 4.0, "beta_fast": 1, "beta_slow": 32}, ValueError,
     r"beta_fast'\] \(1.0\) must be >= scaling\['beta_slow'\] \(32.0\)"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 5.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": 8192}, ValueError, r"low_freq_factor'\] \(5.0\) must be <="),
    ({"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 0}, ValueError,
     r"original_max_position_embeddings'\]: must be > 0, got 0"),
    ({"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
      "original_max_position_embeddings": -5}, ValueError, r"original_max_position_embeddings'\]: must be > 0"),
    ({"rope_type": "yarn", "factor": float("nan")}, ValueError, r"factor.*finite, got nan"),
    ({"rope_type": "yarn", "factor": 4.0, "mscale": float("nan")}, ValueError, r"mscale'\]: must be finite"),
    ({"rope_type": "longrope", "short_factor": [1.0, float("nan")], "long_factor": [1.0, 1.0]}, ValueError,
     r"short_factor'\]\[1\]: must be finite"),
    ({"rope_type": "longrope", "short_factor": [1.0] * 3, "long_factor": [1.0] * 32}, ValueError,
     r"short_factor'\]: needs dim // 2 = 32 values .* got 3"),
    ({"rope_type": "yarn", "type": "linear", "factor": 2.0}, ValueError, r"'rope_type' \('yarn'\) and 'type'"),
])
def test_scaling_validation(cfg, exc, match):
    with pytest.raises(exc, match=match):
        RotaryEmbedding(64, 4096, scaling=cfg)


def test_equal_betas_are_valid():
    RotaryEmbedding.from_preset("kimi-k2")  # beta_fast == beta_slow == 1


def test_unknown_keys_warn_not_drop_silently():
    with pytest.warns(UserWarning, match=r"unknown key\(s\) \['colour'\] for rope_type 'linear'"):
        RotaryEmbedding(64, scaling={"rope_type": "linear", "factor": 2.0, "colour": "blue"})
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RotaryEmbedding(64, scaling={"type": "linear", "factor": 2.0, "rope_theta": 1e4})


def test_typed_configs_are_hashable_and_equivalent():
    typed = ropeflow.YarnScaling(factor=40.0, original_max_position_embeddings=4096, mscale=1.0, mscale_all_dim=1.0)
    assert hash(typed) == hash(ropeflow.YarnScaling(40.0, 4096, mscale=1.0, mscale_all_dim=1.0))
    a = RotaryEmbedding(64, 163840, scaling=typed)
    b = RotaryEmbedding.from_preset("deepseek-v3")
    np.testing.assert_array_equal(a.inv_freq, b.inv_freq)
    assert np.shares_memory(a.cos_sin(16)[0], b.cos_sin(16)[0])
    assert set(ropeflow.rope_types()) == {"default", "linear", "ntk", "dynamic", "yarn", "llama3", "longrope"}


@pytest.mark.parametrize("kwargs,name", [
    (dict(base=1e39), "base"),
    (dict(scaling={"rope_type": "linear", "factor": 1e39}), r"scaling\['factor'\]"),
    (dict(scaling={"rope_type": "yarn", "factor": 1e300}), r"scaling\['factor'\]"),
    (dict(scaling={"rope_type": "ntk", "factor": 1e36}), r"scaling\['factor'\] \(ntk"),
    (dict(scaling={"rope_type": "longrope", "short_factor": [1e39] * 32, "long_factor": [1.0] * 32,
                   "original_max_position_embeddings": 1024}), r"scaling\['short_factor'\]"),
])
def test_reference_precision_refuses_numbers_past_float32(kwargs, name):
    """Reference precision casts the base and the scaling numbers to float32, as the PyTorch reference does: a
    value past float32's range became inf and every frequency 0 (one table for every position), with a NumPy
    overflow warning at most. Refused by name; exact precision (float64) takes them."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no NumPy overflow warning on the way to the error
        with pytest.raises(ValueError, match=rf"^{name}.*reference precision computes in float32.*precision='exact'"):
            RotaryEmbedding(64, 4096, **kwargs)
    inv_freq = RotaryEmbedding(64, 4096, precision="exact", **kwargs).inv_freq
    assert np.all(np.isfinite(inv_freq)) and np.all(inv_freq > 0)


def test_float32_range_checks_what_reaches_float32_only():
    """YaRN's factor times the largest base power overflowed (9 of 32 frequencies 0 at factor 1e37) and dynamic
    NTK's grown base did when served (cos = 1 at every position); fields the reference keeps in Python floats
    (YaRN's betas) and values that round to float32's largest are fine."""
    with pytest.raises(ValueError, match=r"^scaling\['factor'\] \(yarn: factor \* base"):
        RotaryEmbedding(64, 4096, scaling={"rope_type": "yarn", "factor": 1e37})
    dynamic = RotaryEmbedding(64, 4096, scaling={"rope_type": "dynamic", "factor": 1e36})
    dynamic.cos_sin(4096)
    with pytest.raises(ValueError, match=r"^seq_len: dynamic NTK's base at seq_len=8192 is 1.45e\+41, past float32"):
        dynamic.cos_sin(8192)
    assert dynamic.max_seq_len_cached == 4096
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        RotaryEmbedding(64, 4096, scaling={"rope_type": "yarn", "factor": 2.0, "beta_fast": 1e39})
        inv_freq = RotaryEmbedding(64, 4096, scaling={"rope_type": "linear", "factor": 3.4028235e38}).inv_freq
        override = RotaryEmbedding(64, 4096, base=1e39, inv_freq=np.full(32, 0.5))  # the base is not used
        RotaryEmbedding(64, 4096, base=1e39, inv_freq=np.full(32, 0.5),
                        scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 8192})
    assert np.all(inv_freq > 0) and np.array_equal(override.inv_freq, np.full(32, 0.5, np.float32))
