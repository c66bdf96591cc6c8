"""The Numba backend: parallel CPU kernels compiled on first use.

Table kernel, one row per parallel iteration, one (j, j + half) column pair per inner iteration, the same
decomposition as the CUDA kernel (thread <-> (row, j)):

    angle = float32(p / divisor) * inv_freq[j]      # float32 IEEE product (reference) or float64 (exact)
    c, s  = sincos(angle)                           # computed once, written to columns j and j + half

The sin/cos is a branch-free polynomial that LLVM vectorizes: the (float32 or float64) angle is reduced
modulo pi/2 in float64 with a three-part Cody-Waite split of pi/2 (the first two parts have 26 significant
bits, so ``k * part`` is exact for quadrant numbers ``k < 2**27``), then degree-17/18 Taylor polynomials
on ``|r| <= pi/4`` (truncation error below 5e-17) give float64 results that are rounded once to the table
dtype. Angles beyond ``2**27 * pi/2`` (only reachable in exact mode past ~2e8 positions) use a second
kernel with libm ``sin``/``cos``.

``fastmath`` is off: it lets LLVM contract and reassociate, which changes results.
"""

from __future__ import annotations

import math
import os
from typing import Any

import numpy as np

from .._errors import BackendUnavailableError
from .._xp import same_view
from ..scaling import Frequencies

try:
    import numba
    from numba import njit, prange
except ImportError as exc:  # pragma: no cover - exercised only without numba
    raise BackendUnavailableError(
        "backend 'numba': numba is not installed (pip install numba, or reinstall ropeflow)"
    ) from exc

# pi/2 = _PIO2_1 + _PIO2_2 + _PIO2_3, the first two with 26 significant bits.
_PIO2_1 = float.fromhex("0x1.921fb50000000p+0")
_PIO2_2 = float.fromhex("0x1.110b460000000p-26")
_PIO2_3 = float.fromhex("0x1.1a62633145c07p-54")
_TWO_OVER_PI = float.fromhex("0x1.45f306dc9c883p-1")
#: Largest |angle| the polynomial kernel reduces exactly (quadrant number below 2**27).
POLY_MAX_ANGLE = 2.0**27 * _PIO2_1 * 0.999

# Taylor coefficients (-1)^n / (2n+1)! and (-1)^n / (2n)!
_S = [(-1) ** n / math.factorial(2 * n + 1) for n in range(1, 9)]
_C = [(-1) ** n / math.factorial(2 * n) for n in range(1, 10)]
S1, S2, S3, S4, S5, S6, S7, S8 = _S
C1, C2, C3, C4, C5, C6, C7, C8, C9 = _C

_OPTIONS = dict(error_model="numpy", fastmath=False)


def _jit(**options: Any):
    """``njit(cache=True)``, falling back to no on-disk cache where no writable cache location exists
    (Numba raises RuntimeError when the decorator is applied in that case)."""

    def decorate(fn):
        try:
            return njit(cache=True, **_OPTIONS, **options)(fn)
        except RuntimeError:
            return njit(cache=False, **_OPTIONS, **options)(fn)

    return decorate


@_jit(inline="always")
def _sincos_poly(x):
    """(sin(x), cos(x)) in float64 for a float64 ``|x| < POLY_MAX_ANGLE``; branch-free."""
    k = np.floor(x * _TWO_OVER_PI + 0.5)
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    r2 = r * r
    s = r + r * r2 * (S1 + r2 * (S2 + r2 * (S3 + r2 * (S4 + r2 * (S5 + r2 * (S6 + r2 * (S7 + r2 * S8)))))))
    c = 1.0 + r2 * (C1 + r2 * (C2 + r2 * (C3 + r2 * (C4 + r2 * (C5 + r2 * (C6 + r2 * (C7 + r2 * (C8 + r2 * C9))))))))
    return _quadrant(k, s, c)


# Least-squares fits on 4000 Chebyshev nodes of |r| <= pi/4 (against 120-bit mpmath), in z = r*r:
#   sin(r) = r + r*z*(F1 + z*(F2 + z*(F3 + z*F4)))            max error 1.4e-11
#   cos(r) = 1 + z*(G1 + z*(G2 + z*(G3 + z*(G4 + z*G5))))     max error 9.8e-14
# Float32 results (half-ulp 3e-8 near 1) need no more; tests/test_numba_kernels.py checks both bounds.
F1, F2, F3, F4 = -0.16666666663521046, 0.00833333183123841, -0.00019840072542457897, 2.7248599224290095e-06
G1, G2, G3, G4, G5 = (-0.49999999999681843, 0.04166666657644084, -0.0013888881534169298, 2.4799093301707334e-05,
                      -2.7181741468849246e-07)


@_jit(inline="always")
def _sincos_poly_f32(x):
    """(sin(x), cos(x)) in float64, accurate to 2e-11 absolute: enough to round to float32 (ulp 6e-8)."""
    k = np.floor(x * _TWO_OVER_PI + 0.5)
    r = ((x - k * _PIO2_1) - k * _PIO2_2) - k * _PIO2_3
    z = r * r
    s = r + r * z * (F1 + z * (F2 + z * (F3 + z * F4)))
    c = 1.0 + z * (G1 + z * (G2 + z * (G3 + z * (G4 + z * G5))))
    return _quadrant(k, s, c)


