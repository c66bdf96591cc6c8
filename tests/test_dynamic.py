"""Dynamic NTK (DESIGN 1.2): the base formula, the seed's example, and the three policies."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ULP32, assert_close, input_array, to_numpy
from hypothesis import given
from hypothesis import strategies as st
from reference import dynamic_base_f64, tables_from_inv_freq

import ropeflow
from ropeflow.scaling import dynamic_base, standard_inv_freq


@given(dim=st.integers(2, 128).map(lambda h: 2 * h), factor=st.floats(1.0, 64.0),
       max_pos=st.integers(1, 10**6), extra=st.integers(0, 10**6), base=st.floats(1.5, 1e7))
def test_dynamic_base_formula(dim, factor, max_pos, extra, base):
    seq_len = max_pos + extra
    got = dynamic_base(base, factor, seq_len, max_pos, dim)
    assert got == pytest.approx(dynamic_base_f64(base, factor, seq_len, max_pos, dim), rel=1e-13)


def _expected_inv_freq(dim, base, factor, length, max_pos):
    b = dynamic_base_f64(base, factor, length, max_pos, dim)
    # float64 transcription: 1 / b ** (2j / dim), compared within 2 float32 ulps
    return 1.0 / b ** (np.arange(0, dim, 2) / dim)


def test_seed_example_short_then_long(backend):
    """Seed lesson 4.3.3: dim 64, factor 2, L 2048; 1000 positions use the original frequencies, 3000 the
    adjusted ones."""
    rope = ropeflow.RotaryEmbedding(64, 2048, scaling={"type": "dynamic", "factor": 2.0}, backend=backend)
    cos_short, _ = rope(input_array(backend, (1, 8, 1000, 64), np.float32))
    np.testing.assert_allclose(rope.inv_freq, _expected_inv_freq(64, 10000.0, 2.0, 1000, 2048), rtol=2**-22)
    cos_long, sin_long = rope(input_array(backend, (1, 8, 3000, 64), np.float32))
    assert cos_long.shape == (3000, 64)
    expected = _expected_inv_freq(64, 10000.0, 2.0, 3000, 2048)
    np.testing.assert_allclose(rope.inv_freq, expected, rtol=2**-22)
    assert not np.allclose(rope.inv_freq, _expected_inv_freq(64, 10000.0, 2.0, 1000, 2048))
    ncos, nsin = tables_from_inv_freq(rope.inv_freq, 0, 3000)
    assert_close(to_numpy(cos_long), ncos, atol=4 * ULP32)
    assert_close(to_numpy(sin_long), nsin, atol=4 * ULP32)
    ncos_short, _ = tables_from_inv_freq(standard_inv_freq(64, 10000.0), 0, 1000)
    assert_close(to_numpy(cos_short), ncos_short, atol=4 * ULP32)


CALLS = [1000, 3000, 1000, 5000, 2500]
# The length whose dynamic base serves each call (None: the original frequencies).
EXPECTED = {
    "stateless": [None, 3000, None, 5000, 2500],
    "reference": [None, 3000, 3000, 5000, 5000],  # DeepSeek-V3: never shrinks, never restores inv_freq
    "hf": [None, 3000, None, 5000, 5000],  # transformers: grow; reset only below L
}
EXPECTED_CACHED = {"reference": [1000, 3000, 3000, 5000, 5000], "hf": [2048, 3000, 2048, 5000, 5000]}


@pytest.mark.parametrize("policy", ["stateless", "reference", "hf"])
def test_policies_on_a_call_sequence(backend, policy):
    rope = ropeflow.RotaryEmbedding(64, 2048, scaling={"rope_type": "dynamic", "factor": 2.0}, backend=backend,
                                    dynamic_policy=policy)
    for i, (n, source) in enumerate(zip(CALLS, EXPECTED[policy], strict=True)):
        cos, sin = rope(input_array(backend, (1, 2, n, 64), np.float32))
        inv = standard_inv_freq(64, dynamic_base_f64(10000.0, 2.0, source or n, 2048, 64))
        if source is None:
            inv = standard_inv_freq(64, 10000.0)
        np.testing.assert_array_equal(rope.inv_freq, inv)
        ncos, nsin = tables_from_inv_freq(inv, n - 3, n)
        assert_close(to_numpy(cos[-3:]), ncos, atol=4 * ULP32)
        assert_close(to_numpy(sin[-3:]), nsin, atol=4 * ULP32)
        assert cos.shape == (n, 64)
        if policy in EXPECTED_CACHED:
            assert rope.max_seq_len_cached == EXPECTED_CACHED[policy][i]


def test_stateless_depends_only_on_seq_len():
    a = ropeflow.RotaryEmbedding(32, 100, scaling={"rope_type": "dynamic", "factor": 4.0})
    b = ropeflow.RotaryEmbedding(32, 100, scaling={"rope_type": "dynamic", "factor": 4.0})
    for n in (500, 150, 90):
        a.cos_sin(n)
    ca, _ = a.cos_sin(300)
    cb, _ = b.cos_sin(300)
    np.testing.assert_array_equal(ca, cb)


def test_exact_precision_dynamic_matches_float64_formula():
    rope = ropeflow.RotaryEmbedding(64, 2048, scaling={"rope_type": "dynamic", "factor": 2.0}, precision="exact")
    cos, _ = rope.cos_sin(4000, "float64")
    inv = _expected_inv_freq(64, 10000.0, 2.0, 4000, 2048)
    truth = np.cos(np.arange(3990, 4000, dtype=np.float64)[:, None] * inv)
    np.testing.assert_allclose(np.asarray(cos)[3990:, :32], truth, atol=1e-12, rtol=0)
