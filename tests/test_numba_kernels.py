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


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_half_precision_codecs_round_once_to_nearest_even(name):
    """Every 16-bit pattern decodes exactly; float64 values (random, representable, midpoints, edges) encode
    to the correctly rounded bits (ties to even, overflow to inf)."""
    if name == "bfloat16":
        dt = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
        load, store = (lambda b: _numba._decode(np.int64(b), 7, 127)), (lambda v: _numba._encode(v, 7, 127))
    else:
        from numba import njit

        dt = np.dtype(np.float16)
        load, store = njit(lambda b: _numba._f16_to_f64(b)), (lambda v: _numba._encode(v, 10, 15))
    bits = np.arange(65536, dtype=np.uint16)
    values = bits.view(dt).astype(np.float64)
    decoded = np.array([load(b) for b in bits])
    np.testing.assert_array_equal(decoded, values)
    finite = np.sort(np.unique(values[np.isfinite(values)]))
    mids = ((finite[:-1] + finite[1:]) / 2)[::5]  # exact ties (every 5th): must round to the even neighbour
    rng = np.random.default_rng(7)
    samples = np.concatenate([finite[::5], mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
                              rng.standard_normal(4000) * 10.0 ** rng.integers(-12, 8, 4000),
                              [np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300]])
    got = np.array([store(v) for v in samples], dtype=np.uint16)
    # the expected bits: nearest representable by exact comparison in float64 (ties to even mantissa)
    sorted_vals = finite
    for v, g in zip(samples, got, strict=True):
        if np.isinf(v) or abs(v) > finite.max():
            top = finite.max()
            gap = top - finite[-2]
            expect_inf = np.isinf(v) or abs(v) >= top + gap / 2
            if expect_inf:
                assert np.isinf(np.array([g], np.uint16).view(dt)[0].astype(np.float64)), v
                continue
        i = np.searchsorted(sorted_vals, v)
        cands = [sorted_vals[k] for k in (i - 1, i) if 0 <= k < len(sorted_vals)]
        best = min(abs(c - v) for c in cands)
        nearest = [c for c in cands if abs(c - v) == best]
        g_val = np.array([g], np.uint16).view(dt)[0].astype(np.float64)
        assert g_val in nearest, (v, g_val, nearest)
        if len(nearest) == 2 and nearest[0] != nearest[1]:
            assert int(g) & 1 == 0 or g_val == 0, (v, hex(g))


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
def test_vectorizable_codecs_equal_the_reference_codec(name):
    """The branch-free encoders of the rotation kernel (float16: round to odd in float32, then to nearest even,
    also with the hardware conversion, and AVX512-FP16's direct float64 -> float16 conversion where the CPU has
    it; bfloat16: one float64 addition at bfloat16's spacing) give
    the bits of the reference encoder ``_encode`` (rounding from float64 directly) for every value tried but
    NaNs, which give a quiet NaN with the input's sign (payloads may differ); the bfloat16 decoder equals
    ``_decode`` on all 65536 patterns."""
    from numba import njit

    if name == "bfloat16":
        dt = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
        fast = njit(lambda vs: [_numba._encode_bf16(v) for v in vs])
        ref = njit(lambda vs: [_numba._encode(v, 7, 127) for v in vs])
        decode_fast = njit(lambda bs: [_numba._decode_bf16(np.int16(b)) for b in bs])
        decode_ref = njit(lambda bs: [_numba._decode(np.int64(b), 7, 127) for b in bs])
        bits = np.arange(65536, dtype=np.uint16)
        np.testing.assert_array_equal(np.array(decode_fast(bits)), np.array(decode_ref(bits)))
    else:
        dt = np.dtype(np.float16)
        fast = njit(lambda vs: [_numba._encode_f16(v) for v in vs])
        ref = njit(lambda vs: [_numba._encode(v, 10, 15) for v in vs])
        decode_fast = njit(lambda bs: [_numba._decode_f16(b) for b in bs])
        bits = np.arange(65536, dtype=np.uint16)
        decoded = np.array(decode_fast(bits))
        want_decoded = bits.view(dt).astype(np.float64)
        both_nan = np.isnan(decoded) & np.isnan(want_decoded)
        np.testing.assert_array_equal(decoded[~both_nan], want_decoded[~both_nan])
        assert np.array_equal(np.signbit(decoded), np.signbit(want_decoded))
    values = np.arange(65536, dtype=np.uint16).view(dt).astype(np.float64)
    finite = np.unique(values[np.isfinite(values)])
    mids = (finite[:-1] + finite[1:]) / 2
    rng = np.random.default_rng(11)
    nan_payloads = (np.array([0x7FF8000000000001, 0x7FFFFFFFFFFFFFFF, -1, 0x7FF0000000000001,
                              -0x000FFFFFFFFFFFFF, 0x7FF4000000000000, -0x000BFFFFFFFFFFFF], np.int64)
                    .view(np.float64))  # quiet and signalling, both signs, payload bits low and high
    samples = np.concatenate([
        values, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
        mids + (finite[1:] - finite[:-1]) * 2.0**-30, mids - (finite[1:] - finite[:-1]) * 2.0**-30,
        rng.standard_normal(20000) * 2.0 ** rng.integers(-150, 130, 20000),
        [np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300, 1e-300, -1e-300, 3.4e38, 3.5e38, 65519.99, 65520.0],
        [5e-324, -5e-324, 1.7976931348623157e308, -1.7976931348623157e308],
        2.0 ** np.arange(120, 1024, 3) * rng.choice([-1.0, 1.0, 1.5, 1.00390625, -1.0078125], 302),  # big, capped
        ((np.arange(2047, dtype=np.int64) << 52) | rng.integers(0, 1 << 52, 2047)).view(np.float64),  # every
        -((np.arange(2047, dtype=np.int64) << 52) | rng.integers(0, 1 << 52, 2047)).view(np.float64),  # exponent
        nan_payloads,
    ])
    want = np.array(ref(samples)).astype(np.uint16)
    everything = np.ones(samples.shape, bool)
    encoders = [(fast, everything)]
    if name == "float16":  # the F16C path (compiled where the CPU converts in hardware)
        encoders.append((njit(lambda vs: [_numba._encode_f16_hw(v) for v in vs]), everything))
        if _numba.HARDWARE_F64_F16:
            encoders.append((njit(lambda vs: [_numba._f64_to_f16(v) for v in vs]), everything))
    else:  # the kernels' encoder for rotations by float32 tables: finite values below 2**979, inf and NaN
        within = ~np.isfinite(samples) | (np.abs(samples) < 2.0**979)
        assert within.sum() > 20000 and (np.abs(samples[np.isfinite(samples)]) >= 2.0**978).any()
        encoders.append((njit(lambda vs: [_numba._encode_bf16_bounded(v) for v in vs]), within))
        # two results packed into one uint32 word (bfloat16 rows read as words): each half, each adder
        low = njit(lambda vs, kind: [_numba._bf16_word(v, 1.0, kind) & 0xFFFF for v in vs])
        high = njit(lambda vs, kind: [_numba._bf16_word(1.0, v, kind) >> 16 for v in vs])
        for kind, taken in ((np.float64(0), everything), (np.float32(0), within)):
            for half in (low, high):
                encoders.append(((lambda vs, half=half, kind=kind: half(vs, kind)), taken))
        words = np.arange(65536, dtype=np.uint32)
        decoded = np.array(decode_ref(bits))
        word_low = njit(lambda ws: [_numba._word_low(w | 0x56780000) for w in ws])  # the high half ignored
        word_high = njit(lambda ws: [_numba._word_high(w << 16 | 0x1234) for w in ws])  # the low half ignored
        np.testing.assert_array_equal(np.array(word_low(words)), decoded)
        np.testing.assert_array_equal(np.array(word_high(words)), decoded)
    for encode, taken in encoders:
        got = np.array(encode(samples[taken])).astype(np.uint16)
        is_nan = np.isnan(samples[taken])
        np.testing.assert_array_equal(got[~is_nan], want[taken][~is_nan])
        nan_bits = got[is_nan]
        assert np.isnan(nan_bits.view(dt).astype(np.float64)).all()
        quiet_bit = 0x0200 if name == "float16" else 0x0040
        assert (nan_bits & quiet_bit).all(), [hex(b) for b in nan_bits]  # quiet NaNs
        np.testing.assert_array_equal(nan_bits >> 15, np.signbit(samples[taken][is_nan]))  # with the input's sign



