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

Threads and forks: the parallel kernels are launched through :mod:`._numba_threads`, which serializes
launches under numba's non-thread-safe ``workqueue`` layer and runs bit-identical serial twins in a child
forked after a non-fork-safe layer (GNU OpenMP) started.
"""

from __future__ import annotations

import math
import os
import sys
from typing import Any

import numpy as np

from .._errors import BackendUnavailableError
from .._xp import same_view
from ..scaling import Frequencies

try:
    import numba
    from llvmlite import ir as llvm_ir
    from numba import njit, prange
    from numba.core import cgutils, types
    from numba.extending import intrinsic, overload
except ImportError as exc:  # pragma: no cover - exercised only without numba
    raise BackendUnavailableError(
        "backend 'numba': numba is not installed (pip install numba, or reinstall ropeflow)"
    ) from exc

from ._numba_cache import lock_cache_file  # noqa: E402  (needs numba)
from ._numba_threads import parallel_kernel  # noqa: E402  (needs numba)

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
            # the cache's saves and loads locked against other processes compiling at the same time
            return lock_cache_file(njit(cache=True, **_OPTIONS, **options)(fn))
        except RuntimeError:
            return njit(cache=False, **_OPTIONS, **options)(fn)

    return decorate


#: Decorator for the parallel kernels: thread- and fork-safe launches with a bit-identical serial twin
#: (see :mod:`._numba_threads`).
_parallel_kernel = parallel_kernel(_jit)


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


@_parallel_kernel
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


@_parallel_kernel
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


def _bitcast(source: Any, target: Any, llvm_target: Any, doc: str) -> Any:
    """A Numba intrinsic reinterpreting the IEEE bits of a ``source`` scalar as ``target`` (an LLVM bitcast:
    vectorizable, no memory round trip)."""

    def typer(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(args[0], llvm_target)

        return target(source), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


_f64_bits = _bitcast(types.float64, types.int64, llvm_ir.IntType(64), "float64 -> its bits as an int64")
_bits_f64 = _bitcast(types.int64, types.float64, llvm_ir.DoubleType(), "int64 bits -> the float64")
_f32_bits = _bitcast(types.float32, types.int32, llvm_ir.IntType(32), "float32 -> its bits as an int32")
_bits_f32 = _bitcast(types.int32, types.float32, llvm_ir.FloatType(), "int32 bits -> the float32")


@intrinsic
def _f16_to_f64(typingctx, x):
    """float16 bits (uint16) -> float64 through LLVM's half type (F16C where the CPU has it); exact."""
    sig = types.float64(types.uint16)

    def codegen(context, builder, signature, args):
        half = builder.bitcast(args[0], llvm_ir.HalfType())
        return builder.fpext(half, llvm_ir.DoubleType())

    return sig, codegen


@_jit(inline="always")
def _decode(bits, mant_bits, bias):
    """float16 / bfloat16 bits (as int64) -> the exact float64 value, by rebuilding float64 bits."""
    exp_mask = 31 if mant_bits == 10 else 255
    sign = (bits >> (mant_bits + (5 if mant_bits == 10 else 8))) & 1
    e = (bits >> mant_bits) & exp_mask
    m = bits & ((1 << mant_bits) - 1)
    if e == 0:  # zero or subnormal: m * 2**(1 - bias - mant_bits), exact in float64
        v = np.float64(m) * _bits_f64(np.int64(1023 + 1 - bias - mant_bits) << 52)
        return -v if sign else v
    e64 = 2047 if e == exp_mask else e - bias + 1023
    return _bits_f64((sign << 63) | (np.int64(e64) << 52) | (np.int64(m) << (52 - mant_bits)))


@_jit(inline="always")
def _encode(v, mant_bits, bias):
    """float64 -> float16 / bfloat16 bits, rounded once to nearest even (overflow to inf, NaN kept quiet)."""
    exp_mask = 31 if mant_bits == 10 else 255
    shift = 52 - mant_bits
    b = _f64_bits(v)
    sign = 0x8000 if b < 0 else 0
    a = b & 0x7FFFFFFFFFFFFFFF
    e64 = a >> 52
    mant = a & ((np.int64(1) << 52) - 1)
    if e64 == 2047:  # inf or NaN
        h = (exp_mask << mant_bits) | ((1 << (mant_bits - 1)) if mant != 0 else 0)
        return np.uint16(sign | h)
    e = e64 - 1023 + bias
    if e >= 1:
        h = (e << mant_bits) | (mant >> shift)
        rem = mant & ((np.int64(1) << shift) - 1)
        halfway = np.int64(1) << (shift - 1)
    elif e > -(mant_bits + 1):
        full = mant | (np.int64(1) << 52)
        sub_shift = shift + 1 - e
        h = full >> sub_shift
        rem = full & ((np.int64(1) << sub_shift) - 1)
        halfway = np.int64(1) << (sub_shift - 1)
    else:  # below half the smallest subnormal: rounds to zero
        return np.uint16(sign)
    if rem > halfway or (rem == halfway and (h & 1) == 1):
        h += 1  # a carry into the exponent is the correct rounding (up to inf)
    if h > (exp_mask << mant_bits):
        h = exp_mask << mant_bits
    return np.uint16(sign | h)


@_jit(inline="always")
def _odd_f32_bits(v):
    """float64 ``v`` rounded to float32 *to odd* (truncate toward zero, then set the last bit if anything was
    dropped), as int32 bits. Rounding that once more to a format with at least two bits fewer (float16: 11,
    bfloat16: 8 significant bits; float32 has 24 at every exponent they reach) equals rounding ``v`` once:
    the odd bit stands for the dropped tail, which can then never look like an exact halfway point."""
    f = np.float32(v)
    bits = _f32_bits(f)
    inexact = np.float64(f) != v  # NaN too: harmless, the last mantissa bit of a NaN is free
    toward_zero = inexact and abs(np.float64(f)) > abs(v)
    bits = bits - np.int32(1) if toward_zero else bits
    return bits | np.int32(1) if inexact else bits


# float32 <-> float16 with integer and float32 operations only, so that LLVM vectorizes them where the CPU has
# no hardware half conversions (LLVM's become scalar library calls there; see HARDWARE_F16). After F. Giesen's
# float_to_half_fast3_rtne / half_to_float.
_F16_MAX_AS_F32 = (127 + 16) << 23  # 2**16: at and above it float16 overflows
_F32_INF = 255 << 23
_F16_NORMAL_MIN_AS_F32 = 113 << 23  # 2**-14, the smallest normal float16
_DENORM_MAGIC = ((127 - 15) + (23 - 10) + 1) << 23  # 0.5: adding it rounds to float16's subnormal spacing
_REBIAS = (15 - 127) << 23


@_jit(inline="always")
def _encode_f16(v):
    """float64 -> float16 bits (uint16), rounded once to nearest even: branch-free (selects), vectorizable.
    ``v`` is first rounded to float32 to odd, then that to float16 to nearest even (one rounding overall)."""
    return _f16_bits_of_f32_bits(np.int64(_odd_f32_bits(v)) & 0xFFFFFFFF)


@_jit(inline="always")
def _f16_bits_of_f32_bits(f):
    """float32 bits (in the low 32 bits of an int64) -> float16 bits (uint16), rounded to nearest even."""
    sign = (f >> 16) & 0x8000
    a = f & 0x7FFFFFFF
    special = 0x7E00 if a > _F32_INF else 0x7C00  # NaN stays a quiet NaN; inf and overflow give inf
    sub = np.int64(_f32_bits(_bits_f32(np.int32(a)) + _bits_f32(np.int32(_DENORM_MAGIC)))) - _DENORM_MAGIC
    normal = (a + _REBIAS + 0xFFF + ((a >> 13) & 1)) >> 13
    h = special if a >= _F16_MAX_AS_F32 else (sub if a < _F16_NORMAL_MIN_AS_F32 else normal)
    return np.uint16(h | sign)


@_jit(inline="always")
def _decode_f16_f32(bits):
    """float16 bits (uint16) -> float32, exactly: the exponent moved into float32's, subnormals rescaled by
    an exact float32 multiply, inf/NaN kept."""
    h = np.int32(bits)
    em = h & 0x7FFF
    f = _bits_f32(np.int32(em << 13)) * np.float32(2.0**112)  # normal and subnormal values, exact
    f = _bits_f32(np.int32((em << 13) | _F32_INF)) if em >= 0x7C00 else f
    return -f if (h & 0x8000) != 0 else f


@_jit(inline="always")
def _decode_f16(bits):
    """float16 bits (uint16) -> float64, exactly (see :func:`_decode_f16_f32`)."""
    return np.float64(_decode_f16_f32(bits))


def _to_half_bits(source: Any, doc: str) -> Any:
    """A Numba intrinsic rounding a ``source`` float to float16 by LLVM's ``fptrunc ... to half`` (to nearest
    even), returning its bits as a uint16."""

    def typer(typingctx, x):
        def codegen(context, builder, signature, args):
            return builder.bitcast(builder.fptrunc(args[0], llvm_ir.HalfType()), llvm_ir.IntType(16))

        return types.uint16(source), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


_f32_to_f16 = _to_half_bits(types.float32, """float32 -> float16 bits (vcvtps2ph with F16C, fcvt on AArch64;
LLVM turns ``fptrunc double to half`` into a scalar library call where the CPU has no AVX512-FP16).""")


#: x86 features that every AArch64 CPU has an equivalent of (float16 conversions, fused multiply-add).
_AARCH64_HAS = ("f16c", "fma")


def _cpu_has(feature: str) -> bool:
    """Whether the CPU numba compiles for has ``feature`` (an LLVM x86 feature name such as "f16c", "fma" or
    "avx512fp16"). AArch64 counts as having the first two (:data:`_AARCH64_HAS`) and none of the others."""
    import platform

    if platform.machine().lower() in ("aarch64", "arm64"):
        return feature in _AARCH64_HAS
    features = numba.config.CPU_FEATURES
    if features is not None:
        return f"+{feature}" in features.split(",")
    from llvmlite import binding

    try:
        return bool(binding.get_host_cpu_features().get(feature, False))
    except RuntimeError:  # pragma: no cover - feature detection unavailable on this host
        return False


def _hardware_f16() -> bool:
    """Whether LLVM converts float32 <-> float16 in hardware for the CPU numba compiles for (F16C on x86;
    always on AArch64). Elsewhere the half conversions are library calls: the integer codecs are faster."""
    return _cpu_has("f16c")


#: Compile the F16C codecs (read at compile time; numba's cache is keyed by the CPU and its features).
HARDWARE_F16 = _hardware_f16()
#: float64 -> float16 in one hardware rounding (AVX512-FP16's vcvtpd2ph). Where the CPU has it, float16 rows
#: take the float64 path (see :func:`_is_narrow`), which then costs about as much as float32's.
HARDWARE_F64_F16 = _cpu_has("avx512fp16")
_f64_to_f16 = _to_half_bits(types.float64, """float64 -> float16 bits, rounded once: one vcvtpd2ph with
AVX512-FP16 (NaN stays a quiet NaN, overflow gives inf, subnormals are exact). Only compiled where
:data:`HARDWARE_F64_F16`: elsewhere LLVM makes it a scalar library call.""")


