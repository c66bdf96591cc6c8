"""The Numba backend's branch-free sin/cos against mpmath, over reduced and large arguments."""

from __future__ import annotations

import mpmath
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

_numba = pytest.importorskip("ropeflow.backends._numba")


def _truth(x: float) -> tuple[float, float]:
    mpmath.mp.prec = 200
    v = mpmath.mpf(x)
    return float(mpmath.sin(v)), float(mpmath.cos(v))


angles = st.one_of(st.floats(-np.pi / 4, np.pi / 4), st.floats(-_numba.POLY_MAX_ANGLE, _numba.POLY_MAX_ANGLE),
                   st.integers(0, 2**26).map(float))


@given(x=angles)
def test_float64_polynomial_within_1e_15(x):
    s, c = _numba._sincos_poly(x)
    ts, tc = _truth(x)
    assert abs(s - ts) <= 1e-15 and abs(c - tc) <= 1e-15


@given(x=angles)
def test_float32_polynomial_within_2e_11(x):
    s, c = _numba._sincos_poly_f32(x)
    ts, tc = _truth(x)
    assert abs(s - ts) <= 2e-11 and abs(c - tc) <= 2e-11


def test_quadrants_and_signs():
    for k in range(-8, 9):
        for r in (-0.3, 0.0, 0.7):
            x = k * np.pi / 2 + r
            s, c = _numba._sincos_poly(x)
            assert s == pytest.approx(np.sin(x), abs=1e-15) and c == pytest.approx(np.cos(x), abs=1e-15)


def test_libm_fallback_for_huge_float32_angles():
    """inv_freq > 1 (a LongRoPE factor below 1) pushes float32 angles past the polynomial's range."""
    from ropeflow.scaling import Frequencies

    inv = np.array([64.0, 1.0], np.float32)
    freqs = Frequencies(inv)
    start = 2**24 - 4
    cos = np.empty((4, 4), np.float32)
    sin = np.empty((4, 4), np.float32)
    _numba.make_backend().build_rows(freqs, start, cos, sin)
    for r in range(4):
        angle = float(np.float32(np.float32(start + r) * inv[0]))
        assert angle >= _numba.POLY_MAX_ANGLE
        ts, tc = _truth(angle)
        assert abs(cos[r, 0] - tc) <= 2**-24 and abs(sin[r, 0] - ts) <= 2**-24