def test_checked_bfloat16_words_equal_the_reference_codec_unless_they_report_a_tie():
    """``_bf16_word_checked`` (float32 conversion, then half up on the bits; the bfloat16 word rows' first
    rounding) gives ``_encode``'s bits for every value whose float32 rounding is not a bfloat16 midpoint, and
    reports exactly those as ties: values on and beside midpoints, subnormal results, overflow, signed zeros,
    inf, and the NaNs that bfloat16 inputs carry (payload in the upper half), which stay quiet NaNs."""
    from numba import njit

    dt = np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    with np.errstate(invalid="ignore"):
        values = np.arange(65536, dtype=np.uint16).view(dt).astype(np.float64)
    finite = np.unique(values[np.isfinite(values)])
    mids = (finite[:-1] + finite[1:]) / 2
    gaps = finite[1:] - finite[:-1]
    rng = np.random.default_rng(12)
    samples = np.concatenate([
        values, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
        mids + gaps * 2.0**-20, mids - gaps * 2.0**-20, mids + gaps * 2.0**-12,  # float32 rounds the first two
        rng.standard_normal(20000) * 2.0 ** rng.integers(-155, 130, 20000),  # float32 subnormals to overflow
        [np.inf, -np.inf, 0.0, -0.0, 1e300, -1e300, 1e-300, -1e-300, 3.4e38, 3.5e38, 5e-324, -5e-324],
    ])
    ref = njit(lambda vs: [_numba._encode(v, 7, 127) for v in vs])
    low = njit(lambda vs, kind: [_numba._bf16_word_checked(v, 1.0, kind) for v in vs])
    high = njit(lambda vs, kind: [_numba._bf16_word_checked(1.0, v, kind) for v in vs])
    want = np.array(ref(samples)).astype(np.uint16)
    with np.errstate(over="ignore"):
        as_float32 = samples.astype(np.float32)
    float32_tie = (as_float32.view(np.uint32) & 0xFFFF) == 0x8000
    assert float32_tie.sum() > 1000 and (float32_tie & (samples != as_float32)).sum() > 1000  # on and beside
    one = 0x3F80  # bfloat16 1.0, the other half of each word
    for kind in (np.float64(0), np.float32(0)):
        for encode, shift, other in ((low, 0, one << 16), (high, 16, one)):
            pairs = encode(samples, kind)
            words, ties = np.array([w for w, _ in pairs]), np.array([t for _, t in pairs])
            np.testing.assert_array_equal(ties, float32_tie)
            got = ((words >> shift) & 0xFFFF).astype(np.uint16)
            compared = ~ties & ~np.isnan(samples)  # NaNs: below
            np.testing.assert_array_equal(got[compared], want[compared])
            np.testing.assert_array_equal(words & (0xFFFF << (16 - shift)), other)
            nans = encode(values[np.isnan(values)], kind)
            nan_bits = np.array([(w >> shift) & 0xFFFF for w, _ in nans], np.uint16)
            assert np.isnan(nan_bits.view(dt).astype(np.float64)).all() and (nan_bits & 0x0040).all()
            np.testing.assert_array_equal(nan_bits >> 15, np.signbit(values[np.isnan(values)]))