@_jit(inline="always")
def _encode_f16_hw(v):
    """float64 -> float16 bits (uint16), rounded once to nearest even, with the hardware float32 -> float16
    conversion. ``v`` is first cut to float32's 24 significant bits *to odd* on its float64 bits (the 29
    dropped bits truncated, the lowest kept bit set if any of them was set), which converts to float32 exactly
    wherever float16 is not already decided (|v| < 2**-126 converts to a float32 that rounds to zero in
    float16, |v| >= 2**128 to inf); float32 -> float16 to nearest even then rounds once overall (float16 has
    13 bits fewer, see :func:`_odd_f32_bits`). NaN: float16's default quiet NaN with ``v``'s sign."""
    b = _f64_bits(v)
    low = b & np.int64(0x1FFFFFFF)
    odd = (b - low) | ((low + np.int64(0x1FFFFFFF)) & np.int64(0x20000000))
    odd = ((b & np.int64(-0x8000000000000000)) | np.int64(0x7FF8000000000000)) if v != v else odd
    return _f32_to_f16(np.float32(_bits_f64(odd)))


# float64 -> bfloat16 by one float64 addition at bfloat16's spacing (4-lane float64 operations, no branch).
_F64_EXP_MASK = 2047 << 52
_BF16_SPACING_SCALE = 2.0**45  # 2**45 times |v|'s power of two: adding it leaves bfloat16's 8 significant bits
_BF16_SPACING_EXPONENT = 45 << 52  # the same scaling, added to the exponent field
#: ulp(2**-81) = 2**-133, bfloat16's subnormal spacing: the smallest adder (see _encode_bf16)
_BF16_SUB_MAGIC = 2.0**-81
#: The largest adder: any |v| that would need more rounds to at least 2**155, inf in bfloat16 (see _encode_bf16)
_BF16_MAGIC_CAP = 2.0**200


@_jit(inline="always")
def _encode_bf16(v):
    """float64 -> bfloat16 bits (as int16), rounded once to nearest even, branch-free and vectorizable.

    With ``|v|`` in ``[2**e, 2**(e+1))`` and ``m = 2**(e+45)``, ``|v| + m`` lies in ``[2**(e+45), 2**(e+46)]``,
    where float64's spacing is ``2**(e-7)``, bfloat16's at ``|v|``; the addition rounds ``|v|`` to that
    spacing, to nearest even (the last bit of the sum is the last bit of ``|v|``'s 8-bit significand, ``m``
    having none there), and subtracting ``m`` is exact (Sterbenz). ``m`` is at least ``2**-81`` (spacing
    ``2**-133``, bfloat16's subnormal one, below ``2**-126``) and at most ``2**200``: a capped ``m`` (``|v| >=
    2**156``, inf and NaN included) leaves ``r`` at least ``2**155`` (or inf, or NaN) however the two
    operations round. ``r`` is a bfloat16 value (or at least ``2**128``), so its float32 conversion is
    exact (or inf, the correct overflow) and bfloat16's bits are the float32's upper half. A NaN stays a NaN:
    x86 and AArch64 (outside default-NaN mode) return a quiet NaN from the addition, the subtraction and the
    float32 conversion, keeping the payload's upper bits, and nothing here is one that LLVM folds away
    (fastmath off). float32's quiet bit lies in the upper half, so the result is a quiet bfloat16 NaN. The
    sign is ``v``'s, zeros included. Assumes no flush-to-zero (float32 subnormal results)."""
    return np.int16(_bf16_rounded_at(v, _bf16_adder(v)) >> np.int32(16))


@_jit(inline="always")
def _bf16_adder(v):
    """:func:`_encode_bf16`'s ``m`` for any ``v``."""
    a = _f64_bits(v) & np.int64(0x7FFFFFFFFFFFFFFF)
    # 2**e from |v|'s exponent bits (0 for zeros and subnormals, inf for inf and NaN), scaled in float64:
    # no integer overflow for any input
    return min(max(_bits_f64(a & np.int64(_F64_EXP_MASK)) * _BF16_SPACING_SCALE, _BF16_SUB_MAGIC), _BF16_MAGIC_CAP)


@_jit(inline="always")
def _encode_bf16_bounded(v):
    """:func:`_encode_bf16` for ``v`` finite with ``|v| < 2**979``, or inf, or NaN (a float16 or bfloat16
    input rotated by float32 tables gives ``|v| < 2**257``): the same bits, one vector instruction fewer.

    ``m = 2**(e+45)`` is made by adding 45 to ``|v|``'s exponent field as an integer (an addition instead of
    a multiplication, and no minimum for the cap). For finite ``|v| < 2**979`` the field stays below 2047, so ``m``
    is that power of two (the cap was never reached below ``2**156``; above it both give ``r >= 2**156``,
    inf in float32). For inf and NaN (field 2047) the sum (an unsigned addition, so no overflow) reaches the
    sign bit: ``m`` is a tiny negative number, the floor makes it ``2**-81``, and ``r`` is inf or the NaN, as
    before."""
    return np.int16(_bf16_rounded_at(v, _bf16_adder_bounded(v)) >> np.int32(16))


@_jit(inline="always")
def _bf16_adder_bounded(v):
    """:func:`_encode_bf16_bounded`'s ``m``."""
    # unsigned: Numba marks signed additions no-signed-wrap, which would leave inf and NaN's sum undefined
    exponent = np.uint64(_f64_bits(v) & np.int64(_F64_EXP_MASK))
    return max(_bits_f64(np.int64(exponent + np.uint64(_BF16_SPACING_EXPONENT))), _BF16_SUB_MAGIC)


@_jit(inline="always")
def _bf16_rounded_at(v, m):
    """The float32 bits (int32) of ``v`` rounded at the spacing of ``m`` (see :func:`_encode_bf16`): ``(|v| +
    m) - m`` with ``v``'s sign; their upper half is the bfloat16, their lower half zero (NaN: any payload)."""
    b = _f64_bits(v)
    r = (_bits_f64(b & np.int64(0x7FFFFFFFFFFFFFFF)) + m) - m
    r = _bits_f64(_f64_bits(r) | (b & np.int64(-0x8000000000000000)))
    return _f32_bits(np.float32(r))


def _bf16_word(low, high, table_kind):
    """Two float64 values rounded once to bfloat16 and packed into one uint32 word, ``low`` in its lower half
    (the lower address on a little-endian CPU): a pair of adjacent channels of a bfloat16 row. ``table_kind``
    (see :func:`_table_kind`) float32 takes the bounded encoder's adder."""


@overload(_bf16_word, inline="always")
def _bf16_word_impl(low, high, table_kind):
    adder = _bf16_adder_bounded if table_kind == types.float32 else _bf16_adder

    def word(low, high, table_kind):
        lo_bits = np.uint32(_bf16_rounded_at(low, adder(low)))
        hi_bits = np.uint32(_bf16_rounded_at(high, adder(high)))
        return np.uint32((lo_bits >> np.uint32(16)) | (hi_bits & np.uint32(0xFFFF0000)))

    return word


@_jit(inline="always")
def _word_low(word):
    """The bfloat16 in a uint32 word's lower half (the channel at the lower address), as float32 (exact)."""
    return _bits_f32(np.int32(np.uint32(word) << np.uint32(16)))


@_jit(inline="always")
def _word_high(word):
    """The bfloat16 in a uint32 word's upper half, as float32 (exact)."""
    return _bits_f32(np.int32(np.uint32(word) & np.uint32(0xFFFF0000)))


@_jit(inline="always")
def _decode_bf16(bits):
    """bfloat16 bits (int16) -> float64, exactly: the upper half of a float32."""
    return np.float64(_bits_f32(np.int32(bits) << 16))


# Rotation rows read their inputs (input rows, table rows) and write their outputs (output rows, doubt flags)
# through these two intrinsics, which tag the loads with an LLVM alias scope and the stores as not aliasing it.
# The kernel guarantees it: in-place rotations read a scratch copy, partly overlapping outputs and inputs are
# copied apart by the caller, and the tables are tiles of the kernel's own. Without the tags LLVM guards every
# vectorized row loop with runtime overlap checks between each store stream and each load stream (about 90
# instructions per row of 128 channels).

#: Vectorize the rotation loops 512 bits wide (8 float64 or 16 float32 lanes) where the CPU has AVX512-FP16,
#: i.e. Sapphire Rapids or a later Xeon, whose cores do not slow their clock for 512-bit work the way the
#: first AVX-512 Xeons did (LLVM prefers 256-bit vectors on every Intel AVX-512 CPU because of those). Read at
#: compile time; figures in docs/backends.md.
PREFER_512_BIT = HARDWARE_F64_F16 and issubclass(llvm_ir.values.FunctionAttributes, set)


def _prefer_512_bit(function: Any) -> None:
    """Give an LLVM function (the one a rotation loop is generated into) the attribute that lets LLVM use
    512-bit vectors in it. llvmlite checks enum attributes against a fixed list and has no key-value ones, but
    its attribute set is a ``set`` printed as written: the string attribute goes in through the set itself
    (:data:`PREFER_512_BIT` is False where llvmlite's attribute set is not a ``set``)."""
    set.add(function.attributes, '"prefer-vector-width"="512"')


def _alias_lists(module: Any) -> tuple[Any, Any]:
    """``(inputs, outputs)``: the scope lists for the tags (one domain, one scope each)."""
    domain = module.add_metadata([llvm_ir.MetaDataString(module, "ropeflow rotation rows")])
    inputs = module.add_metadata([llvm_ir.MetaDataString(module, "ropeflow rotation inputs"), domain])
    outputs = module.add_metadata([llvm_ir.MetaDataString(module, "ropeflow rotation outputs"), domain])
    return module.add_metadata([inputs]), module.add_metadata([outputs])


def _row_pointer(context: Any, builder: Any, arrty: Any, arr: Any, idxty: Any, idx: Any) -> Any:
    """The address of ``arr[idx]`` for the tagged load and store (any stride, no wraparound)."""
    ary = context.make_array(arrty)(context, builder, arr)
    index = context.cast(builder, idx, idxty, types.intp)
    return cgutils.get_item_pointer(context, builder, arrty, ary, [index], wraparound=False)


@intrinsic
def _load_in(typingctx, arr, idx):
    """``arr[idx]`` (a 1-D array, any stride; ``idx`` in range, no wraparound) tagged as a rotation input."""
    sig = arr.dtype(arr, idx)

    def codegen(context, builder, signature, args):
        arrty, idxty = signature.args
        value = builder.load(_row_pointer(context, builder, arrty, args[0], idxty, args[1]))
        if PREFER_512_BIT:
            _prefer_512_bit(builder.function)
        inputs, outputs = _alias_lists(builder.module)
        value.set_metadata("alias.scope", inputs)
        value.set_metadata("noalias", outputs)
        return value

    return sig, codegen


