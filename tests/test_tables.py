"""Standard tables: backends agree with the NumPy reference and the naive loops; invariants; the seed's
``forward`` semantics (seq_len inference, slicing, dtype cast)."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ULP32, assert_close, dtype_eps, input_array, to_numpy
from hypothesis import given
from hypothesis import strategies as st
from reference import tables_from_inv_freq

import ropeflow
from ropeflow.backends import get_backend
from ropeflow.scaling import compute_frequencies

DTYPES = ["float16", "float32", "float64", "bfloat16"]
dims = st.integers(1, 256).map(lambda h: 2 * h)
bases = st.floats(1.5, 1e7)
lengths = st.integers(1, 8192)


def _np_dtype(name):
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


# Agreement bound, reference precision: both sides take cos/sin of the *same* float32 angle (the product is
# IEEE-exact everywhere), numba nearly correctly rounded, NumPy's float32 SIMD cos/sin within ~2 ulps, so
# 4 float32 ulps of 1.0 bounds the difference. Exact precision: float64 sin/cos of the same float64 angle,
# glibc vs our reduced polynomial, both within a few float64 ulps: 64 eps64.
def _tolerance(precision: str, dtype: str) -> float:
    table = 4 * ULP32 if precision == "reference" else 64 * np.finfo(np.float64).eps
    # a cast to a narrower dtype may round the two sides to neighbouring values
    return max(table, dtype_eps(dtype)) if dtype in ("float16", "bfloat16") else table


@given(dim=dims, base=bases, seq_len=lengths, dtype=st.sampled_from(DTYPES),
       precision=st.sampled_from(["reference", "exact"]))
def test_backend_agrees_with_numpy(backend, dim, base, seq_len, dtype, precision):
    if dtype == "bfloat16" and backend == "cupy":
        return
    npdt = _np_dtype(dtype)
    ref = ropeflow.RotaryEmbedding(dim, 2048, base, backend="numpy", precision=precision)
    rope = ropeflow.RotaryEmbedding(dim, 2048, base, backend=backend, precision=precision)
    x = input_array(backend, (1, 1, seq_len, dim), npdt)
    cos, sin = rope(x)
    rcos, rsin = ref(np.zeros((1, seq_len, dim), npdt))
    tol = _tolerance(precision, dtype if dtype != "float64" or precision == "exact" else "float32")
    lib = "cupy" if backend == "cupy" else "numpy"
    assert type(cos).__module__.split(".")[0] == lib
    assert_close(to_numpy(cos), rcos, atol=tol)
    assert_close(to_numpy(sin), rsin, atol=tol)


@pytest.mark.parametrize("dim,base,start,stop", [(64, 10000.0, 0, 40), (128, 500000.0, 100000, 100020),
                                                 (6, 1.5, 16_000_000, 16_000_010)])
def test_rows_match_naive_loops(backend, dim, base, start, stop):
    """A backend's row-range kernel against the naive loop, including rows near the 2**24 limit."""
    if backend == "cupy":
        import cupy as xp
    else:
        xp = np
    freqs = compute_frequencies(None, dim, base, 2048, "reference")
    impl = get_backend(backend)
    cos = impl.empty((stop - start, dim), np.float32, 0 if backend == "cupy" else "cpu")
    sin = impl.empty((stop - start, dim), np.float32, 0 if backend == "cupy" else "cpu")
    impl.build_rows(impl.prepare(freqs, 0 if backend == "cupy" else "cpu"), start, cos, sin)
    ncos, nsin = tables_from_inv_freq(freqs.inv_freq, start, stop)
    assert isinstance(cos, xp.ndarray)
    assert_close(to_numpy(cos), ncos, atol=4 * ULP32)
    assert_close(to_numpy(sin), nsin, atol=4 * ULP32)