_REFERENCE_CODECS = {}


def _reference_codecs():
    """``(decode_all, encode_all)``: the reference scalar codecs over 1-D arrays, compiled once per session
    (a fresh ``njit(lambda ...)`` per call would recompile every time)."""
    if not _REFERENCE_CODECS:
        from numba import njit

        @njit
        def decode_all(bits, mant_bits, bias):
            out = np.empty(bits.shape[0], np.float64)
            for i in range(bits.shape[0]):
                out[i] = _numba._decode(bits[i], mant_bits, bias)
            return out

        @njit
        def encode_all(values, mant_bits, bias):
            out = np.empty(values.shape[0], np.uint16)
            for i in range(values.shape[0]):
                out[i] = _numba._encode(values[i], mant_bits, bias)
            return out

        _REFERENCE_CODECS.update(decode=decode_all, encode=encode_all)
    return _REFERENCE_CODECS["decode"], _REFERENCE_CODECS["encode"]


def _reference_rotation(x, cos, sin, positions, layout, rotary_dim, inverse, mant_bits, bias):
    """The rotation of 16-bit float ``x`` (B, H, S, D) as the definition says: inputs decoded exactly with
    ``_decode``, ``x1*c - x2*s`` and ``x2*c + x1*s`` in float64, each result rounded once with ``_encode``."""
    decode_all, encode_all = _reference_codecs()
    bits = x.view(np.uint16).astype(np.int64)
    values = decode_all(bits.ravel(), mant_bits, bias)
    v = values.reshape(x.shape)
    half = rotary_dim // 2
    c = cos[positions][:, None, :, :half].astype(np.float64)
    s = sin[positions][:, None, :, :half].astype(np.float64) * (-1.0 if inverse else 1.0)
    if layout == "half":
        x1, x2 = v[..., :half], v[..., half:rotary_dim]
    else:
        x1, x2 = v[..., 0:rotary_dim:2], v[..., 1:rotary_dim:2]
    with np.errstate(all="ignore"):  # NaN and inf inputs
        r1, r2 = x1 * c - x2 * s, x2 * c + x1 * s
    out = v.copy()
    if layout == "interleaved":
        out[..., 0:rotary_dim:2], out[..., 1:rotary_dim:2] = r1, r2
    else:
        out[..., :half], out[..., half:rotary_dim] = r1, r2
    flat = out.ravel()
    rounded = encode_all(np.ascontiguousarray(flat), mant_bits, bias)
    keep = np.zeros(x.shape, bool)
    keep[..., rotary_dim:] = True  # channels past rotary_dim are copied bits, not decoded and re-encoded
    return np.where(keep, x.view(np.uint16), rounded.reshape(x.shape))