@intrinsic
def _store_out(typingctx, arr, idx, value):
    """``arr[idx] = value`` (``value`` of ``arr``'s dtype) tagged as a rotation output."""
    sig = types.void(arr, idx, value)

    def codegen(context, builder, signature, args):
        arrty, idxty, valty = signature.args
        store = builder.store(context.cast(builder, args[2], valty, arrty.dtype),
                              _row_pointer(context, builder, arrty, args[0], idxty, args[1]))
        inputs, outputs = _alias_lists(builder.module)
        store.set_metadata("alias.scope", outputs)
        store.set_metadata("noalias", inputs)
        return context.get_dummy_value()

    return sig, codegen


def _get(row, i):
    """``row[i]`` as float64; float16 rows arrive as uint16 views, bfloat16 rows as int16 views."""


def _put(row, i, v, table_kind):
    """``row[i] = v`` rounded once from float64 to the row's dtype (uint16: float16, int16: bfloat16).
    ``table_kind`` (see :func:`_table_kind`): float32 when ``v`` is a rotation of a float16/bfloat16 input by
    float32 tables, whose bound lets bfloat16 take :func:`_encode_bf16_bounded`."""


@overload(_get)
def _get_impl(row, i):
    if row.dtype == types.uint16:
        if HARDWARE_F16:
            return lambda row, i: _f16_to_f64(_load_in(row, i))
        return lambda row, i: _decode_f16(_load_in(row, i))
    if row.dtype == types.int16:
        return lambda row, i: _decode_bf16(_load_in(row, i))
    return lambda row, i: np.float64(_load_in(row, i))


@overload(_put)
def _put_impl(row, i, v, table_kind):
    if row.dtype == types.uint16:
        encode = _f64_to_f16 if HARDWARE_F64_F16 else (_encode_f16_hw if HARDWARE_F16 else _encode_f16)

        def put_f16(row, i, v, table_kind):
            _store_out(row, i, encode(v))

        return put_f16
    if row.dtype == types.int16:
        encode_bf16 = _encode_bf16_bounded if table_kind == types.float32 else _encode_bf16

        def put_bf16(row, i, v, table_kind):
            _store_out(row, i, encode_bf16(v))

        return put_bf16

    def put_float(row, i, v, table_kind):
        _store_out(row, i, v)

    return put_float


# ------------------------------------------------------------ float16 / bfloat16 in float32, certified
# float16 and bfloat16 rows with float32 tables, where the CPU has no AVX512-FP16 (see _is_narrow), are
# rotated in float32 (8 lanes per AVX2 vector instead of float64's 4), and each result is *proved* equal
# to the float64 kernel's (the once-rounded exact value):
#
#   r, t = the float32 dot product x1*c + x2*s and its error scale, with |exact - r| <= 2**-24 * t
#   e    = t * 3 * 2**-24                         # at least twice that bound, after float32 rounding
#   lo, hi = to16(r - e), to16(r + e)             # monotone (bfloat16: ties away from zero, see _round16)
#
# Both the exact value and its float64 rounding (the reference's input to the final rounding) lie in
# [r - e, r + e], so when ``lo == hi`` (and ``e`` is finite) it is the reference's result. Otherwise (about
# 1 in 600 float16 and 1 in 4000 bfloat16 results of model-like data, and every NaN or inf) the pair is
# recomputed by the float64 path. The bound needs no underflow allowance because nonzero inputs are at least 2**-50
# (every float16 is; bfloat16 pairs with a smaller one take the float64 path) and nonzero table values at
# least 2**-60 (tiles with a smaller one take the float64 path): all products and sums are then multiples
# of 2**-140 and exact wherever they fall below float32's normal range. The proof is in docs/math.md.


def _hardware_fma() -> bool:
    """Whether the CPU numba compiles for has fused multiply-add (LLVM's ``llvm.fma`` becomes one
    instruction; elsewhere a library call, so the unfused formula is used)."""
    return _cpu_has("fma")


#: Fused float32 dot products in the certified half-precision path (read at compile time).
HARDWARE_FMA = _hardware_fma()


def _fused_multiply_add(numba_type: Any, llvm_type: Any, doc: str) -> Any:
    """An intrinsic ``(a, b, c) -> a * b + c`` of ``numba_type`` with one rounding (LLVM's ``llvm.fma``)."""

    def typer(typingctx, a, b, c):
        def codegen(context, builder, signature, args):
            fn = builder.module.declare_intrinsic("llvm.fma", [llvm_type],
                                                  llvm_ir.FunctionType(llvm_type, [llvm_type] * 3))
            return builder.call(fn, args)

        return numba_type(numba_type, numba_type, numba_type), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


_fma32 = _fused_multiply_add(types.float32, llvm_ir.FloatType(), "``a * b + c`` in float32, one rounding.")
_fma64 = _fused_multiply_add(types.float64, llvm_ir.DoubleType(), "``a * b + c`` in float64, one rounding.")


@intrinsic
def _f16_to_f32(typingctx, x):
    """float16 bits (uint16) -> float32 through LLVM's half type (vcvtph2ps with F16C); exact."""
    sig = types.float32(types.uint16)

    def codegen(context, builder, signature, args):
        return builder.fpext(builder.bitcast(args[0], llvm_ir.HalfType()), llvm_ir.FloatType())

    return sig, codegen


#: The certified interval's half-width per unit of the error scale t: 3 * 2**-24 (see docs/math.md).
_HALF_WIDTH = np.float32(3 * 2.0**-24)
_INF32 = np.float32(np.inf)
#: Nonzero table values below this send their tile to the float64 path (the bound assumes no underflow).
NARROW_TABLE_MIN = 2.0**-60
#: Nonzero bfloat16 inputs below this send their pair to the float64 path (float16's are all above it).
_NARROW_INPUT_MIN = np.float32(2.0**-50)


@_jit(inline="always")
def _dot2_fused(x1, c, x2, s):
    """``(r, t)``: ``b = fl(x2*s)``, ``r = fl(x1*c + b)`` (one fused rounding), ``t = |b| + |r|``: two
    roundings of at most ``2**-24 |b|`` and ``2**-24 |r|``."""
    b = x2 * s
    r = _fma32(x1, c, b)
    return r, abs(b) + abs(r)


@_jit(inline="always")
def _dot2_unfused(x1, c, x2, s):
    """``(r, t)``: ``r = fl(fl(x1*c) + fl(x2*s))``, three roundings, ``t = |fl(x1*c)| + |fl(x2*s)| + |r|``."""
    a = x1 * c
    b = x2 * s
    r = a + b
    return r, (abs(a) + abs(b)) + abs(r)


@_jit(inline="always")
def _dot2(x1, c, x2, s):
    """``(r, t)``: ``r``, the float32 value of ``x1*c + x2*s`` (all float32), and ``t`` with ``|x1*c + x2*s -
    r| <= 2**-24 * t`` when nothing underflows (fused where the CPU has FMA)."""
    if HARDWARE_FMA:
        return _dot2_fused(x1, c, x2, s)
    return _dot2_unfused(x1, c, x2, s)


def _load32(row, i):
    """``row[i]`` as float32, exactly (uint16 rows hold float16, int16 rows bfloat16)."""


def _round16(row, v):
    """float32 ``v`` rounded to ``row``'s 16-bit format, as its bits (the row's dtype): float16 to nearest even,
    bfloat16 to nearest with ties away from zero. Used only at the ends of the certified interval, which lie
    strictly outside the values they bracket: a tie there is never the result, and equal ends mean that no
    midpoint lies between them (see :func:`_certified`)."""


def _tiny16(row, v):
    """Whether a float32 input ``v`` is nonzero and below :data:`_NARROW_INPUT_MIN`, as a uint16."""


@overload(_load32, inline="always")
def _load32_impl(row, i):
    if row.dtype == types.uint16:
        if HARDWARE_F16:
            return lambda row, i: _f16_to_f32(_load_in(row, i))
        return lambda row, i: _decode_f16_f32(_load_in(row, i))
    return lambda row, i: _bits_f32(np.int32(_load_in(row, i)) << 16)


@overload(_round16, inline="always")
def _round16_impl(row, v):
    if row.dtype == types.uint16:
        if HARDWARE_F16:
            return lambda row, v: _f32_to_f16(v)
        return lambda row, v: _f16_bits_of_f32_bits(np.int64(_f32_bits(v)) & 0xFFFFFFFF)

    def round_bf16(row, v):
        # bfloat16 is float32's upper half and its midpoints are the float32 patterns ending in 0x8000 (in
        # magnitude, for either sign): adding 0x8000 carries exactly at and above a midpoint. On all 32 bits,
        # sign included: no carry reaches the sign bit from a finite value (at most 0x7F7FFFFF + 0x8000);
        # unsigned 32-bit lanes, which LLVM keeps 8 to a vector
        return np.int16(np.uint16((np.uint32(_f32_bits(v)) + np.uint32(0x8000)) >> np.uint32(16)))

    return round_bf16


@overload(_tiny16, inline="always")
def _tiny16_impl(row, v):
    if row.dtype == types.uint16:
        return lambda row, v: np.uint16(0)
    return lambda row, v: np.uint16((v != np.float32(0)) & (abs(v) < _NARROW_INPUT_MIN))


@_jit(inline="always")
def _certified(orow, x1, c, x2, s):
    """``(bits, doubt)``: ``x1*c + x2*s`` rounded once to ``orow``'s 16-bit format, from float32 arithmetic,
    and a nonzero uint16 ``doubt`` where that rounding is not proved equal to the float64 kernel's."""
    r, t = _dot2(x1, c, x2, s)
    e = t * _HALF_WIDTH
    lo = _round16(orow, r - e)
    hi = _round16(orow, r + e)
    # e is inf or NaN where an input, a product or r is: NaN results (whose bits the float64 path sets) and
    # inf operands are recomputed; finite results agree in overflow (to inf) as in everything else
    return lo, np.uint16(np.uint16(lo ^ hi) | np.uint16(not (e < _INF32)))


@_jit()
def _exact_pairs(xr, orow, c_row, s_row, doubt, half, in_step, in_gap, out_step, out_gap):
    """Recompute, with the float64 kernel, every pair ``j`` with ``doubt[j] != 0``: inputs ``j * in_step`` and
    ``+ in_gap``, outputs ``j * out_step`` and ``+ out_gap`` (uint64 offsets: typed, not literal, so that
    every layout shares one compilation). Compiled once, not inlined into every row loop: it runs rarely."""
    for j in range(half):
        if doubt[j] != 0:
            j1 = np.uint64(j)
            i1 = j1 * in_step
            o1 = j1 * out_step
            c, sn = np.float64(_load_in(c_row, j1)), np.float64(_load_in(s_row, j1))
            x1 = _get(xr, i1)
            x2 = _get(xr, i1 + in_gap)
            # unfused: the reference's roundings; the certified path runs only with float32 tables
            _put(orow, o1, _pair_dot(x1, c, -x2, sn, False), np.float32(0))
            _put(orow, o1 + out_gap, _pair_dot(x2, c, x1, sn, False), np.float32(0))


