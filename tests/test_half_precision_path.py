"""The numba kernel rotates float16 and bfloat16 rows in float32 and certifies every result (issue 16).

Each result must equal the float64 kernel's: the exact value ``x1*c - x2*s`` (float64 products of a 16-bit
input and a float32 table value are exact), rounded to float64 once and then to the 16-bit format once. The
reference here is that formula written out in NumPy float64 and rounded by NumPy (float16; its double ->
half conversion rounds once) or by ``round_once`` (bfloat16; checked at every midpoint in test_rounding.py).
The inputs aim at the float32 path's weak spots: products within a float32 rounding of a 16-bit midpoint
(exactly on it, and just beside it), cancellation, signed zeros, subnormals, tiny table values (their tiles
take the float64 path), tiny bfloat16 inputs, overflow, inf and NaN.
"""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from ropeflow import apply_rotary

pytest.importorskip("numba")
from ropeflow.backends import _numba  # noqa: E402

ml_dtypes = pytest.importorskip("ml_dtypes")
BF16 = np.dtype(ml_dtypes.bfloat16)
F16 = np.dtype(np.float16)
LAYOUTS = ["half", "interleaved", "deepseek"]


def _round(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 -> dtype, rounded once to nearest even."""
    if dtype == F16:
        with np.errstate(over="ignore"):  # overflow to inf is the correct rounding
            return values.astype(F16)
    from ropeflow.backends._numpy import round_once

    return round_once(values, BF16)


def _pairs(x: np.ndarray, layout: str) -> tuple[np.ndarray, np.ndarray]:
    half = x.shape[-1] // 2
    if layout == "half":
        return x[..., :half], x[..., half:]
    return x[..., 0::2], x[..., 1::2]


def _reference(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> np.ndarray:
    """The rotation written out: float64 products and sums, one rounding to x's dtype. x: (H, S, D)."""
    half = x.shape[-1] // 2
    c = cos[: x.shape[1], :half].astype(np.float64)
    s = sin[: x.shape[1], :half].astype(np.float64)
    x1, x2 = (p.astype(np.float64) for p in _pairs(x, layout))
    y1, y2 = _round(x1 * c - x2 * s, x.dtype), _round(x2 * c + x1 * s, x.dtype)
    out = np.empty_like(x)
    if layout == "half" or layout == "deepseek":
        out[..., :half], out[..., half:] = y1, y2
    else:
        out[..., 0::2], out[..., 1::2] = y1, y2
    return out


def _certified(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> np.ndarray:
    """x (H, S, D) rotated by the certified float32 path itself (:func:`_numba._rotate_tile_narrow`, tiles of 16
    positions as in the kernel), whichever path ``apply_rotary`` takes for x's dtype on this CPU (float16 takes
    the float64 one where the CPU has AVX512-FP16)."""
    raw = np.uint16 if x.dtype == F16 else np.int16
    half = x.shape[-1] // 2
    xv = np.ascontiguousarray(x).view(raw)[None]
    out = np.empty_like(xv)
    doubt = np.empty(half, np.uint16)
    code = _numba._LAYOUT_CODES[layout]
    for s0 in range(0, x.shape[1], 16):
        n = min(16, x.shape[1] - s0)
        c = np.ascontiguousarray(cos[s0:s0 + n, :half], dtype=np.float32)
        s = np.ascontiguousarray(sin[s0:s0 + n, :half], dtype=np.float32)
        tiny = ((c != 0) & (np.abs(c) < _numba.NARROW_TABLE_MIN)).any() or (
            (s != 0) & (np.abs(s) < _numba.NARROW_TABLE_MIN)).any()
        _numba._rotate_tile_narrow(xv, 0, s0, out, 0, s0, n, c, s, code, half, x.shape[-1], False, False, True,
                                   doubt, bool(tiny), np.float32(0))
    return out[0].view(x.dtype)


def _rotated_both_ways(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, layout: str) -> list[np.ndarray]:
    """x (H, S, D) rotated by ``apply_rotary`` (numba) and by the certified path called directly."""
    return [apply_rotary(x[None], cos, sin, layout=layout, backend="numba")[0], _certified(x, cos, sin, layout)]


def _same_bits(got: np.ndarray, want: np.ndarray) -> None:
    g, w = got.view(np.uint16), want.view(np.uint16)
    nan = np.isnan(want.astype(np.float64))
    assert np.isnan(got.astype(np.float64))[nan].all()
    bad = (g != w) & ~nan
    assert not bad.any(), (f"{int(bad.sum())} of {bad.size} differ, e.g. got {hex(int(g[bad][0]))} want "
                           f"{hex(int(w[bad][0]))}")


def _grid(dtype: np.dtype) -> np.ndarray:
    """Every finite positive value of dtype (float64)."""
    values = np.arange(1, 0x7C00 if dtype == F16 else 0x7F80, dtype=np.uint16).view(dtype).astype(np.float64)
    return values


def _near_tie_case(dtype: np.dtype, n_seq: int, dim: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (4, n_seq, dim) and "half"-layout float32 tables whose products land on, or within a few float32
    roundings of, midpoints between neighbouring dtype values, with and without a second term."""
    rng = np.random.default_rng(seed)
    half = dim // 2
    grid = _grid(dtype)
    grid = grid[(grid > 2.0**-12) & (grid < 2.0**12)]
    i = rng.integers(0, grid.size - 1, (n_seq, half))
    mid = (grid[i] + grid[i + 1]) / 2  # exact in float64
    x1 = np.where(rng.random((n_seq, half)) < 0.5, 1.0, rng.choice(grid, (n_seq, half)))  # 1.0: exact ties
    c = (mid / x1).astype(np.float32)  # x1 * c is mid up to one float32 rounding (exactly mid for x1 == 1)
    s = (rng.standard_normal((n_seq, half)) * 2.0 ** rng.integers(-30, 2, (n_seq, half))).astype(np.float32)
    cos = np.concatenate([c, c], axis=1)
    sin = np.concatenate([s, s], axis=1)
    x = np.zeros((4, n_seq, dim))
    head0_1, head0_2 = x1, np.zeros_like(x1)  # y1 = x1*c exactly: on/near the midpoint
    head1_2 = rng.choice(grid, (n_seq, half)) * 2.0**-20  # a tiny second term: just beside the midpoint
    heads = [(head0_1, head0_2), (x1, head1_2), (x1, -head1_2), (x1, rng.choice(grid, (n_seq, half)))]
    for h, (a, b) in enumerate(heads):
        sign = np.where(rng.random((n_seq, half)) < 0.5, -1.0, 1.0)
        first, second = _pairs(x[h], "half")
        first[...], second[...] = sign * a, b
    return x.astype(dtype), cos, sin


def _in_layout(x: np.ndarray, layout: str) -> np.ndarray:
    """x's "half" pairs moved to ``layout``'s channels."""
    if layout == "half":
        return x
    pairs = _pairs(x, "half")
    moved = np.empty_like(x)
    first, second = _pairs(moved, layout)
    first[...], second[...] = pairs
    return moved


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_results_at_and_beside_midpoints_are_rounded_once(dtype, layout):
    """Products on a midpoint round to even and products beside it round to the nearer side, as from the
    exact value: float32 arithmetic alone gets some of them wrong, the certified path none."""
    x, cos, sin = _near_tie_case(dtype, 96, 64, seed=3)
    x = _in_layout(x, layout)
    want = _reference(x, cos, sin, layout)
    for got in _rotated_both_ways(x, cos, sin, layout):
        _same_bits(got, want)
    # the float64 kernel (float64 tables) gives the same bits: the reference above is the kernel's contract
    wide = apply_rotary(x[None], cos.astype(np.float64), sin.astype(np.float64), layout=layout, backend="numba")[0]
    _same_bits(wide, want)
    # and plain float32 arithmetic would not have: the inputs do reach the doubtful cases
    c, s = cos[:, :32], sin[:, :32]
    x1, x2 = (p.astype(np.float32) for p in _pairs(x, layout))
    naive = (x1 * c - x2 * s).astype(np.float64)
    assert (_round(naive, dtype).view(np.uint16) != _pairs(want, "half" if layout != "interleaved" else layout)[0]
            .view(np.uint16)).any()


def _specials_case(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (3, 40, 32) of inf, NaN, signed zeros, subnormals, the largest values and a zero head, and "half"
    tables scaled by 1.7 in places (sums of two maxima overflow) with a signed zero."""
    rng = np.random.default_rng(5)
    grid = _grid(dtype)
    specials = np.array([np.inf, -np.inf, np.nan, 0.0, -0.0, grid[0], -grid[0], grid[5], grid[-1], -grid[-1],
                         grid[-2]])
    n_seq, dim = 40, 32
    values = rng.choice(np.concatenate([specials, rng.choice(grid, 50), -rng.choice(grid, 50)]), (3, n_seq, dim))
    values[2] = 0.0  # a zero head (padding): signed zeros from the signs of the table values
    values[2, :, ::3] = -0.0
    angles = np.arange(n_seq)[:, None] * 10.0 ** -np.arange(dim // 2)[None] * 3.0
    c, s = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    c[::7] *= np.float32(1.7)  # scaled tables (YaRN's attention factor): sums of two maxima overflow
    s[3, :4] = -0.0
    return values.astype(dtype), np.concatenate([c, c], 1), np.concatenate([s, s], 1)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_specials_signed_zeros_subnormals_and_overflow(dtype):
    """inf, NaN, signed zeros, the format's subnormals, results that overflow, and zero rows: the same bits
    as the float64 formula (NaN: any NaN)."""
    x, cos, sin = _specials_case(dtype)
    for layout in LAYOUTS:
        with np.errstate(all="ignore"):
            want = _reference(x, cos, sin, layout)
        for got in _rotated_both_ways(x, cos, sin, layout):
            _same_bits(got, want)


def _tiny_case(dtype: np.dtype) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x (2, 48, 16), its second head (bfloat16) scaled into [2**-140, 2**-40), and "half" tables whose sin
    values past the first 16 rows lie in [2**-149, 2**-55): products far below float32's normal range."""
    rng = np.random.default_rng(9)
    n_seq, dim = 48, 16
    x = rng.standard_normal((2, n_seq, dim))
    if dtype == BF16:
        x[1] *= 2.0 ** rng.integers(-140, -40, (n_seq, dim))
    c = rng.standard_normal((n_seq, dim // 2)).astype(np.float32)
    s = (rng.standard_normal((n_seq, dim // 2)) * 2.0 ** rng.integers(-149, -55, (n_seq, dim // 2))).astype(np.float32)
    s[:16] = rng.standard_normal((16, dim // 2))  # the first tile is ordinary
    return x.astype(dtype), np.concatenate([c, c], 1), np.concatenate([s, s], 1)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_tiny_table_values_and_tiny_inputs(dtype):
    """Table values in (0, 2**-60) (their tiles take the float64 path) and bfloat16 inputs below 2**-50,
    subnormals included (their pairs take it): products that would underflow float32 stay exact."""
    x, cos, sin = _tiny_case(dtype)
    for layout in LAYOUTS:
        want = _reference(x, cos, sin, layout)
        for got in _rotated_both_ways(x, cos, sin, layout):
            _same_bits(got, want)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_a_float64_sin_with_a_float32_cos_is_not_rounded_to_float32(dtype):
    """Tables of two dtypes (``apply_rotary`` keeps each as given): the float64 sin is used as it is, so a
    result just above a 16-bit midpoint rounds up. The certified path would have rounded the sin onto the
    midpoint first (it needs float32 table values), and then to even, down: such tables take the float64
    path. Written out: x1 = 0 and x2 = 1, so the first half is ``-sin``. (On CPUs with AVX512-FP16 both
    dtypes take the float64 path anyway: there the certified path gets this case in
    :func:`test_the_certified_path_end_to_end_where_the_cpu_skips_it`.)"""
    step = 2.0**-10 if dtype == F16 else 2.0**-7  # the spacing above 1
    cos = np.full((5, 8), 0.5, np.float32)
    sin = np.full((5, 8), 1 + step / 2 + 2.0**-40)  # not a float32: float32 has only the midpoint
    assert np.float32(sin[0, 0]) == 1 + step / 2
    for layout in ("half", "interleaved"):
        x = np.zeros((3, 5, 8), dtype)
        _pairs(x, layout)[1][...] = 1
        y1, y2 = _pairs(apply_rotary(x[None], cos, sin, layout=layout, backend="numba")[0].astype(np.float64), layout)
        assert (y1 == -(1 + step)).all() and (y2 == 0.5).all(), (layout, y1[0, 0], y2[0, 0])


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_random_rotations_every_layout_and_walk(dtype):
    """Model-like values with the library's own tables, head-major and token-major, in place and partial
    rotary: bit for bit the formula (and the numpy backend)."""
    from ropeflow import RotaryEmbedding

    rng = np.random.default_rng(13)
    rope = RotaryEmbedding(48, base=10000.0, max_position_embeddings=2048)
    cos, sin = rope.cos_sin(2048, "float32")
    q = (rng.standard_normal((2, 3, 70, 64)) * 10.0 ** rng.integers(-4, 4, (2, 3, 70, 1))).astype(dtype)
    positions = rng.integers(0, 2048, (2, 70))
    for layout in LAYOUTS:
        got = apply_rotary(q, cos, sin, positions, layout=layout, backend="numba")
        ref = apply_rotary(q, cos, sin, positions, layout=layout, backend="numpy")
        _same_bits(got, ref)
        for b in range(2):
            rows = q[b][..., :48]
            want = _reference(rows, cos[positions[b]], sin[positions[b]], layout)
            _same_bits(got[b][..., :48], want)
            _same_bits(_certified(rows, cos[positions[b]], sin[positions[b]], layout), want)
            _same_bits(got[b][..., 48:], q[b][..., 48:])
        token_major = np.ascontiguousarray(q.transpose(0, 2, 1, 3))
        got_t = apply_rotary(token_major, cos, sin, positions, layout=layout, seq_axis=-3, backend="numba")
        _same_bits(got_t.transpose(0, 2, 1, 3), got)
        if layout != "deepseek":
            in_place = q.copy()
            apply_rotary(in_place, cos, sin, positions, layout=layout, out=in_place, backend="numba")
            _same_bits(in_place, got)


@pytest.mark.parametrize("words", [True, False], ids=["words", "16-bit"])
def test_bfloat16_rows_as_words_and_as_16_bit_values(words, monkeypatch):
    """bfloat16 rows travel as uint32 words of two channels where every row is unit-stride and even
    (``BF16_WORDS``; forced on and off here, on any CPU): both ways give the formula's bits, in every layout,
    head-major and token-major, inverse, in place, partial rotary (a ``rotary_dim`` that is not a multiple of
    4 keeps "half" and "deepseek" 16-bit), odd head strides, rows starting at an odd channel (unaligned words:
    16-bit), q and k fused. Words serve parallel work only: every call here is made parallel."""
    monkeypatch.setattr(_numba, "BF16_WORDS", words)
    monkeypatch.setattr(_numba, "SERIAL_ELEMENTS", 0)
    taken: list[tuple[str, bool]] = []
    word_views = _numba._word_views
    layout = "half"

    def counted(*arrays):
        views = word_views(*arrays)
        taken.append((layout, views is not None))
        return views

    monkeypatch.setattr(_numba, "_word_views", counted)
    rng = np.random.default_rng(23)
    base = 10.0 ** rng.integers(-3, 3, (2, 6, 80, 132))
    big = (rng.standard_normal(base.shape) * base).astype(BF16)
    angles = np.arange(2048)[:, None] * 10.0 ** -np.linspace(0, 4, 32)[None]
    c, s = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    cos, sin = np.concatenate([c, c], 1), np.concatenate([s, s], 1)
    views = {"contiguous": np.ascontiguousarray(big[..., :64]), "odd head stride": big[:, ::3, :, 4:68],
             "odd start": big[..., 1:65], "decode": np.ascontiguousarray(big[:, :, :1, :64])}
    for x in views.values():
        positions = rng.integers(0, 2048 - x.shape[2], (2, 1)) + np.arange(x.shape[2])
        for layout in LAYOUTS:
            for rotary_dim in (64, 62, 40):
                tables = cos[:, :rotary_dim], sin[:, :rotary_dim]
                kwargs = dict(layout=layout, rotary_dim=rotary_dim)
                want = apply_rotary(x, *tables, positions, backend="numpy", **kwargs)
                if rotary_dim == 64:  # the formula written out
                    for b in range(2):
                        _same_bits(want[b], _reference(x[b], cos[positions[b]], sin[positions[b]], layout))
                _same_bits(apply_rotary(x, *tables, positions, backend="numba", **kwargs), want)
                inverse = apply_rotary(x, *tables, positions, backend="numba", inverse=True, **kwargs)
                _same_bits(inverse, apply_rotary(x, *tables, positions, backend="numpy", inverse=True, **kwargs))
                token_major = np.ascontiguousarray(x.transpose(0, 2, 1, 3))
                got_t = apply_rotary(token_major, *tables, positions, seq_axis=-3, backend="numba", **kwargs)
                _same_bits(got_t.transpose(0, 2, 1, 3), want)
                if layout != "deepseek":
                    in_place = x.copy()
                    apply_rotary(in_place, *tables, positions, out=in_place, backend="numba", **kwargs)
                    _same_bits(in_place, want)
    from ropeflow import RotaryEmbedding

    rope = RotaryEmbedding(64, base=10000.0, max_position_embeddings=2048, backend="numba")
    rope_cos, rope_sin = rope.cos_sin(2048, "float32")
    q, k = views["contiguous"], np.ascontiguousarray(big[:, :2, :, 64:128])  # together: the parallel kernel
    for layout in LAYOUTS:
        got_q, got_k = rope.apply(q, k, offset=np.array([3, 900]), layout=layout)
        positions = np.array([[3], [900]]) + np.arange(q.shape[2])
        for x, got in ((q, got_q), (k, got_k)):
            _same_bits(got, apply_rotary(x, rope_cos, rope_sin, positions, layout=layout, backend="numpy"))
    for layout in LAYOUTS:  # words where they fit, 16-bit elsewhere
        assert any(w for name, w in taken if name == layout) is words, layout
    assert not words or not all(w for _, w in taken)


@pytest.mark.parametrize("fused", [True, False], ids=["fma", "unfused"])
def test_dot2_error_bound(fused):
    """Both float32 dot products behind the path keep ``|x1*c + x2*s - r| <= 2**-24 * t`` (exact rationals),
    the bound the certified interval is built on, including under cancellation."""
    from numba import njit

    dot = _numba._dot2_fused if fused else _numba._dot2_unfused
    run = njit(lambda a, b, c, d: [dot(a[i], b[i], c[i], d[i]) for i in range(a.shape[0])])
    rng = np.random.default_rng(17)
    n = 3000
    x1 = rng.choice(_grid(F16), n).astype(np.float32) * rng.choice([-1, 1], n).astype(np.float32)
    c = rng.standard_normal(n).astype(np.float32)
    x2 = rng.choice(_grid(BF16)[(_grid(BF16) > 2.0**-40) & (_grid(BF16) < 2.0**40)], n).astype(np.float32)
    s = (x1.astype(np.float64) * c / x2 * (1 + rng.standard_normal(n) * 2.0 ** -rng.integers(5, 30, n))).astype(
        np.float32)  # x2*s close to x1*c: cancellation in x1*c - x2*s
    s = -s
    results = run(x1, c, x2, s)
    for a, b, cc, d, (r, t) in zip(x1, c, x2, s, results, strict=True):
        exact = Fraction(float(a)) * Fraction(float(b)) + Fraction(float(cc)) * Fraction(float(d))
        assert abs(exact - Fraction(float(r))) <= Fraction(float(t)) * Fraction(1, 2**24)


def test_float32_codecs_for_cpus_without_f16c():
    """The integer float16 <-> float32 codecs (used where LLVM has no hardware conversion): decode every
    pattern exactly, encode float32 values (midpoints, neighbours, subnormals, overflow) like NumPy."""
    from numba import njit

    bits = np.arange(65536, dtype=np.uint16)
    decode = njit(lambda bs: [_numba._decode_f16_f32(b) for b in bs])
    got = np.array(decode(bits), dtype=np.float32)
    want = bits.view(F16).astype(np.float32)
    nan = np.isnan(want)
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(got[nan]).all()
    grid = np.unique(np.abs(want[np.isfinite(want)]).astype(np.float64))
    mids = ((grid[:-1] + grid[1:]) / 2).astype(np.float32)
    rng = np.random.default_rng(19)
    samples = np.concatenate([mids, np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0)),
                              (rng.standard_normal(20000) * 2.0 ** rng.integers(-30, 18, 20000)).astype(np.float32),
                              np.float32([65504, 65519.99, 65520, 1e9, np.inf, 0, 2.0**-25, 2.0**-26])])
    samples = np.concatenate([samples, -samples])
    encode = njit(lambda vs: [_numba._f16_bits_of_f32_bits(np.int64(_numba._f32_bits(v)) & 0xFFFFFFFF) for v in vs])
    with np.errstate(over="ignore"):
        want_bits = samples.astype(F16).view(np.uint16)
    np.testing.assert_array_equal(np.array(encode(samples), dtype=np.uint16), want_bits)


def test_bfloat16_interval_ends_round_half_away_from_zero():
    """The certified path rounds its interval's ends to bfloat16 by ``(bits + 0x8000) >> 16``: round to
    nearest even (``round_once``) everywhere but at a midpoint, which goes away from zero, for both signs,
    subnormals, the largest values (to inf) and zeros."""
    from numba import njit

    from ropeflow.backends._numpy import round_once

    row = np.zeros(1, np.int16)
    ends = njit(lambda r, vs: [_numba._round16(r, v) for v in vs])
    grid = _grid(BF16)
    mids = ((grid[:-1] + grid[1:]) / 2).astype(np.float32)  # every midpoint: 9 significant bits, exact
    mids = np.concatenate([mids, np.float32([(grid[-1] + 2.0**128) / 2, grid[0] / 2])])  # to inf; to zero
    rng = np.random.default_rng(23)
    others = np.concatenate([
        np.nextafter(mids, np.float32(np.inf)), np.nextafter(mids, np.float32(0)), grid.astype(np.float32),
        (rng.standard_normal(20000) * 2.0 ** rng.integers(-149, 128, 20000)).astype(np.float32),
        np.float32([0.0, 2.0**-149, 3.4e38, np.finfo(np.float32).max]),
    ])
    others = others[np.isfinite(others)]
    for sign in (1, -1):
        got = np.array(ends(row, sign * others), np.int16).view(np.uint16)
        want = round_once((sign * others).astype(np.float64), BF16).view(np.uint16)
        np.testing.assert_array_equal(got, want)
        got_mids = np.array(ends(row, sign * mids), np.int16).view(BF16).astype(np.float64)
        above = np.concatenate([grid[1:], [np.inf], [grid[0]]])  # the neighbour away from zero of each midpoint
        np.testing.assert_array_equal(got_mids, sign * above)


@pytest.mark.parametrize("dtype", [F16, BF16], ids=["float16", "bfloat16"])
def test_the_certified_path_certifies_nearly_every_result(dtype):
    """On model-like data the float32 interval decides almost every result (about 1 in 600 float16 and 1 in
    4000 bfloat16 results go to the float64 redo): a path that doubted everything would still give the right
    bits through the redo, so the bit-for-bit tests alone would not notice it."""
    from numba import njit

    @njit
    def doubtful(x1, x2, c, s, row):
        n = 0
        for i in range(x1.shape[0]):
            _, d1 = _numba._certified(row, x1[i], c[i], -x2[i], s[i])
            _, d2 = _numba._certified(row, x2[i], c[i], x1[i], s[i])
            n += (d1 != 0) + (d2 != 0)
        return n

    rng = np.random.default_rng(29)
    n = 200_000
    x1, x2 = (rng.standard_normal(n).astype(dtype).astype(np.float32) for _ in range(2))
    angles = rng.uniform(0, 8192, n) * 10.0 ** -rng.uniform(0, 4, n)
    c, s = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    row = np.zeros(1, np.uint16 if dtype == F16 else np.int16)
    rate = doubtful(x1, x2, c, s, row) / (2 * n)
    assert 0 < rate < (1 / 200 if dtype == F16 else 1 / 1000), rate


_CERTIFIED_END_TO_END = """
import numpy as np, ml_dtypes
from ropeflow import RotaryEmbedding, apply_rotary
from ropeflow.backends import _numba
assert _numba.FORCE_CERTIFIED_HALF
rng = np.random.default_rng(31)
rope = RotaryEmbedding(96, base=10000.0, max_position_embeddings=4096)
cos, sin = rope.cos_sin(4096, "float32")
for dtype in (np.float16, ml_dtypes.bfloat16):
    for layout in ("half", "interleaved", "deepseek"):
        for shape, seq_axis in (((2, 4, 37, 128), -2), ((1, 300, 8, 128), -3), ((3, 32, 512, 128), -2)):
            q = (rng.standard_normal(shape) * 10.0 ** rng.integers(-3, 3, shape)).astype(dtype)
            k = rng.standard_normal(shape).astype(dtype)
            n_seq = shape[seq_axis]
            positions = rng.integers(0, 4096 - n_seq, (shape[0], 1)) + np.arange(n_seq)
            for inverse in (False, True):
                kwargs = dict(layout=layout, seq_axis=seq_axis, inverse=inverse)
                got = apply_rotary(q, cos, sin, positions, backend="numba", **kwargs)
                want = apply_rotary(q, cos, sin, positions, backend="numpy", **kwargs)
                assert np.array_equal(got.view(np.uint16), want.view(np.uint16)), (dtype, layout, shape, inverse)
            if layout != "deepseek":  # in place, through the scratch tile
                inplace = q.copy()
                apply_rotary(inplace, cos, sin, positions, layout=layout, seq_axis=seq_axis, out=inplace,
                             backend="numba")
                want = apply_rotary(q, cos, sin, positions, layout=layout, seq_axis=seq_axis, backend="numpy")
                assert np.array_equal(inplace.view(np.uint16), want.view(np.uint16)), (dtype, layout, "in place")
            gq, gk = rope.apply(q, k, positions, seq_axis=seq_axis, layout=layout)  # q and k fused, partial rotary
            for x, g in ((q, gq), (k, gk)):
                w = apply_rotary(x, cos, sin, positions, layout=layout, seq_axis=seq_axis, backend="numpy")
                assert np.array_equal(g.view(np.uint16), w.view(np.uint16)), (dtype, layout, "fused")
# a float32 cos with a float64 sin takes the float64 path: the certified one needs float32 table values
for dtype, step in ((np.float16, 2.0**-10), (ml_dtypes.bfloat16, 2.0**-7)):
    x = np.zeros((1, 2, 3, 8), dtype)
    x[..., 4:] = 1  # x1 = 0, x2 = 1: the first half is -sin, exactly
    sin64 = np.full((3, 8), 1 + step / 2 + 2.0**-40)  # just above a midpoint, which float32 would round onto
    got = apply_rotary(x, np.full((3, 8), 0.5, np.float32), sin64, offset=0, backend="numba")
    assert (got[..., :4].astype(np.float64) == -(1 + step)).all(), (dtype, got[..., :4])
print("certified path: all equal")
"""


@pytest.mark.skipif(not (_numba.HARDWARE_F64_F16 or _numba.PREFER_512_BIT),
                    reason="this CPU runs float16 and bfloat16 on the certified path already")
def test_the_certified_path_end_to_end_where_the_cpu_skips_it(tmp_path):
    """On CPUs whose kernels rotate float16/bfloat16 in float64 (AVX512-FP16), a process with
    ROPEFLOW_NUMBA_CERTIFIED_HALF=1 (and its own Numba cache) runs the certified float32 path through every
    walk: layouts, head-major and token-major, inverse, in place, q and k fused with partial rotary, serial and
    parallel sizes. Bit for bit the NumPy backend."""
    import os
    import subprocess
    import sys

    env = dict(os.environ, ROPEFLOW_NUMBA_CERTIFIED_HALF="1", NUMBA_CACHE_DIR=str(tmp_path))
    done = subprocess.run([sys.executable, "-c", _CERTIFIED_END_TO_END], env=env, capture_output=True, text=True,
                          timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "all equal" in done.stdout


@pytest.mark.parametrize("layout", LAYOUTS)
def test_bfloat16_word_rows_are_rounded_once_at_ties_specials_and_subnormals(layout, monkeypatch):
    """bfloat16 word rows (parallel work) are computed in float32 and certified (``_words_certified``), a row
    with a doubt again in float64 and rounded through float32 with ties away from zero
    (``_bf16_word_checked``), and a row holding a bfloat16 midpoint there once more, exactly: the near-tie,
    special and tiny cases above give the formula's bits there too, and so do tables holding inf and NaNs
    of any payload (their tiles take the exact rounding: a payload's lower half would carry into the sign)."""
    monkeypatch.setattr(_numba, "BF16_WORDS", True)
    monkeypatch.setattr(_numba, "SERIAL_ELEMENTS", 0)
    taken = []
    word_views = _numba._word_views
    monkeypatch.setattr(_numba, "_word_views", lambda *arrays: taken.append(word_views(*arrays)) or taken[-1])
    x, cos, sin = _near_tie_case(BF16, 96, 64, seed=4)
    # the inputs do reach the rows that need the second rounding: float32 midpoints, on and beside the exact one
    first = _pairs(x, "half")[0].astype(np.float64) * cos[:, :32] - _pairs(x, "half")[1] * sin[:, :32]
    low = first.astype(np.float32).view(np.uint32) & 0xFFFF
    assert (low == 0x8000).sum() > 100 and ((low == 0x8000) & (first != first.astype(np.float32))).any()
    nan_cos = cos.copy()
    payloads = np.array([0x7FFFFFFF, 0xFFFFFFFF, 0x7FC0FFFF, 0x7F800001], np.uint32).view(np.float32)
    nan_cos[5, :4], nan_cos[40, 7], nan_cos[70, 3] = payloads, np.inf, -np.inf
    plain = np.random.default_rng(6).standard_normal(x.shape).astype(BF16)  # rows without ties
    cases = [(_in_layout(x, layout), cos, sin), (plain, nan_cos, sin), _specials_case(BF16), _tiny_case(BF16)]
    for case_x, case_cos, case_sin in cases:
        with np.errstate(all="ignore"):
            want = _reference(case_x, case_cos, case_sin, layout)
        taken.clear()
        _same_bits(apply_rotary(case_x[None], case_cos, case_sin, layout=layout, backend="numba")[0], want)
        assert taken and all(views is not None for views in taken)  # the word rows did the work


def _certified_words(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi):
    """``_words_certified`` over float32 arrays: (lower bfloat16 bits, upper bfloat16 bits, doubt)."""
    from numba import njit

    @njit
    def run(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi):
        words = np.empty(a_lo.shape[0], np.uint32)
        doubt = np.empty(a_lo.shape[0], np.bool_)
        for i in range(a_lo.shape[0]):
            words[i], doubt[i] = _numba._words_certified(a_lo[i], c_lo[i], b_lo[i], s_lo[i], a_hi[i], c_hi[i],
                                                         b_hi[i], s_hi[i], True, np.float32(0))
        return words, doubt

    words, doubt = run(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi)
    return (words & 0xFFFF).astype(np.uint16), (words >> 16).astype(np.uint16), doubt


def _bfloat16_operands(rng: np.random.Generator, n: int) -> tuple[np.ndarray, ...]:
    """``(a, c, b, s)`` float32 (``a`` and ``b`` bfloat16 values), ``n`` of each case: products on and within
    float32 roundings of bfloat16 midpoints (alone, and beside a tiny or a zero second term), cancellation,
    bfloat16 subnormal inputs, float32-subnormal table values (results far below float32's normal range),
    signed zeros, overflow, inf and NaN inputs, and model-like values."""
    grid = _grid(BF16)
    mid_grid = grid[(grid > 2.0**-100) & (grid < 2.0**100)]
    i = rng.integers(0, mid_grid.size - 1, n)
    mid = (mid_grid[i] + mid_grid[i + 1]) / 2
    a_tie = np.where(rng.random(n) < 0.3, 1.0, rng.choice(grid[(grid > 2.0**-8) & (grid < 2.0**8)], n))
    c_tie = (mid / a_tie).astype(np.float32)  # a*c on the midpoint (a = 1) or a float32 rounding beside it
    second = rng.choice([0.0, 1.0], n) * rng.choice(grid, n) * 2.0 ** rng.integers(-40, -8, n)
    s_tie = np.where(second == 0, rng.standard_normal(n), mid * 2.0**-20 / np.where(second == 0, 1.0, second))
    a_can = rng.choice(grid[(grid > 2.0**-30) & (grid < 2.0**30)], n)
    b_can = rng.choice(grid[(grid > 2.0**-30) & (grid < 2.0**30)], n)
    c_can = rng.standard_normal(n).astype(np.float32)
    s_can = (-a_can * c_can / b_can * (1 + rng.standard_normal(n) * 2.0 ** -rng.integers(4, 30, n))).astype(
        np.float32)  # b*s within a few bits of -a*c
    sub = grid[grid < 2.0**-120]  # bfloat16 subnormals and the smallest normals
    tiny_s = (rng.standard_normal(n) * 2.0 ** rng.integers(-149, -110, n)).astype(np.float32)
    specials = np.array([0.0, -0.0, np.inf, -np.inf, np.nan, grid[-1], -grid[-1], grid[0], -grid[0]])
    # the largest bfloat16 times 1 + 2**-8 (b = 0): finite in float32, above the last midpoint: decided as inf
    overflow = (np.full(n, grid[-1]), np.full(n, 1 + 2.0**-8), np.zeros(n), rng.standard_normal(n))
    normal = rng.standard_normal((4, n))
    angles = rng.uniform(0, 8192, n) * 10.0 ** -rng.uniform(0, 4, n)
    cases = [
        (a_tie, c_tie, second, s_tie),
        (a_can, c_can, b_can, s_can),
        (rng.choice(sub, n), rng.standard_normal(n), rng.choice(sub, n), rng.standard_normal(n)),
        (rng.choice(grid, n) * 2.0**-60, rng.standard_normal(n), rng.choice(grid, n) * 2.0**-60, tiny_s),
        (rng.choice(specials, n), np.cos(angles) * 1.7, rng.choice(specials, n), np.sin(angles) * 1.7),
        (normal[0], np.cos(angles), normal[1], np.sin(angles)),
        overflow,
    ]
    signs = [rng.choice([-1.0, 1.0], (2, n)) for _ in cases]
    a, c, b, s = (np.concatenate(parts) for parts in zip(*cases, strict=True))
    a = a * np.concatenate([sg[0] for sg in signs])
    b = b * np.concatenate([sg[1] for sg in signs])
    with np.errstate(all="ignore"):
        return (a.astype(BF16).astype(np.float32), c.astype(np.float32), b.astype(BF16).astype(np.float32),
                s.astype(np.float32))


def test_certified_bfloat16_words_are_the_reference_unless_in_doubt():
    """``_words_certified`` (bfloat16 word rows with float32 tables: float32 arithmetic, certified) gives the
    float64 formula's bits rounded once, ``round_once(fl64(a*c + b*s))``, wherever it does not report a doubt,
    for near-ties, cancellation, subnormal inputs and products far below float32's normal range (which its
    interval's floor covers), signed zeros, overflow and model-like data; it doubts every exact zero and every
    inf or NaN input; and it doubts rarely on model-like data (a path doubting everything would pass the
    bit-for-bit tests through the redo)."""
    rng = np.random.default_rng(31)
    n = 4000
    a, c, b, s = _bfloat16_operands(rng, n)
    order = (rng.permuted(np.arange(a.size).reshape(7, n), axis=1)).ravel()  # other operands, same case
    halves = (a, c, b, s), tuple(v[order] for v in (a, c, b, s))
    low, high, doubt = _certified_words(*halves[0], *halves[1])
    for got, (ha, hc, hb, hs) in zip((low, high), halves, strict=True):
        with np.errstate(all="ignore"):
            exact = ha.astype(np.float64) * hc + hb.astype(np.float64) * hs  # exact products, one rounding
            want = _round(exact, BF16).view(np.uint16)
        assert ((exact == 0) <= doubt).all()  # exact zeros: the ends straddle zero
        assert (~np.isfinite(ha) | ~np.isfinite(hb) <= doubt).all()
        decided = ~doubt
        np.testing.assert_array_equal(got[decided], want[decided])
    per_case = doubt.reshape(7, n)
    assert not per_case[6].any() and (low[6 * n:] & 0x7FFF == 0x7F80).all()  # decided overflow: +-inf
    assert per_case[0].mean() > 0.05  # the near-tie case does reach the doubtful results
    assert (~per_case[[0, 1, 3, 5]]).sum(axis=1).min() > n // 10  # and these cases have decided words
    # model-like data (dim-128 angles at positions below 8192): about 1 word in 1750 in doubt
    m = 100_000
    x = rng.standard_normal((4, m)).astype(BF16).astype(np.float32)
    angles = rng.uniform(0, 8192, (2, m)) * 10.0 ** -rng.uniform(0, 4, (2, m))
    cos, sin = np.cos(angles).astype(np.float32), np.sin(angles).astype(np.float32)
    rate = _certified_words(x[0], cos[0], x[1], sin[0], x[2], cos[1], x[3], sin[1])[2].mean()
    assert 0 < rate < 1 / 500, rate