@_jit(inline="always")
def _quadrant(k, s, c):
    """(sin, cos) of ``r + k * pi/2`` from ``s = sin(r)``, ``c = cos(r)``, with selects, no branches."""
    q = np.int32(k) & 3
    swap = (q & 1) == 1
    sv = c if swap else s
    cv = s if swap else c
    sv = -sv if (q & 2) == 2 else sv
    cv = -cv if ((q + 1) & 2) == 2 else cv
    return sv, cv


@_jit(parallel=True)
def _table_rows_f32(inv_freq, start, divisor, scale, use_divisor, use_scale, use_libm, cos_out, sin_out):
    """Reference precision: float32 angle, float32 tables (cos/sin rounded once from float64)."""
    rows = cos_out.shape[0]
    half = inv_freq.shape[0]
    for i in prange(rows):
        t = np.float32(start + i)
        if use_divisor:
            t = t / divisor
        for j in range(half):
            a = np.float64(t * inv_freq[j])
            if use_libm:
                s, c = math.sin(a), math.cos(a)
            else:
                s, c = _sincos_poly_f32(a)
            cf = np.float32(c)
            sf = np.float32(s)
            if use_scale:
                cf = cf * scale
                sf = sf * scale
            cos_out[i, j] = cf
            cos_out[i, j + half] = cf
            sin_out[i, j] = sf
            sin_out[i, j + half] = sf


@_jit(parallel=True)
def _table_rows_f64(inv_freq, start, divisor, scale, use_libm, cos_out, sin_out):
    """Exact precision: float64 angle and sin/cos, rounded once to the table dtype (float32 or float64)."""
    rows = cos_out.shape[0]
    half = inv_freq.shape[0]
    for i in prange(rows):
        t = np.float64(start + i) / divisor
        for j in range(half):
            a = t * inv_freq[j]
            if use_libm:
                s, c = math.sin(a), math.cos(a)
            else:
                s, c = _sincos_poly(a)
            c = c * scale
            s = s * scale
            cos_out[i, j] = c
            cos_out[i, j + half] = c
            sin_out[i, j] = s
            sin_out[i, j + half] = s


# ------------------------------------------------------------------------------------------- rotation
# Numba has no float16 or bfloat16: such arrays are passed as uint16 views and decoded/encoded here with
# round-to-nearest-even, directly from the float64 result (one rounding).
_F16 = (10, 15)  # (mantissa bits, exponent bias)
_BF16 = (7, 127)


@_jit(inline="always")
def _load_float(v):
    return np.float64(v)


@_jit(inline="always")
def _store_float(v):
    return v


@_jit(inline="always")
def _decode(bits, mant_bits, bias):
    sign = -1.0 if (bits >> (mant_bits + 5 if mant_bits == 10 else mant_bits + 8)) & 1 else 1.0
    exp_mask = 31 if mant_bits == 10 else 255
    e = (bits >> mant_bits) & exp_mask
    m = bits & ((1 << mant_bits) - 1)
    if e == exp_mask:
        return sign * np.inf if m == 0 else np.nan
    if e == 0:
        return sign * math.ldexp(np.float64(m), 1 - bias - mant_bits)
    return sign * math.ldexp(np.float64(m + (1 << mant_bits)), e - bias - mant_bits)


@_jit(inline="always")
def _encode(v, mant_bits, bias):
    exp_mask = 31 if mant_bits == 10 else 255
    sign_bit = 1 << (mant_bits + (5 if mant_bits == 10 else 8))
    if v != v:
        return np.uint16((exp_mask << mant_bits) | (1 << (mant_bits - 1)))
    sign = sign_bit if v < 0 or (v == 0 and math.copysign(1.0, v) < 0) else 0
    a = abs(v)
    if a == 0:
        return np.uint16(sign)
    if a == np.inf:
        return np.uint16(sign | (exp_mask << mant_bits))
    _, e2 = math.frexp(a)  # a = f * 2**e2, f in [0.5, 1)
    e = max(e2 - 1, 1 - bias)  # unbiased exponent, clamped to the subnormal range
    q = np.int64(np.rint(math.ldexp(a, mant_bits - e)))  # significand with the hidden bit, rounded half-even
    biased = e + bias if q >= (1 << mant_bits) else 0
    if biased == 0:
        bits = q  # subnormal (q == 1 << mant_bits rolls over into the smallest normal by itself)
    else:
        bits = (biased << mant_bits) + (q - (1 << mant_bits))  # q == 2 << mant_bits carries into the exponent
    if bits >= (exp_mask << mant_bits):
        bits = exp_mask << mant_bits  # overflow: infinity
    return np.uint16(sign | bits)


@_jit(inline="always")
def _load_f16(bits):
    return _decode(np.int64(bits), 10, 15)