@_jit(inline="always")
def _rotate_narrow(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, in_step, in_gap,
                   out_step, out_gap):
    """One float16/bfloat16 row: its pairs in float32, certified (see above), the doubtful ones again in
    float64; ``exact_only``: all of them in float64 (a tile with tiny table values). ``doubt``: a (half,)
    uint16 scratch row. Unit-stride inputs and outputs for "half" (steps 1, gaps ``half``), paired ones for
    "interleaved" (steps 2, gaps 1) and "deepseek" (inputs paired, outputs split). The channels past
    ``rotary_dim`` are copied when ``copy_rest``."""
    ui, ug, uo, uog = np.uint64(in_step), np.uint64(in_gap), np.uint64(out_step), np.uint64(out_gap)
    if copy_rest:
        _copy_channels(xr, orow, rotary_dim, xr.shape[0])
    if exact_only:
        doubt[:] = 1
        _exact_pairs(xr, orow, c_row, s_row, doubt, half, ui, ug, uo, uog)
        return
    any_doubt = np.uint16(0)
    for j in range(half):
        j1 = np.uint64(j)
        i1 = j1 * ui
        o1 = j1 * uo
        c, sn = _load_in(c_row, j1), _load_in(s_row, j1)
        x1 = _load32(xr, i1)
        x2 = _load32(xr, i1 + ug)
        h1, d1 = _certified(orow, x1, c, -x2, sn)
        h2, d2 = _certified(orow, x2, c, x1, sn)
        _store_out(orow, o1, h1)
        _store_out(orow, o1 + uog, h2)
        d = np.uint16(d1 | d2 | _tiny16(orow, x1) | _tiny16(orow, x2))
        _store_out(doubt, j1, d)
        any_doubt = np.uint16(any_doubt | d)
    if any_doubt != 0:
        _exact_pairs(xr, orow, c_row, s_row, doubt, half, ui, ug, uo, uog)


#: Consecutive positions per tile: their cos/sin rows are widened to float64 (and signed) once per tile and
#: then serve every head of q and k at those positions.
TILE = 16
#: Parallel rotations use longer tiles where rows are short: each head's run of a tile covers at least this
#: many bytes (64 positions of float16 rows of 128, 32 of float32), up to MAX_TILE positions.
RUN_BYTES = 16384
MAX_TILE = 64


@_jit(inline="always")
def _copy_channels(src, dst, start, stop):
    """``dst[start:stop] = src[start:stop]`` for 1-D rows, with unsigned indices (a vectorized copy, as in the
    row loops): the channels past ``rotary_dim`` passed through, or a row copied to the in-place scratch."""
    for i in range(start, stop):
        u = np.uint64(i)
        dst[u] = src[u]


# One row of each layout: its pairs rotated by ``c_row``/``s_row`` (``half`` angles, sign applied), the
# channels past ``rotary_dim`` copied when ``copy_rest``. float32 and float64 rows are rotated in float64
# (float64 tile rows); float16 and bfloat16 rows with float32 tile rows in float32, certified (see
# :func:`_rotate_narrow`; ``doubt`` and ``exact_only`` serve only those; on CPUs with AVX512-FP16 they take
# the float64 rows too, see :func:`_is_narrow`). ``table_kind``: see :func:`_table_kind`. One function per
# layout, each a unit-stride loop that LLVM vectorizes (a runtime layout switch inside the row loop halves the
# speed). The channel indices are unsigned: Numba then emits no negative-index wraparound, which for ``j +
# half`` (LLVM cannot tell its sign) would otherwise keep the loop scalar.
@_jit(inline="always")
def _pair_dot(a, c, b, s, fused):
    """``a * c + b * s`` in float64: ``fma(a, c, fl(b*s))`` when ``fused`` (a compile-time constant, see
    :func:`_fused_products`), else ``fl(fl(a*c) + fl(b*s))``. ``fused`` is only set where ``a*c`` (an input
    times a cos entry) is exact in float64, and then the two are the same value, bit for bit (NaN payloads
    and signs aside). One instruction fewer per output, about 13% of a float32 row loop."""
    if fused:
        return _fma64(a, c, b * s)
    return a * c + b * s