@given(dim=dims, base=bases, seq_len=st.integers(1, 3000))
def test_invariants(backend, dim, base, seq_len):
    rope = ropeflow.RotaryEmbedding(dim, 2048, base, backend=backend)
    cos, sin = (to_numpy(a).astype(np.float64) for a in rope(input_array(backend, (seq_len, dim), np.float32)))
    half = dim // 2
    np.testing.assert_array_equal(cos[:, :half], cos[:, half:])
    np.testing.assert_array_equal(sin[:, :half], sin[:, half:])
    np.testing.assert_array_equal(cos[0], 1.0)
    np.testing.assert_array_equal(sin[0], 0.0)
    assert np.abs(cos**2 + sin**2 - 1.0).max() <= 4 * ULP32
    assert np.abs(cos).max() <= 1.0 and np.abs(sin).max() <= 1.0


def test_seq_len_inferred_from_x_shape(backend):
    rope = ropeflow.RotaryEmbedding(64, backend=backend)
    cos, sin = rope(input_array(backend, (2, 8, 10, 64), np.float32))
    assert cos.shape == sin.shape == (10, 64)
    cos20, _ = rope(input_array(backend, (2, 8, 20, 64), np.float32))
    assert cos20.shape == (20, 64)
    np.testing.assert_array_equal(to_numpy(cos20[:10]), to_numpy(cos))


def test_explicit_seq_len_slices(backend):
    rope = ropeflow.RotaryEmbedding(32, backend=backend)
    x = input_array(backend, (1, 4, 7, 32), np.float32)
    cos, _ = rope(x, seq_len=5)
    full, _ = rope(x, seq_len=50)
    assert cos.shape == (5, 32)
    np.testing.assert_array_equal(to_numpy(full[:5]), to_numpy(cos))
    empty, _ = rope(x, seq_len=0)
    assert empty.shape == (0, 32)


@pytest.mark.parametrize("dtype", DTYPES)
def test_cast_to_input_dtype_from_master(backend, dtype):
    if dtype == "bfloat16" and backend == "cupy":
        pytest.skip("CuPy has no bfloat16")
    npdt = _np_dtype(dtype)
    rope = ropeflow.RotaryEmbedding(64, backend=backend)
    cos, sin = rope(input_array(backend, (1, 1, 300, 64), npdt))
    assert cos.dtype == npdt and sin.dtype == npdt
    master, _ = rope(input_array(backend, (1, 1, 300, 64), np.float32))
    # one rounding from the float32 master, never a rounding of a rounding
    np.testing.assert_array_equal(to_numpy(cos), to_numpy(master).astype(npdt))


def test_exact_precision_float32_is_float64_rounded_once(backend):
    rope = ropeflow.RotaryEmbedding(64, precision="exact", backend=backend)
    c32, s32 = rope(input_array(backend, (1, 1000, 64), np.float32))
    c64, s64 = rope(input_array(backend, (1, 1000, 64), np.float64))
    np.testing.assert_array_equal(to_numpy(c32), to_numpy(c64).astype(np.float32))
    np.testing.assert_array_equal(to_numpy(s32), to_numpy(s64).astype(np.float32))


def test_cos_sin_without_input():
    rope = ropeflow.RotaryEmbedding(16)
    cos, sin = rope.cos_sin(12, dtype="float16")
    assert cos.shape == (12, 16) and cos.dtype == np.float16
    assert isinstance(cos, np.ndarray)
    assert rope.backend in ("numba", "numpy")


def test_attributes():
    rope = ropeflow.RotaryEmbedding(64, 4096, 50000.0)
    assert (rope.dim, rope.max_position_embeddings, rope.base) == (64, 4096, 50000.0)
    assert rope.attention_scaling == 1.0
    assert rope.max_seq_len_cached is None
    assert rope.inv_freq.dtype == np.float32 and rope.inv_freq.shape == (32,)
    rope.cos_sin(100)
    assert rope.max_seq_len_cached >= 100
    assert ropeflow.RotaryEmbedding(64, precision="exact").inv_freq.dtype == np.float64


def test_tables_are_read_only_views():
    rope = ropeflow.RotaryEmbedding(8, backend="numpy")
    cos, _ = rope.cos_sin(4)
    with pytest.raises(ValueError):
        cos[0, 0] = 2.0
