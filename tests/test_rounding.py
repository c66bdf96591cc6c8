"""One rounding everywhere (issue 13): the numpy backend rounds float64 results once to bfloat16, like numba."""

from __future__ import annotations

import numpy as np
import pytest

from ropeflow import RotaryEmbedding, apply_rotary
from ropeflow.backends._numpy import round_once

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)


def _neighbours(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Random finite positive bfloat16 values ``lo``, their successors ``hi`` and the exact midpoints (float64)."""
    bits = np.random.default_rng(seed).integers(0, 0x7F7F, n).astype(np.uint16)
    lo = bits.view(BF16).astype(np.float64)
    hi = (bits + 1).view(BF16).astype(np.float64)
    return bits, lo, hi


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_round_once_at_and_beside_every_halfway_point(sign):
    """Just above a midpoint rounds away, just below rounds back, on it rounds to even: what one rounding
    gives. A float32 intermediate with round-to-nearest would land just-beside values on the midpoint."""
    bits, lo, hi = _neighbours(200_000, 1)
    mid = (lo + hi) / 2  # exact in float64
    for value, want in ((np.nextafter(mid, np.inf), hi), (np.nextafter(mid, -np.inf), lo),
                        (mid + (hi - lo) * 2**-20, hi), (mid - (hi - lo) * 2**-20, lo),
                        (mid, np.where(bits % 2 == 0, lo, hi))):
        got = round_once(sign * value, BF16).astype(np.float64)
        assert np.array_equal(got, sign * want)


def test_round_once_specials():
    values = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, 1e300, -1e300, 1e-300, -1e-300, 3.4e38, 2.0**-133,
                       2.0**-134 * 1.5])
    got = round_once(values, BF16).astype(np.float64)
    want = [np.inf, -np.inf, np.nan, 0.0, -0.0, np.inf, -np.inf, 0.0, -0.0, np.inf, 2.0**-133, 2.0**-133]
    np.testing.assert_array_equal(got, want)
    assert np.signbit(got[4]) and np.signbit(got[8])


def test_numpy_and_numba_bfloat16_agree_bit_for_bit():
    rng = np.random.default_rng(7)
    x = (rng.standard_normal((2, 8, 256, 128)) * 3).astype(BF16)
    rope = RotaryEmbedding(128, 4096, 500000.0, precision="exact")
    cos, sin = rope.cos_sin(300, "float64")
    for layout in ("half", "interleaved", "deepseek"):
        a = apply_rotary(x, cos, sin, offset=40, layout=layout, backend="numpy")
        b = apply_rotary(x, cos, sin, offset=40, layout=layout, backend="numba")
        assert np.array_equal(a.view(np.uint16), b.view(np.uint16))