@_jit(inline="always")
def _rotate_half_wide(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
    """"half": channel j pairs with j + half."""
    fused = _fused_products(xr, table_kind)
    uhalf = np.uint64(half)
    for j in range(half):
        j1 = np.uint64(j)
        j2 = j1 + uhalf
        c, sn = _load_in(c_row, j1), _load_in(s_row, j1)
        x1 = _get(xr, j1)
        x2 = _get(xr, j2)
        _put(orow, j1, _pair_dot(x1, c, -x2, sn, fused), table_kind)
        _put(orow, j2, _pair_dot(x2, c, x1, sn, fused), table_kind)
    if copy_rest:
        _copy_channels(xr, orow, rotary_dim, xr.shape[0])


@_jit(inline="always")
def _rotate_interleaved_wide(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
    """"interleaved": channels (2j, 2j + 1) pair and stay in place."""
    fused = _fused_products(xr, table_kind)
    for j in range(half):
        j1 = np.uint64(j)
        e = j1 + j1
        c, sn = _load_in(c_row, j1), _load_in(s_row, j1)
        x1 = _get(xr, e)
        x2 = _get(xr, e + np.uint64(1))
        _put(orow, e, _pair_dot(x1, c, -x2, sn, fused), table_kind)
        _put(orow, e + np.uint64(1), _pair_dot(x2, c, x1, sn, fused), table_kind)
    if copy_rest:
        _copy_channels(xr, orow, rotary_dim, xr.shape[0])


@_jit(inline="always")
def _rotate_deepseek_wide(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
    """"deepseek": channels (2j, 2j + 1) pair and land in (j, j + half)."""
    fused = _fused_products(xr, table_kind)
    uhalf = np.uint64(half)
    for j in range(half):
        j1 = np.uint64(j)
        e = j1 + j1
        c, sn = _load_in(c_row, j1), _load_in(s_row, j1)
        x1 = _get(xr, e)
        x2 = _get(xr, e + np.uint64(1))
        _put(orow, j1, _pair_dot(x1, c, -x2, sn, fused), table_kind)
        _put(orow, j1 + uhalf, _pair_dot(x2, c, x1, sn, fused), table_kind)
    if copy_rest:
        _copy_channels(xr, orow, rotary_dim, xr.shape[0])


# bfloat16 rows as uint32 words, two adjacent channels each (little-endian: the even channel in the lower
# half), where the kernel is handed such views (see _Walk): one 32-bit load gives two inputs by a shift and a
# mask, and one store takes two outputs, instead of a widening load and a narrowing store per 8 channels. The
# result is the element rows', bit for bit: with float32 tables each row is computed in float32 and certified
# first (_words_certified), a row with a doubt again in float64 and rounded through float32
# (_bf16_word_checked), and a row meeting a midpoint there once more by the float64 encoder (_bf16_word); see
# _words_rows. For "half" and "deepseek" the tile rows hold the even pairs' angles first, then the odd pairs'
# (so filled in _apply_tiles), so that each loop reads them at unit stride.
def _bf16_pair_intrinsic(word: bool, doc: str) -> Any:
    """A Numba intrinsic for :func:`_bf16_word_checked` on 32-bit integers (Numba would widen its integer
    arithmetic to 64 bits, doubling the vector instructions): the word (``word``) or the tie flag."""

    def typer(typingctx, lo, hi):
        def codegen(context, builder, signature, args):
            i32 = llvm_ir.IntType(32)
            half_up = llvm_ir.Constant(i32, 0x8000)
            lo_t = builder.add(builder.bitcast(args[0], i32), half_up)
            hi_t = builder.add(builder.bitcast(args[1], i32), half_up)
            if word:
                return builder.or_(builder.lshr(lo_t, llvm_ir.Constant(i32, 16)),
                                   builder.and_(hi_t, llvm_ir.Constant(i32, 0xFFFF0000)))
            low16 = llvm_ir.Constant(i32, 0xFFFF)
            zero = llvm_ir.Constant(i32, 0)
            return builder.or_(builder.icmp_unsigned("==", builder.and_(lo_t, low16), zero),
                               builder.icmp_unsigned("==", builder.and_(hi_t, low16), zero))

        return (types.uint32 if word else types.boolean)(types.float32, types.float32), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


_bf16_pair_word = _bf16_pair_intrinsic(True, "float32 ``lo``, ``hi`` -> the uint32 word of their bfloat16 "
                                       "roundings, ties away from zero (see :func:`_bf16_word_checked`)")
_bf16_pair_tie = _bf16_pair_intrinsic(False, "float32 ``lo``, ``hi`` -> whether either is a bfloat16 midpoint "
                                      "(see :func:`_bf16_word_checked`)")


@_jit(inline="always")
def _bf16_word_checked(low, high, table_kind):
    """:func:`_bf16_word`, the fast way: ``(word, tie)``, the word being :func:`_bf16_word`'s unless ``tie``.

    Each float64 value ``v`` is converted to float32 by the hardware (``f``, to nearest even, subnormals
    included), and ``bits(f) + 0x8000`` rounds ``f``'s bits to bfloat16, their upper half, with ties away
    from zero (the carry runs into the exponent where it must: past the largest finite bfloat16 it gives
    inf). That is ``v`` rounded once to nearest even unless ``f`` is a bfloat16 midpoint (lower half
    ``0x8000``: ``tie``), because float32 holds every bfloat16 midpoint and rounding is monotone: ``v``
    below a midpoint ``M`` gives ``f <= M``, above it ``f >= M``, so an ``f != M`` lies between the same two
    midpoints as ``v`` and rounds to the same bfloat16. Zeros keep their sign, inf stays inf. A NaN stays a
    quiet NaN when the lower half of its float32 payload is zero, as for every NaN that a rotation of
    bfloat16 inputs by finite tables makes (x86 passes an input's payload on, or makes the default NaN);
    tiles with a non-finite table value take :func:`_bf16_word` alone (``exact_only``). About 20% fewer
    micro-operations per result in the row loops than :func:`_bf16_word` (figures in docs/math.md)."""
    lo, hi = np.float32(low), np.float32(high)
    return _bf16_pair_word(lo, hi), _bf16_pair_tie(lo, hi)


# The word functions of the passes over a word row (see _words_rows). Each rotates two pairs given as float32
# values (the bfloat16 inputs ``a`` and ``b``, exact; the caller negates ``b`` where the formula subtracts):
# ``a_lo * c_lo + b_lo * s_lo`` for the word's lower half, ``a_hi * c_hi + b_hi * s_hi`` for its upper half.
# It returns ``(word, doubt)``: the uint32 word of the two results rounded to bfloat16, which is the
# once-rounded float64 result's unless ``doubt``.
@_jit(inline="always")
def _word_results(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi, fused):
    """The word's two results in float64 (:func:`_pair_dot`), before any rounding to bfloat16."""
    return (_pair_dot(np.float64(a_lo), np.float64(c_lo), np.float64(b_lo), np.float64(s_lo), fused),
            _pair_dot(np.float64(a_hi), np.float64(c_hi), np.float64(b_hi), np.float64(s_hi), fused))


@_jit()
def _words_exact(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi, fused, table_kind):
    """In float64, rounded by the float64 encoder (:func:`_bf16_word`): never in doubt."""
    low, high = _word_results(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi, fused)
    return _bf16_word(low, high, table_kind), False


@_jit()
def _words_checked(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi, fused, table_kind):
    """In float64, rounded through float32 (:func:`_bf16_word_checked`): in doubt at a bfloat16 midpoint."""
    low, high = _word_results(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi, fused)
    return _bf16_word_checked(low, high, table_kind)


#: :func:`_words_certified`'s interval grows by this floor (float32's smallest normal) besides ``3 * 2**-24``
#: per unit of ``|p| + |r|``: it covers every underflow, and it keeps the check's operands normal (a subnormal
#: operand costs the CPU a microcode assist).
_WORD_ERROR_FLOOR = 2.0**-126


def _certified_words_intrinsic(word: bool, doc: str) -> Any:
    """A Numba intrinsic for :func:`_words_certified`, in 32-bit lanes (Numba would widen its integer
    arithmetic to 64 bits): the word (``word``) or the doubt. The proof needs the fused roundings, so this
    emits ``llvm.fma`` whatever the CPU: one instruction where word rows are used (:data:`BF16_WORDS` needs
    AVX-512, which has FMA), a correct but slow ``fmaf`` call where a test forces word rows elsewhere."""

    def typer(typingctx, a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi):
        def codegen(context, builder, signature, args):
            f32, i32 = llvm_ir.FloatType(), llvm_ir.IntType(32)
            fma = builder.module.declare_intrinsic("llvm.fma", [f32], llvm_ir.FunctionType(f32, [f32] * 3))
            fabs = builder.module.declare_intrinsic("llvm.fabs", [f32], llvm_ir.FunctionType(f32, [f32]))
            half_up, upper = llvm_ir.Constant(i32, 0x8000), llvm_ir.Constant(i32, 0xFFFF0000)
            ends = []
            for a, c, b, s in (args[:4], args[4:]):
                p = builder.fmul(b, s)
                r = builder.call(fma, [a, c, p])
                t = builder.fadd(builder.call(fabs, [p]), builder.call(fabs, [r]))
                e = builder.call(fma, [t, llvm_ir.Constant(f32, float(_HALF_WIDTH)),
                                       llvm_ir.Constant(f32, _WORD_ERROR_FLOOR)])
                below = builder.add(builder.bitcast(builder.fsub(r, e), i32), half_up)
                above = builder.add(builder.bitcast(builder.fadd(r, e), i32), half_up)
                ends.append((below, above, e))
            (below_lo, above_lo, e_lo), (below_hi, above_hi, e_hi) = ends
            if word:
                return builder.or_(builder.lshr(below_lo, llvm_ir.Constant(i32, 16)), builder.and_(below_hi, upper))
            differ = builder.and_(builder.or_(builder.xor(below_lo, above_lo), builder.xor(below_hi, above_hi)),
                                  upper)
            inf = llvm_ir.Constant(f32, float("inf"))
            not_finite = builder.or_(builder.fcmp_unordered(">=", e_lo, inf),
                                     builder.fcmp_unordered(">=", e_hi, inf))
            return builder.or_(builder.icmp_unsigned("!=", differ, llvm_ir.Constant(i32, 0)), not_finite)

        return (types.uint32 if word else types.boolean)(*[types.float32] * 8), codegen

    typer.__doc__ = doc
    return intrinsic(typer)


_certified_word = _certified_words_intrinsic(True, "The word of :func:`_words_certified`.")
_certified_doubt = _certified_words_intrinsic(False, "The doubt of :func:`_words_certified`.")


@_jit()
def _words_certified(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi, fused, table_kind):
    """In float32 (float32 table values only), certified: no float64 arithmetic and no conversions, 16 lanes
    per 512-bit vector. For each half, ``p = fl(b*s)``, ``r = fl(a*c + p)`` (fused), ``e = fl(3 * 2**-24 *
    fl(|p| + |r|) + 2**-126)`` (fused): the rounded ends ``r - e`` and ``r + e`` lie strictly below and
    above both the exact result and its float64 rounding, for any finite operands (the floor covers underflow;
    proof in docs/math.md). Each end is rounded to bfloat16 half up on its bits (``bits + 0x8000``, upper
    half: monotone, ties away from zero). Equal ends are the reference's bfloat16, which the word holds (the
    lower ends'). In doubt where the ends differ (a midpoint lies between them, or they straddle zero, as for
    every zero result) or ``e`` is inf or NaN."""
    return (_certified_word(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi),
            _certified_doubt(a_lo, c_lo, b_lo, s_lo, a_hi, c_hi, b_hi, s_hi))


def _words_rows(pass_with: Any) -> Any:
    """A word-row function from ``pass_with(word_fn)``, a pass over a row's pairs below ``n`` with one of the
    word functions above, which returns whether any word was in doubt. With float32 tile rows: the certified
    pass, then the checked pass over the row where it had a doubt, then the exact pass where that met a
    midpoint. With float64 tile rows (float64 tables): the checked pass, then the exact one. A tile with a
    non-finite table value (``exact_only``) takes the exact pass alone."""
    certified, checked, exact = pass_with(_words_certified), pass_with(_words_checked), pass_with(_words_exact)

    def rotate(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
        pass  # replaced by the overload below

    @overload(rotate, inline="always")
    def rotate_impl(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
        # every pass is called whatever the earlier ones found (over no pairs where it is not needed): a call
        # under a branch would keep Numba's reference counting of the rows, 4 atomic updates per row
        if c_row.dtype == types.float32:
            def three_passes(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
                doubted = certified(xr, orow, c_row, s_row, half, 0 if exact_only else half, table_kind)
                ties = checked(xr, orow, c_row, s_row, half, half if doubted else 0, table_kind)
                exact(xr, orow, c_row, s_row, half, half if exact_only or ties else 0, table_kind)
                if copy_rest:
                    _copy_channels(xr, orow, rotary_dim >> 1, xr.shape[0])

            return three_passes

        def two_passes(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
            ties = checked(xr, orow, c_row, s_row, half, 0 if exact_only else half, table_kind)
            exact(xr, orow, c_row, s_row, half, half if exact_only or ties else 0, table_kind)
            if copy_rest:
                _copy_channels(xr, orow, rotary_dim >> 1, xr.shape[0])

        return two_passes

    return rotate


def _half_words_pass(word_fn: Any) -> Any:
    """"half" (``half`` even): word i (pairs 2i, 2i + 1) pairs with word i + half/2."""

    @_jit(inline="always")
    def run(xr, orow, c_row, s_row, half, n, table_kind):
        fused = _fused_products(xr, table_kind)
        quarter = np.uint64(half >> 1)
        ties = False
        for i in range(n >> 1):
            w1 = np.uint64(i)
            w2 = w1 + quarter
            c_even, c_odd = _load_in(c_row, w1), _load_in(c_row, w2)
            s_even, s_odd = _load_in(s_row, w1), _load_in(s_row, w2)
            a, b = _load_in(xr, w1), _load_in(xr, w2)
            a0, a1, b0, b1 = _word_low(a), _word_high(a), _word_low(b), _word_high(b)
            first, tie1 = word_fn(a0, c_even, -b0, s_even, a1, c_odd, -b1, s_odd, fused, table_kind)
            second, tie2 = word_fn(b0, c_even, a0, s_even, b1, c_odd, a1, s_odd, fused, table_kind)
            _store_out(orow, w1, first)
            _store_out(orow, w2, second)
            ties |= tie1 | tie2
        return ties

    return run


def _interleaved_words_pass(word_fn: Any) -> Any:
    """"interleaved": word j is pair j, and stays in place."""

    @_jit(inline="always")
    def run(xr, orow, c_row, s_row, half, n, table_kind):
        fused = _fused_products(xr, table_kind)
        ties = False
        for j in range(n):
            w = np.uint64(j)
            c, sn = _load_in(c_row, w), _load_in(s_row, w)
            a = _load_in(xr, w)
            x1, x2 = _word_low(a), _word_high(a)
            word, tie = word_fn(x1, c, -x2, sn, x2, c, x1, sn, fused, table_kind)
            _store_out(orow, w, word)
            ties |= tie
        return ties

    return run


def _deepseek_words_pass(word_fn: Any) -> Any:
    """"deepseek" (``half`` even): words 2i and 2i + 1 (pairs 2i, 2i + 1) land in output words i (their first
    channels) and i + half/2 (their second ones)."""

    @_jit(inline="always")
    def run(xr, orow, c_row, s_row, half, n, table_kind):
        fused = _fused_products(xr, table_kind)
        quarter = np.uint64(half >> 1)
        ties = False
        for i in range(n >> 1):
            w = np.uint64(i)
            c_even, c_odd = _load_in(c_row, w), _load_in(c_row, w + quarter)
            s_even, s_odd = _load_in(s_row, w), _load_in(s_row, w + quarter)
            a, b = _load_in(xr, w + w), _load_in(xr, w + w + np.uint64(1))
            a0, a1, b0, b1 = _word_low(a), _word_high(a), _word_low(b), _word_high(b)
            first, tie1 = word_fn(a0, c_even, -a1, s_even, b0, c_odd, -b1, s_odd, fused, table_kind)
            second, tie2 = word_fn(a1, c_even, a0, s_even, b1, c_odd, b0, s_odd, fused, table_kind)
            _store_out(orow, w, first)
            _store_out(orow, w + quarter, second)
            ties |= tie1 | tie2
        return ties

    return run


_rotate_half_words = _words_rows(_half_words_pass)
_rotate_interleaved_words = _words_rows(_interleaved_words_pass)
_rotate_deepseek_words = _words_rows(_deepseek_words_pass)


def _by_row_dtype(on_words: Any, on_elements: Any) -> Any:
    """A row function (inlined): ``on_words`` for uint32 rows (bfloat16 pairs), ``on_elements`` otherwise."""

    def rotate_row(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
        pass  # replaced by the overload below

    @overload(rotate_row, inline="always")
    def rotate_row_impl(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
        chosen = on_words if xr.dtype == types.uint32 else on_elements

        def call(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
            chosen(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind)

        return call

    return rotate_row


@_jit(inline="always")
def _rotate_half_narrow(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
    _rotate_narrow(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, 1, half, 1, half)


@_jit(inline="always")
def _rotate_interleaved_narrow(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
    _rotate_narrow(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, 2, 1, 2, 1)


@_jit(inline="always")
def _rotate_deepseek_narrow(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind):
    _rotate_narrow(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, 2, 1, 1, half)


#: Set ROPEFLOW_NUMBA_CERTIFIED_HALF=1 to keep float16 and bfloat16 on the certified float32 path whatever the
#: CPU (read at import; the tests use it to run that path end to end on CPUs that would skip it). Numba's
#: on-disk cache does not know this switch: give such a process a NUMBA_CACHE_DIR of its own.
FORCE_CERTIFIED_HALF = os.environ.get("ROPEFLOW_NUMBA_CERTIFIED_HALF") == "1"


def _is_narrow(x: Any, table_kind: Any) -> bool:
    """Numba types: a float16/bfloat16 array (as a 16-bit integer view) with float32 cos and sin tables
    (``table_kind`` float32, see :func:`_table_kind`), rotated in float32 and certified: the proof needs
    every table value in float32. float16 takes the float64 path instead where the CPU rounds float64 to
    float16 in hardware (:data:`HARDWARE_F64_F16`), and bfloat16 where the loops use 512-bit vectors
    (:data:`PREFER_512_BIT`, 8 float64 lanes): there the float64 path is faster for 16-bit rows (figures in
    docs/backends.md). Word rows (uint32, :data:`BF16_WORDS`) have a certified float32 path of their own
    (:func:`_words_rows`)."""
    float64_is_faster = (x.dtype == types.uint16 and HARDWARE_F64_F16) or (x.dtype == types.int16 and PREFER_512_BIT)
    if float64_is_faster and not FORCE_CERTIFIED_HALF:
        return False
    return x.dtype in (types.uint16, types.int16) and table_kind == types.float32


def _fused_products(row, table_kind):
    """Whether ``row`` (an input row) rotated by tables of ``table_kind`` (see :func:`_table_kind`) may use
    :func:`_pair_dot`'s fused form; a compile-time constant, decided from the types: where the CPU has FMA,
    the input is float32, float16 or bfloat16 (16-bit values, or uint32 words of two; at most 24 significant
    bits) and the cos table float32 (24 bits). Their products have at most 48 significant bits, between
    2**-298 and 2**256 when nonzero: exact in float64. A float64 input or cos table is not. (Only the cos
    table matters, the sin product being rounded either way, but ``table_kind`` is float32 only when both
    are: a float32 cos with a float64 sin, which only a caller's own tables give, keeps the two roundings.)"""


@overload(_fused_products, inline="always")
def _fused_products_impl(row, table_kind):
    fused = HARDWARE_FMA and row.dtype in (types.float32, types.uint16, types.int16, types.uint32) \
        and table_kind == types.float32
    return lambda row, table_kind: fused


def _table_kind(cos, sin):
    """A zero that is float32 when both tables are float32, else float64: passed down to the tile function,
    its type tells there what the tables can hold (the tiles themselves may be float64), at no cost per call.
    The certified path, the fused products and the bounded bfloat16 encoder rest on it."""


@overload(_table_kind, inline="always")
def _table_kind_impl(cos, sin):
    if cos.dtype == types.float32 and sin.dtype == types.float32:
        return lambda cos, sin: np.float32(0)
    return lambda cos, sin: np.float64(0)


def _is_words(x):
    """Whether ``x`` (an array) holds bfloat16 pairs as uint32 words: a compile-time constant."""


@overload(_is_words, inline="always")
def _is_words_impl(x):
    words = x.dtype == types.uint32
    return lambda x: words


def _table_tile(x, table_kind, rows, cols):
    """An uninitialized ``(rows, cols)`` tile for widened cos/sin rows: float32 with float32 tables where
    ``x`` takes a certified float32 path (16-bit rows, see :func:`_is_narrow`; word rows, see
    :func:`_words_rows`), else float64."""


@overload(_table_tile, inline="always")
def _table_tile_impl(x, table_kind, rows, cols):
    if _is_narrow(x, table_kind) or (x.dtype == types.uint32 and table_kind == types.float32):
        return lambda x, table_kind, rows, cols: np.empty((rows, cols), dtype=np.float32)
    return lambda x, table_kind, rows, cols: np.empty((rows, cols), dtype=np.float64)


def _exact_table_value(x, tile, v):
    """Whether table value ``v`` sends its tile to the exact rounding: for a float32 ``tile`` (the certified
    path), ``v`` in (0, :data:`NARROW_TABLE_MIN`), where the path's error bound would not hold; for bfloat16
    word rows ``x`` (see :func:`_words_rows`), ``v`` not finite; else never."""


@overload(_exact_table_value, inline="always")
def _exact_table_value_impl(x, tile, v):
    if x.dtype == types.uint32:
        return lambda x, tile, v: (v - v) != 0.0  # NaN for inf and NaN
    if tile.dtype == types.float32:
        return lambda x, tile, v: (v != 0.0) & (abs(v) < NARROW_TABLE_MIN)
    return lambda x, tile, v: False


def _tile_walker(rotate_row: Any) -> Any:
    """A function rotating, with ``rotate_row``, every head at sequence indices ``s0 .. s0 + n_pos - 1`` of
    batch row ``b`` of ``out``, reading them from ``x`` at batch row ``xb`` and sequence indices ``xs0 ..``
    (``x`` is the input itself, or a scratch copy of the tile for in-place calls), in memory order: (seq, head)
    for token-major arrays (passed as (B, S, H, D)), (head, seq) for head-major ones ((B, H, S, D)). Inlined
    into the kernel (not cached on its own)."""

    @njit(inline="always", **_OPTIONS)
    def walk(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, half, rotary_dim, copy_rest, token_major, seq_inner,
             doubt, exact_only, table_kind):
        # one loop nest and one call site of the (inlined) row function for the three walks: each inlined
        # copy costs seconds of compile time
        n_heads = out.shape[2] if token_major else out.shape[1]
        n_outer = n_heads if seq_inner else n_pos
        n_inner = n_pos if seq_inner else n_heads
        c_row, s_row = c_tile[0], s_tile[0]
        for i in range(n_outer):
            if not seq_inner:  # one view per position, not per row: it shows in decode
                c_row, s_row = c_tile[i], s_tile[i]
            for j in range(n_inner):
                h = i if seq_inner else j
                t = j if seq_inner else i
                if seq_inner:
                    c_row, s_row = c_tile[t], s_tile[t]
                if token_major:
                    xr, orow = x[xb, xs0 + t, h], out[b, s0 + t, h]
                else:
                    xr, orow = x[xb, h, xs0 + t], out[b, h, s0 + t]
                rotate_row(xr, orow, c_row, s_row, half, rotary_dim, copy_rest, doubt, exact_only, table_kind)

    return walk


def _layout_walker(walk_half: Any, walk_interleaved: Any, walk_deepseek: Any) -> Any:
    """A walker choosing among the three layouts' walkers once per tile (layout: 0 "half", 1 "interleaved",
    2 "deepseek"). Inlined (not cached on its own)."""

    @njit(inline="always", **_OPTIONS)
    def walk(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_rest, token_major,
             seq_inner, doubt, exact_only, table_kind):
        if layout == 0:
            walk_half(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, half, rotary_dim, copy_rest, token_major,
                      seq_inner, doubt, exact_only, table_kind)
        elif layout == 1:
            walk_interleaved(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, half, rotary_dim, copy_rest,
                             token_major, seq_inner, doubt, exact_only, table_kind)
        else:
            walk_deepseek(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, half, rotary_dim, copy_rest, token_major,
                          seq_inner, doubt, exact_only, table_kind)

    return walk


_walk_wide = _layout_walker(_tile_walker(_by_row_dtype(_rotate_half_words, _rotate_half_wide)),
                            _tile_walker(_by_row_dtype(_rotate_interleaved_words, _rotate_interleaved_wide)),
                            _tile_walker(_by_row_dtype(_rotate_deepseek_words, _rotate_deepseek_wide)))
_walk_narrow = _layout_walker(_tile_walker(_rotate_half_narrow), _tile_walker(_rotate_interleaved_narrow),
                              _tile_walker(_rotate_deepseek_narrow))


@_jit(inline="always")
def _rotate_tile_wide(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_rest,
                      token_major, seq_inner, doubt, exact_only, table_kind):
    """A tile's rows of one tensor on float64 tile rows: see :func:`_rotate_tile`. Inlined into the function
    that :func:`_rotate_tile` compiles per signature, which the kernel calls once per tile and tensor (the
    certified float16/bfloat16 twin stays a call of its own)."""
    _walk_wide(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_rest, token_major,
               seq_inner, doubt, exact_only, table_kind)


@_jit()
def _rotate_tile_narrow(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_rest,
                        token_major, seq_inner, doubt, exact_only, table_kind):
    """A tile's rows of one float16/bfloat16 tensor (float32 tile rows, certified): see :func:`_rotate_tile`."""
    _walk_narrow(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_rest, token_major,
                 seq_inner, doubt, exact_only, table_kind)


def _rotate_tile(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_rest, token_major,
                 seq_inner, doubt, exact_only, table_kind):
    """The tile's rows of one tensor (``x`` rows ``xb``, ``xs0 ..`` into ``out`` rows ``b``, ``s0 ..``):
    :func:`_rotate_tile_narrow` for float16/bfloat16 with float32 tile rows, else :func:`_rotate_tile_wide`
    (chosen when numba types the call; one compiled call per tile)."""


@overload(_rotate_tile)
def _rotate_tile_impl(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_rest,
                      token_major, seq_inner, doubt, exact_only, table_kind):
    chosen = _rotate_tile_narrow if _is_narrow(x, table_kind) else _rotate_tile_wide

    def rotate_tile(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_rest,
                    token_major, seq_inner, doubt, exact_only, table_kind):
        chosen(x, xb, xs0, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_rest, token_major,
               seq_inner, doubt, exact_only, table_kind)

    return rotate_tile


@_jit(inline="always")
def _scratch(x, tile, token_major, needed):
    """A C-contiguous buffer for one tile of ``x`` ((1, tile, H, D) token-major, (1, H, tile, D) head-major),
    or a 1-element stand-in when ``needed`` is False (in-place calls only: see :func:`_copy_to_scratch`)."""
    if not needed:
        return np.empty((1, 1, 1, 1), dtype=x.dtype)
    if token_major:
        return np.empty((1, tile, x.shape[2], x.shape[3]), dtype=x.dtype)
    return np.empty((1, x.shape[1], tile, x.shape[3]), dtype=x.dtype)


@_jit(inline="always")
def _copy_to_scratch(x, scratch, b, s0, n_pos, rotary_units, token_major):
    """Copy one tile's rows of ``x`` (batch row ``b``, sequence indices ``s0 ..``, the first ``rotary_units``
    entries of each: the channels below rotary_dim, or half as many uint32 words) to ``scratch``, for an
    in-place rotation: the tile is then rotated from ``scratch`` into
    ``x``. LLVM vectorizes a row loop only behind a runtime check that its input and output do not overlap, so
    rows rotated onto themselves would run scalar."""
    if token_major:
        for t in range(n_pos):
            for h in range(x.shape[2]):
                _copy_channels(x[b, s0 + t, h], scratch[0, t, h], 0, rotary_units)
    else:
        for h in range(x.shape[1]):
            for t in range(n_pos):
                _copy_channels(x[b, h, s0 + t], scratch[0, h, t], 0, rotary_units)


@intrinsic
def _take_next(typingctx, taken):
    """``taken[0] += 1`` as one atomic operation, returning the value before (``taken``: an int64 array of one
    element shared by the threads of a launch): the number of the next chunk of work, each given out once."""
    sig = types.int64(taken)

    def codegen(context, builder, signature, args):
        counter = context.make_array(signature.args[0])(context, builder, args[0])
        return builder.atomic_rmw("add", counter.data, llvm_ir.Constant(llvm_ir.IntType(64), 1), "monotonic")

    return sig, codegen


# Bits of the ``flags`` argument of :func:`_apply_tiles` (one integer instead of nine arguments: Numba's
# dispatcher types every argument on every call, about 0.1 us each). Bits 0-1 hold the layout code.
_INVERSE, _COPY_Q, _COPY_K, _TOKEN_MAJOR, _WITH_K, _SEQ_INNER, _SAME_Q, _SAME_K = 4, 8, 16, 32, 64, 128, 256, 512
_STARTS = 1024


@_parallel_kernel
def _apply_tiles(x, out, k, k_out, cos, sin, positions, flags, rotary_dim, tile, max_chunks):
    """Rotate q (``x`` -> ``out``) and, with the ``_WITH_K`` flag, k (``k`` -> ``k_out``) in one launch. The
    work is cut into tiles of up to :data:`TILE` consecutive positions of one batch row; a tile widens its
    cos/sin rows once (sign applied; to float64, or float32 for the certified path, see :func:`_is_narrow` and
    :func:`_rotate_narrow`) and rotates every head of q and of k there (head counts and
    head dims may differ between q and k; their batch and seq are equal). Tiles are split into contiguous
    chunks (at most ``max_chunks``), which each thread takes one after the other from a shared atomic counter
    until none is left.

    positions: 1-D int64. With the ``_STARTS`` flag, ``(B,)`` or ``(1,)`` first positions (sequence index s
    reads row ``positions[b] + s``); else ids, ``(B * S,)`` (row-major (B, S)) or ``(S,)`` shared by every
    batch row. Every position is checked against the table before anything is written: the return value
    is 0 when all lie in ``[0, cos.shape[0])``, else 1 and nothing was written (the hot path then runs the
    general path, which grows the table or reports the bad argument).

    flags: the layout code (0 "half", 1 "interleaved", 2 "deepseek") in bits 0-1, and the ``_INVERSE``,
    ``_COPY_Q``/``_COPY_K`` (pass channels past ``rotary_dim`` through), ``_TOKEN_MAJOR``, ``_WITH_K``,
    ``_SEQ_INNER`` and ``_SAME_Q``/``_SAME_K`` (in place: ``out`` is the same view as ``x``; not for "deepseek",
    which moves channels within a row) bits. Arrays are (B, H, S, D), any strides; with ``_TOKEN_MAJOR`` they
    are passed as (B, S, H, D) (their memory order, typically C-contiguous, so that the rows are unit-stride
    for LLVM)."""
    n_batch = x.shape[0]
    n_seq = x.shape[1] if flags & _TOKEN_MAJOR else x.shape[2]
    starts = (flags & _STARTS) != 0
    n_rows = cos.shape[0]
    top = n_rows - n_seq if starts else n_rows - 1  # the largest valid value in positions
    for i in range(positions.shape[0]):
        if positions[i] < 0 or positions[i] > top:
            return 1
    shared_positions = positions.shape[0] == 1 if starts else positions.shape[0] == n_seq
    layout = flags & 3
    sign = -1.0 if flags & _INVERSE else 1.0
    copy_q, copy_k = (flags & _COPY_Q) != 0, (flags & _COPY_K) != 0
    token_major, with_k, seq_inner = (flags & _TOKEN_MAJOR) != 0, (flags & _WITH_K) != 0, (flags & _SEQ_INNER) != 0
    same_q, same_k = (flags & _SAME_Q) != 0, (flags & _SAME_K) != 0
    half = rotary_dim // 2
    # bfloat16 pairs (uint32 words; "half" and "deepseek" only with half even, see _Walk): the row loops read
    # the even pairs' angles, then the odd ones', and copy rotary_dim / 2 words
    words = _is_words(x)
    paired_angles = words and layout != 1
    quarter = half >> 1
    rotary_units = rotary_dim >> 1 if words else rotary_dim
    tiles_per_row = (n_seq + tile - 1) // tile
    n_tiles = n_batch * tiles_per_row
    n_chunks = max(1, min(n_tiles, max_chunks))
    # each parallel iteration takes the next chunk until none is left: the first iteration of each thread
    # does the work, and a thread slowed down (its core shared with another process) does fewer chunks instead
    # of holding up the launch (the rest find none). Not numba.get_num_threads(): it would stop the caching
    taken = np.zeros(1, dtype=np.int64)
    for _ in prange(n_chunks):
        chunk = _take_next(taken)
        if chunk >= n_chunks:
            continue
        # constants, set inside the parallel loop: set outside, they would reach its body as arguments
        table_kind = _table_kind(cos, sin)  # what the tables hold, for the compiled tile function
        c_tile = _table_tile(x, table_kind, tile, half)
        s_tile = _table_tile(x, table_kind, tile, half)
        doubt = np.empty(half, dtype=np.uint16)
        x_scratch = _scratch(x, tile, token_major, same_q)
        k_scratch = _scratch(k, tile, token_major, same_k and with_k)
        while chunk < n_chunks:
            for g in range(chunk * n_tiles // n_chunks, (chunk + 1) * n_tiles // n_chunks):
                b = g // tiles_per_row
                s0 = (g - b * tiles_per_row) * tile
                n_pos = min(tile, n_seq - s0)
                exact_only = False  # see _exact_table_value
                row = 0 if shared_positions else b
                first = positions[row] + s0 if starts else row * n_seq + s0  # a position, or an index into ids
                for t in range(n_pos):
                    p = first + t if starts else positions[first + t]
                    if paired_angles:  # even pairs' angles first, then the odd pairs'
                        for j in range(quarter):
                            c_tile[t, j], c_tile[t, quarter + j] = cos[p, 2 * j], cos[p, 2 * j + 1]
                            s_tile[t, j], s_tile[t, quarter + j] = sign * sin[p, 2 * j], sign * sin[p, 2 * j + 1]
                            # one test of the four (a sum that overflows sends the tile to the exact rounding too)
                            exact_only |= _exact_table_value(x, c_tile, c_tile[t, j] + c_tile[t, quarter + j]
                                                             + s_tile[t, j] + s_tile[t, quarter + j])
                        continue
                    for j in range(half):
                        cv, sv = np.float64(cos[p, j]), np.float64(sin[p, j])
                        c_tile[t, j] = cv
                        s_tile[t, j] = sign * sv
                        exact_only |= _exact_table_value(x, c_tile, cv) | _exact_table_value(x, c_tile, sv)
                # _rotate_tile is called from here, not from an inlined helper: there, Numba would wrap each call in
                # atomic reference-count increments and decrements of the arrays passed (50-100 ns a call).
                # In place (out is x), the tile is rotated from a scratch copy into out (x typed as writable);
                # zero and keep_rest are variables, not literals, which would compile _rotate_tile again
                zero = b - b
                keep_rest = zero != zero  # in place, the channels past rotary_dim are already there
                if same_q:
                    _copy_to_scratch(x, x_scratch, b, s0, n_pos, rotary_units, token_major)
                    _rotate_tile(x_scratch, zero, zero, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim,
                                 keep_rest, token_major, seq_inner, doubt, exact_only, table_kind)
                else:
                    _rotate_tile(x, b, s0, out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_q,
                                 token_major, seq_inner, doubt, exact_only, table_kind)
                if with_k:
                    if same_k:
                        _copy_to_scratch(k, k_scratch, b, s0, n_pos, rotary_units, token_major)
                        _rotate_tile(k_scratch, zero, zero, k_out, b, s0, n_pos, c_tile, s_tile, layout, half,
                                     rotary_dim, keep_rest, token_major, seq_inner, doubt, exact_only, table_kind)
                    else:
                        _rotate_tile(k, b, s0, k_out, b, s0, n_pos, c_tile, s_tile, layout, half, rotary_dim, copy_k,
                                     token_major, seq_inner, doubt, exact_only, table_kind)
            chunk = _take_next(taken)
    return 0


_LAYOUT_CODES = {"half": 0, "interleaved": 1, "deepseek": 2}
# Numba has neither float16 nor bfloat16 arrays: they travel as 16-bit integer views, told apart by sign
# (keyed by dtype.char: dtype.name is computed in Python on every access), or bfloat16 as uint32 words of
# two channels (BF16_WORDS).
_RAW_VIEWS = {np.dtype(np.float16).char: np.uint16}
try:
    import ml_dtypes

    _RAW_VIEWS[np.dtype(ml_dtypes.bfloat16).char] = np.int16
except ImportError:  # pragma: no cover - bfloat16 arrays cannot exist then
    pass
#: bfloat16 rows travel as uint32 words of two channels (see _words_rows) where 16-bit rows would take the
#: float64 path with 512-bit vectors (see _is_narrow) on a little-endian CPU (figures in docs/backends.md);
#: where 16-bit rows take the certified float32 path, that stays. Only for parallel work (see _Walk). Set
#: ROPEFLOW_NUMBA_BF16_WORDS=0 to keep them 16-bit (read at import).
BF16_WORDS = PREFER_512_BIT and not FORCE_CERTIFIED_HALF and sys.byteorder == "little" \
    and os.environ.get("ROPEFLOW_NUMBA_BF16_WORDS") != "0"
#: Parallel rotations are cut into this many chunks of tiles, taken by the threads as they come free (a few
#: per thread: a thread slowed by another process on its core takes fewer).
_CHUNKS = 4 * numba.config.NUMBA_NUM_THREADS
#: Rotations of fewer elements (q and k together) than this run serially on the calling thread: a decode step
#: of 8 sequences (40960 elements) computes in about 10 us, about what waking the pool costs.
SERIAL_ELEMENTS = 1 << 16


class NumbaBackend:
    name = "numba"
    is_host = True

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
              layout: str, rotary_dim: int, inverse: bool, k: np.ndarray | None = None,
              k_out: np.ndarray | None = None) -> None:
        """Rotate ``x`` into ``out`` (and ``k`` into ``k_out``) in one fused launch (see :func:`_apply_tiles`).

        x, out, k, k_out: (B, H, S, D) views (q and k share B and S); positions: (B, S) or (1, S) int64, rows
        of ``cos``/``sin`` (checked by the caller).
        Strided views are read in place; only an in-place "deepseek" call (which permutes channels within a
        row) copies its input first. Work below :data:`SERIAL_ELEMENTS` elements runs on the calling thread
        (the serial twin: same code, same bits), since waking the thread pool costs more than it saves.

        Precondition (the row loops are compiled on it, see :func:`_load_in`): ``out`` is ``x`` itself or
        shares no memory with ``x``, ``k``, ``cos`` or ``sin``, and likewise ``k_out``; a partial overlap is
        undefined here. The public functions copy such inputs apart before they get here.
        """
        flags = _LAYOUT_CODES[layout] | (_INVERSE if inverse else 0)
        flags |= _tensor_flags(x, out, layout, rotary_dim, _COPY_Q, _SAME_Q)
        if layout == "deepseek" and np.may_share_memory(x, out):
            x = x.copy()  # channels move within a row: an in-place permutation needs the input intact
        if k is not None:
            flags |= _tensor_flags(k, k_out, layout, rotary_dim, _COPY_K, _SAME_K)
            if layout == "deepseek" and np.may_share_memory(k, k_out):
                k = k.copy()
        # one compiled kernel per array type, and Numba's types include write access: tables travel read-only
        # and positions writeable, as on the hot path (cached tables, fresh positions), so that a user's own
        # tables or read-only ids reuse those kernels instead of compiling more
        if cos.flags.writeable or sin.flags.writeable:
            cos, sin = _read_only_view(cos), _read_only_view(sin)
        ids = np.ascontiguousarray(positions, dtype=np.int64).reshape(-1)
        if not ids.flags.writeable:
            ids = ids.copy()
        if _launch(x, out, k, k_out, cos, sin, ids, flags, rotary_dim, False):
            raise ValueError(f"positions: must lie in [0, {cos.shape[0]}), the rows of the table given")

    def prepare_apply(self, q: np.ndarray, k: np.ndarray | None, layout: str, rotary_dim: int,
                      token_major: bool) -> PreparedApply:
        """A :class:`PreparedApply` for arrays like ``q`` and ``k`` (``RotaryEmbedding.plan``)."""
        return PreparedApply(q, k, layout, rotary_dim, token_major)

    def apply_hot(self, x: np.ndarray, out: np.ndarray, k: np.ndarray | None, k_out: np.ndarray | None,
                  cos: np.ndarray, sin: np.ndarray, positions: np.ndarray, starts: bool, layout: str,
                  rotary_dim: int, token_major: bool) -> bool:
        """:meth:`apply` (forward) into ``out``/``k_out`` that share no memory with anything (freshly allocated,
        or the caller's arrays that ``np.may_share_memory`` keeps apart), or in place (``out is x``, ``k_out is
        k``; not "deepseek"): the hot path's entry, without the aliasing checks (a partial overlap would be
        undefined: see :meth:`apply`). With
        ``token_major`` the arrays are (B, S, H, D) (``seq_axis=-3``), else (B, H, S, D).

        positions: 1-D int64, unchecked: first positions ``(B,)`` or ``(1,)`` (``starts``), or ids ``(B * S,)``
        or ``(S,)``. Returns False, having written nothing, when a position lies outside the table (or is
        negative): the caller then runs the general path."""
        flags = _LAYOUT_CODES[layout] | (_STARTS if starts else 0)
        if out is x:
            flags |= _SAME_Q
        elif rotary_dim < x.shape[3]:
            flags |= _COPY_Q
        if k is not None:
            flags |= _SAME_K if k_out is k else _COPY_K if rotary_dim < k.shape[3] else 0
        return not _launch(x, out, k, k_out, cos, sin, positions, flags, rotary_dim, token_major)


def _tensor_flags(x: np.ndarray, out: np.ndarray, layout: str, rotary_dim: int, copy_bit: int, same_bit: int
                  ) -> int:
    """``same_bit`` for an in-place rotation (``out`` the same view as ``x``) of an element-wise layout,
    ``copy_bit`` when ``out`` is another array and channels past ``rotary_dim`` must be copied, else 0."""
    if same_view(x, out):
        return 0 if layout == "deepseek" else same_bit  # "deepseek" in place rotates a copy of x
    return copy_bit if rotary_dim < x.shape[-1] else 0


def _launch(x: np.ndarray, out: np.ndarray, k: np.ndarray | None, k_out: np.ndarray | None, cos: np.ndarray,
            sin: np.ndarray, positions: np.ndarray, flags: int, rotary_dim: int, token_major: bool) -> int:
    """Choose the walk and the kernel (:class:`_Walk`), then run :func:`_apply_tiles` (``k`` None: q alone)
    and return its result (0: done; 1: a position outside the table, nothing written). The arrays are (B, H,
    S, D), or (B, S, H, D) with ``token_major``."""
    return _Walk(x, k, token_major).run(x, out, k, k_out, cos, sin, positions, flags, rotary_dim)


def _read_only_view(a: np.ndarray) -> np.ndarray:
    view = a.view()
    view.flags.writeable = False
    return view


class _Walk:
    """How :func:`_apply_tiles` walks arrays of one shape, strides and dtype (q's; k shares its batch and
    seq), decided once: the arrays are walked in memory order, token-major when the head stride is the
    smaller of the two (e.g. ``seq_axis=-3`` inputs), head-major otherwise; float16 and bfloat16 arrays
    travel as 16-bit integer views, or bfloat16 as uint32 words (:data:`BF16_WORDS`: parallel work whose
    rows, q's, k's and the outputs', are unit-stride, even and aligned for words, and "interleaved" or a
    ``rotary_dim`` that is a multiple of 4); work below :data:`SERIAL_ELEMENTS` runs serially, the rest in
    tiles of at least :data:`RUN_BYTES` per head-major run. :class:`PreparedApply` keeps one per shape."""

    __slots__ = ("view", "words", "transpose", "walk_flags", "tile", "chunks", "serial", "kernel")

    def __init__(self, x: np.ndarray, k: np.ndarray | None, token_major: bool) -> None:
        self.view = _RAW_VIEWS.get(x.dtype.char)
        head_axis, seq_axis = (2, 1) if token_major else (1, 2)
        n_seq = x.shape[seq_axis]
        self.transpose = n_seq > 1 and x.shape[head_axis] > 1 \
            and (abs(x.strides[head_axis]) < abs(x.strides[seq_axis])) != token_major
        token_major = token_major != self.transpose
        self.walk_flags = (0 if k is None else _WITH_K) | (_TOKEN_MAJOR if token_major else 0) \
            | (_SEQ_INNER if n_seq > 1 and not token_major else 0)
        work = x.size + (0 if k is None else k.size)
        self.serial = work < SERIAL_ELEMENTS
        # bfloat16 rows as uint32 words where every row is unit-stride with an even length (the outputs, the
        # alignment and the layout are checked per call, in run); not for serial work, where those checks
        # (about 1 us) cost more than the words save
        self.words = BF16_WORDS and not self.serial and self.view is np.int16 and _word_rows(x) \
            and (k is None or _word_rows(k))
        # head-major memory is read in runs of `tile` rows per head: at least RUN_BYTES of them, so that the
        # prefetchers (which stop at 4 KB page boundaries) keep up
        tile = TILE if self.serial else min(MAX_TILE, max(TILE, RUN_BYTES // max(1, x.shape[3] * x.itemsize)))
        n_batch = x.shape[0]
        while not self.serial and tile > 1 and n_batch * -(-n_seq // tile) < _CHUNKS:
            tile //= 2  # smaller tiles until every chunk has one
        self.tile, self.chunks = tile, 1 if self.serial else _CHUNKS
        # the serial twin is safe in every process state; the parallel kernel object chooses per launch
        self.kernel = _apply_tiles.serial if self.serial else _apply_tiles

    def run(self, x: np.ndarray, out: np.ndarray, k: np.ndarray | None, k_out: np.ndarray | None,
            cos: np.ndarray, sin: np.ndarray, positions: np.ndarray, flags: int, rotary_dim: int) -> int:
        """:func:`_apply_tiles` on arrays of the shape, strides and dtype this walk was made for."""
        if k is None:
            k, k_out = x, out
        view = self.view
        if view is not None:
            words = None
            if self.words and ((flags & 3) == 1 or rotary_dim % 4 == 0) and _word_rows(out) and _word_rows(k_out):
                words = _word_views(x, out, k, k_out)
            x, out, k, k_out = words or (x.view(view), out.view(view), k.view(view), k_out.view(view))
        if self.transpose:
            x, out, k, k_out = (a.transpose(0, 2, 1, 3) for a in (x, out, k, k_out))
        return self.kernel(x, out, k, k_out, cos, sin, positions, flags | self.walk_flags, rotary_dim, self.tile,
                           self.chunks)


def _word_rows(a: np.ndarray) -> bool:
    """Whether a 4-D 16-bit array's rows can be read as uint32 words: unit-stride, of even length."""
    return a.strides[3] == 2 and a.shape[3] % 2 == 0


def _word_views(x: np.ndarray, out: np.ndarray, k: np.ndarray, k_out: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """uint32 views of bfloat16 arrays with :func:`_word_rows`, or None where one would be unaligned (a view
    starting at an odd channel or with odd strides: Numba would compile a kernel for unaligned arrays)."""
    xw, ow, kw, kow = x.view(np.uint32), out.view(np.uint32), k.view(np.uint32), k_out.view(np.uint32)
    if xw.flags.aligned and ow.flags.aligned and kw.flags.aligned and kow.flags.aligned:
        return xw, ow, kw, kow
    return None


class PreparedApply:
    """:meth:`NumbaBackend.apply_hot` for q (and k) of one shape, strides and dtype, with the flags and the
    walk decided once (:meth:`RotaryEmbedding.plan`): a call checks only that its arrays match."""

    __slots__ = ("shape", "strides", "dtype", "k_shape", "k_strides", "flags", "rotary_dim", "walk")

    def __init__(self, q: np.ndarray, k: np.ndarray | None, layout: str, rotary_dim: int, token_major: bool
                 ) -> None:
        self.shape, self.strides, self.dtype = q.shape, q.strides, q.dtype
        self.k_shape = None if k is None else k.shape
        self.k_strides = None if k is None else k.strides
        flags = _LAYOUT_CODES[layout] | (_COPY_Q if rotary_dim < q.shape[3] else 0)
        if k is not None and rotary_dim < k.shape[3]:
            flags |= _COPY_K
        self.flags, self.rotary_dim = flags, rotary_dim
        self.walk = _Walk(q, k, token_major)

    def matches(self, q: Any, k: Any) -> bool:
        """Whether ``q`` and ``k`` are NumPy arrays of the planned shapes, strides and dtype."""
        if type(q) is not np.ndarray or q.shape != self.shape or q.strides != self.strides \
                or q.dtype != self.dtype:
            return False
        if k is None:
            return self.k_shape is None
        return type(k) is np.ndarray and k.shape == self.k_shape and k.strides == self.k_strides \
            and k.dtype == self.dtype

    def __call__(self, q: np.ndarray, q_out: np.ndarray, k: np.ndarray | None, k_out: np.ndarray | None,
                 cos: np.ndarray, sin: np.ndarray, positions: np.ndarray, starts: bool) -> bool:
        """Rotate matching arrays (see :meth:`matches`) into fresh ``q_out``/``k_out``, as
        :meth:`NumbaBackend.apply_hot` does; False, with nothing written, at a position outside the table."""
        return not self.walk.run(q, q_out, k, k_out, cos, sin, positions, self.flags | (_STARTS if starts else 0),
                                 self.rotary_dim)


def make_backend() -> NumbaBackend:
    return NumbaBackend()