@pytest.mark.parametrize("name", ["float16", "bfloat16"])
@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
@pytest.mark.parametrize("in_place", [False, True])
def test_half_precision_kernel_equals_the_reference_codec_path(name, layout, in_place):
    """The rotation kernel (vectorized codecs, F16C conversions where the CPU has them) gives, bit for bit,
    the reference path (exact decode, float64 math, one rounding by ``_encode``) on random bit patterns
    (NaN, inf, subnormals included), ordinary values, values whose products over- and underflow, and tables
    with special entries; NaN results only need to be NaN (the reference has no payloads). Large enough to
    take the parallel kernel and its vectorized loops."""
    if name == "bfloat16":
        dt, mant_bits, bias = np.dtype(pytest.importorskip("ml_dtypes").bfloat16), 7, 127
    else:
        dt, mant_bits, bias = np.dtype(np.float16), 10, 15
    rng = np.random.default_rng(23)
    shape = (6, 3, 64, 40)
    bits = rng.integers(0, 65536, shape).astype(np.uint16)
    bits[..., 1::3] = rng.standard_normal(bits[..., 1::3].shape).astype(dt).view(np.uint16)
    finite_max = float(np.finfo(dt).max)
    bits[..., 2::5] = (rng.uniform(-1, 1, bits[..., 2::5].shape) * finite_max).astype(dt).view(np.uint16)
    bits[0, 0, 0, :8] = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, finite_max, -finite_max, 1.0], dt).view(
        np.uint16)
    x = bits.view(dt)
    cos = rng.uniform(-1, 1, (70, 32)).astype(np.float32)
    sin = rng.uniform(-1, 1, (70, 32)).astype(np.float32)
    cos[3, :6] = [np.nan, np.inf, -0.0, 1e-40, 3e38, 1e-45]
    sin[5, :6] = [np.inf, np.nan, 1e-45, -1e-42, -3e38, 0.0]
    positions = rng.integers(0, 70, (6, 64))
    positions[:, :2] = [3, 5]
    backend = _numba.make_backend()
    assert 2 * x.size >= _numba.SERIAL_ELEMENTS  # q and k: the parallel kernel
    for rotary_dim in (32, 24):
        for inverse in (False, True):
            want = _reference_rotation(x, cos, sin, positions, layout, rotary_dim, inverse, mant_bits, bias)
            out = x.copy() if in_place else np.empty_like(x)
            backend.apply(out if in_place else x, out, cos, sin, positions, layout, rotary_dim, inverse,
                          k=x.copy(), k_out=np.empty_like(x))
            got = out.view(np.uint16)
            with np.errstate(invalid="ignore"):
                got_nan = np.isnan(got.view(dt).astype(np.float64))
                want_nan = np.isnan(want.view(dt).astype(np.float64))
            np.testing.assert_array_equal(got_nan, want_nan)
            np.testing.assert_array_equal(got[~got_nan], want[~want_nan])


@pytest.mark.parametrize("case", ["decode", "short prefill (small tiles)", "token-major", "q alone", "in place",
                                  "deepseek in place", "partial rotary, strided", "inverse"])