@_jit(inline="always")
def _store_f16(v):
    return _encode(v, 10, 15)


@_jit(inline="always")
def _load_bf16(bits):
    return _decode(np.int64(bits), 7, 127)


@_jit(inline="always")
def _store_bf16(v):
    return _encode(v, 7, 127)


@_jit(parallel=True)
def _apply_rows(x, out, cos, sin, positions, layout, rotary_dim, sign, copy_rest, load, store):
    """One parallel iteration per (batch, head, seq) row, one rotated pair per inner iteration (the CUDA
    kernel's decomposition). x, out: (B, H, S, D), any strides; positions: (B, S) rows of cos/sin.
    layout: 0 "half", 1 "interleaved", 2 "deepseek" (a separate inner loop each, so LLVM sees unit strides)."""
    n_batch, n_heads, n_seq, head_dim = x.shape
    half = rotary_dim // 2
    per_batch = n_heads * n_seq
    for r in prange(n_batch * per_batch):
        b = r // per_batch
        h = (r - b * per_batch) // n_seq
        s = r - b * per_batch - h * n_seq
        p = positions[b, s]
        xr = x[b, h, s]
        orow = out[b, h, s]
        crow = cos[p]
        srow = sin[p]
        if layout == 0:
            for j in range(half):
                c = np.float64(crow[j])
                sn = sign * np.float64(srow[j])
                x1 = load(xr[j])
                x2 = load(xr[j + half])
                orow[j] = store(x1 * c - x2 * sn)
                orow[j + half] = store(x2 * c + x1 * sn)
        elif layout == 1:
            for j in range(half):
                c = np.float64(crow[j])
                sn = sign * np.float64(srow[j])
                x1 = load(xr[2 * j])
                x2 = load(xr[2 * j + 1])
                orow[2 * j] = store(x1 * c - x2 * sn)
                orow[2 * j + 1] = store(x2 * c + x1 * sn)
        else:
            for j in range(half):
                c = np.float64(crow[j])
                sn = sign * np.float64(srow[j])
                x1 = load(xr[2 * j])
                x2 = load(xr[2 * j + 1])
                orow[j] = store(x1 * c - x2 * sn)
                orow[j + half] = store(x2 * c + x1 * sn)
        if copy_rest:
            for k in range(rotary_dim, head_dim):
                orow[k] = xr[k]


_LAYOUT_CODES = {"half": 0, "interleaved": 1, "deepseek": 2}
_CODECS = {"float16": (_load_f16, _store_f16), "bfloat16": (_load_bf16, _store_bf16)}


class NumbaBackend:
    name = "numba"
    is_host = True

    def __init__(self) -> None:
        self.version = numba.__version__
        self.threads = numba.config.NUMBA_NUM_THREADS if hasattr(numba, "config") else os.cpu_count()

    def empty(self, shape: tuple[int, ...], dtype: Any, device: Any = "cpu") -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def prepare(self, freqs: Frequencies, device: Any = "cpu") -> Frequencies:
        return freqs

    def build_rows(self, freqs: Frequencies, start: int, cos_out: np.ndarray, sin_out: np.ndarray) -> None:
        rows = cos_out.shape[0]
        if rows == 0:
            return
        inv_freq = freqs.inv_freq
        last = (start + rows - 1) / freqs.position_divisor
        use_libm = bool(last * float(np.max(np.abs(inv_freq), initial=0.0)) >= POLY_MAX_ANGLE)
        if inv_freq.dtype == np.float32:
            divisor = np.float32(freqs.position_divisor)
            scale = np.float32(freqs.attention_scaling)
            _table_rows_f32(inv_freq, start, divisor, scale, bool(divisor != 1), bool(scale != 1), use_libm,
                           cos_out, sin_out)
        else:
            _table_rows_f64(inv_freq, start, float(freqs.position_divisor), float(freqs.attention_scaling),
                           use_libm, cos_out, sin_out)


    def apply(self, x: np.ndarray, out: np.ndarray, cos: np.ndarray, sin: np.ndarray, positions: np.ndarray,
              layout: str, rotary_dim: int, inverse: bool) -> None:
        """Rotate ``x`` into ``out`` in one fused pass (see :func:`_apply_rows`). Strided views are read in
        place; only an in-place "deepseek" call (which permutes channels within a row) copies ``x`` first."""
        copy_rest = rotary_dim < x.shape[-1] and not same_view(x, out)
        if layout == "deepseek" and np.may_share_memory(x, out):
            x = x.copy()  # channels move within a row: an in-place permutation needs the input intact
        name = x.dtype.name
        if name in _CODECS:
            load, store = _CODECS[name]
            x, out = x.view(np.uint16), out.view(np.uint16)
        else:
            load, store = _load_float, _store_float
        _apply_rows(x, out, cos, sin, positions, _LAYOUT_CODES[layout], rotary_dim, -1.0 if inverse else 1.0,
                    copy_rest, load, store)


def make_backend() -> NumbaBackend:
    return NumbaBackend()