def test_parallel_rotation_equals_the_serial_twin_and_the_loop_reference(case):
    """The parallel tiled kernel (chunks of tiles; tiles shrink below 16 positions when there are fewer
    tiles than chunks) and its serial twin give the same bits, equal to the float64 loop reference."""
    from reference import apply_naive

    backend = _numba.NumbaBackend()
    rng = np.random.default_rng(5)
    table_len, dim, layout, inverse = 64, 16, "half", False
    cos = rng.uniform(-1, 1, (table_len, dim)).astype(np.float32)
    sin = rng.uniform(-1, 1, (table_len, dim)).astype(np.float32)
    cos[:, dim // 2:], sin[:, dim // 2:] = cos[:, :dim // 2], sin[:, :dim // 2]  # the "half" table layout
    q_shape, k_shape = (6, 12, 1, dim), (6, 4, 1, dim)
    if case == "short prefill (small tiles)":
        q_shape, k_shape = (1, 96, 20, dim), (1, 24, 20, dim)  # 2 tiles of 16 < the chunks: tiles shrink
    q = rng.standard_normal(q_shape).astype(np.float32)
    k = rng.standard_normal(k_shape).astype(np.float32)
    positions = rng.integers(0, table_len, (q.shape[0], q.shape[2]))
    if case == "token-major":
        q = np.ascontiguousarray(rng.standard_normal((2, 20, 12, dim)).astype(np.float32)).transpose(0, 2, 1, 3)
        k = np.ascontiguousarray(rng.standard_normal((2, 20, 4, dim)).astype(np.float32)).transpose(0, 2, 1, 3)
        positions = rng.integers(0, table_len, (2, 20))
    if case == "q alone":
        k = None
    if case == "deepseek in place":
        layout = "deepseek"
    if case == "partial rotary, strided":
        wide = rng.standard_normal((6, 12, 3, dim + 8)).astype(np.float32)
        q = wide[:, :, 1:2, 2:dim + 6]  # head_dim dim + 4: the last 4 channels pass through; not contiguous
    if case == "inverse":
        inverse = True
    results = []
    for serial_below in (1 << 62, 0):  # everything serial, then everything parallel
        original = _numba.SERIAL_ELEMENTS
        _numba.SERIAL_ELEMENTS = serial_below
        try:
            qi, ki = q.copy(), None if k is None else k.copy()
            in_place = case in ("in place", "deepseek in place")
            q_out = qi if in_place else np.empty_like(qi)
            k_out = None if ki is None else (ki if in_place else np.empty_like(ki))
            backend.apply(qi, q_out, cos, sin, positions, layout, dim, inverse, k=ki, k_out=k_out)
        finally:
            _numba.SERIAL_ELEMENTS = original
        results.append((q_out, k_out))
    for got, x in ((results[0][0], q), (results[1][0], q)) + (() if k is None else ((results[0][1], k),
                                                                                   (results[1][1], k))):
        want = apply_naive(x, cos.astype(np.float64), sin.astype(np.float64), positions, layout, dim, inverse)
        np.testing.assert_array_equal(got, want.astype(np.float32))
    np.testing.assert_array_equal(results[0][0], results[1][0])


def test_row_loads_and_stores_carry_alias_tags_and_the_vector_width():
    """The rotation rows' tagged loads and stores (``_load_in``/``_store_out``) read and write like indexing,
    strided views included, and carry the alias-scope tags that spare LLVM its overlap checks; the function
    holding them asks for 512-bit vectors exactly where ``PREFER_512_BIT``."""
    from numba import njit

    @njit
    def doubled(src, dst):
        for i in range(src.shape[0]):
            _numba._store_out(dst, np.uint64(i), _numba._load_in(src, np.uint64(i)) * 2.0)

    src = np.arange(40.0)[::3]  # a strided view
    dst = np.zeros((src.shape[0], 3))[:, 1]  # another stride
    doubled(src, dst)
    np.testing.assert_array_equal(dst, 2 * src)
    ir = next(iter(doubled.inspect_llvm().values()))
    assert "!alias.scope" in ir and "!noalias" in ir
    assert ('"prefer-vector-width"="512"' in ir) == _numba.PREFER_512_BIT


def _pair_dots():
    """``(unfused, fused)``: :func:`_numba._pair_dot` over arrays, each form compiled on its own."""
    from numba import njit

    def over(fused):
        return njit(lambda a, c, b, s: [_numba._pair_dot(a[i], c[i], b[i], s[i], fused) for i in range(a.shape[0])])

    return over(False), over(True)


def _pair_dot_operands(rng: np.random.Generator, n: int, x_dtype: type, table_dtype: type) -> list[np.ndarray]:
    """``a, c, b, s`` (float64 arrays holding ``x_dtype`` and ``table_dtype`` values): model-like ones, products
    that cancel to the last bit (``b*s`` near ``-a*c``), magnitudes from the dtypes' subnormals to near their
    largest values (so ``a*c``, the product inside the FMA, reaches 2**-298 and 2**256), zeros of both signs,
    inf."""
    def values(dtype, spread):
        info = (np.finfo if np.dtype(dtype).kind == "f" else pytest.importorskip("ml_dtypes").finfo)(dtype)
        low, high = (info.minexp - info.nmant, info.maxexp - 2) if spread else (0, 1)  # subnormals to near max
        return (rng.standard_normal(n) * 2.0 ** rng.integers(low, high, n)).astype(dtype).astype(np.float64)

    a, b = values(x_dtype, True), values(x_dtype, False)
    c, s = values(table_dtype, True), values(table_dtype, True)  # c: the product inside the FMA
    near = rng.random(n) < 0.3  # b*s about -a*c: cancellation leaves the products' last bits
    with np.errstate(over="ignore"):  # quotients past the table dtype's range become inf: kept, as inf operands
        s[near] = (-(a[near] * c[near]) / np.where(b[near] == 0, 1.0, b[near])).astype(table_dtype)
    a[:8] = [0.0, -0.0, np.inf, -np.inf, 0.0, -0.0, 1.0, -1.0]
    s[:8] = [-0.0, 0.0, 1.0, 0.5, np.inf, 0.0, -0.0, 0.0]
    return [np.ascontiguousarray(v) for v in (a, c, b, s)]


@pytest.mark.parametrize("x_name", ["float32", "float16", "bfloat16"])
def test_fused_pair_dot_equals_the_unfused_one_where_products_are_exact(x_name):
    """The rotation rows fuse ``a*c + b*s`` into one FMA where the table is float32 and the input float32,
    float16 or bfloat16 (``_fused_products``): both products are then exact in float64, so the fused and the
    unfused results are the same bits (NaN aside: inf * 0 gives a NaN both ways). float64 operands are not
    exact, and there the two forms differ, which is why float64 inputs and tables stay unfused."""
    x_dtype = np.dtype(pytest.importorskip("ml_dtypes").bfloat16) if x_name == "bfloat16" else np.dtype(x_name)
    unfused, fused = _pair_dots()
    rng = np.random.default_rng(17)
    operands = _pair_dot_operands(rng, 200_000, x_dtype, np.float32)
    want, got = np.array(unfused(*operands)), np.array(fused(*operands))
    both_nan = np.isnan(want) & np.isnan(got)
    assert both_nan.sum() < 10  # only the few inf * 0 cases
    np.testing.assert_array_equal(got[~both_nan].view(np.int64), want[~both_nan].view(np.int64))  # -0 too
    wide = _pair_dot_operands(rng, 20_000, np.float64, np.float64)
    assert (np.array(fused(*wide)) != np.array(unfused(*wide))).sum() > 1000


def test_products_are_fused_only_for_narrow_inputs_and_float32_tables():
    """The fused form is chosen from the types, where the tile function is compiled: the input row's dtype
    and the tables' (``_table_kind`` carries them there as a scalar, float32 only when cos and sin both are)."""
    from numba import njit

    probe = njit(lambda row, cos, sin: _numba._fused_products(row, _numba._table_kind(cos, sin)))
    table32, table64 = np.zeros((1, 1), np.float32), np.zeros((1, 1))
    for row in (np.zeros(1, np.float32), np.zeros(1, np.uint16), np.zeros(1, np.int16)):
        assert probe(row, table32, table32) is _numba.HARDWARE_FMA
        assert probe(row, table64, table64) is False
        assert probe(row, table32, table64) is False
        assert probe(row, table64, table32) is False
    assert probe(np.zeros(1), table32, table32) is False


def test_the_parallel_kernel_can_be_cached_on_disk():
    """Numba refuses to cache a function that uses dynamic globals (ctypes pointers: ``numba.get_num_threads()``
    inside the kernel is one), silently but for a warning, and every process would compile the kernel again (a
    minute each). A parallel rotation's compiled kernels have none."""
    import ropeflow

    rope = ropeflow.RotaryEmbedding(64, 512)
    q = np.ones((1, 8, 512, 64), np.float32)
    rope.apply(q, q.copy())  # parallel work: above SERIAL_ELEMENTS
    compiled = list(_numba._apply_tiles.parallel.overloads.values())
    assert compiled and not any(overload.library.has_dynamic_globals for overload in compiled)
