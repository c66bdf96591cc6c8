"""The readable reference backend: vectorized NumPy in the PyTorch reference's op order.

Tables:

    t     = arange(start, stop) as float32 (float64 in exact mode), divided by position_divisor
    freqs = outer(t, inv_freq)                   # float32 IEEE products: bit-identical on every backend
    cos   = cos(concat(freqs, freqs)) * attention_scaling

Rotation (DESIGN 1.4), for each rotated pair (x1, x2) of a row at position p, in float64, rounded once:

    out1 = x1 * cos[p, j] - x2 * sin[p, j]
    out2 = x2 * cos[p, j] + x1 * sin[p, j]

"half" pairs channels (j, j + half) and writes them back there; "interleaved" pairs (2j, 2j + 1) and writes
them back there; "deepseek" pairs (2j, 2j + 1) and writes them to (j, j + half).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from .._xp import same_view
from ..scaling import Frequencies


class NumpyBackend:
    name = "numpy"
    is_host = True

    def empty(self, shape: tuple[int, ...], dtype: Any, device: Any = "cpu") -> np.ndarray:
        return np.empty(shape, dtype=dtype)

    def prepare(self, freqs: Frequencies, device: Any = "cpu") -> Frequencies:
        return freqs

    def build_rows(self, freqs: Frequencies, start: int, cos_out: np.ndarray, sin_out: np.ndarray) -> None:
        rows, dim = cos_out.shape
        half = dim // 2
        ftype = freqs.inv_freq.dtype.type
        t = np.arange(start, start + rows, dtype=np.float64).astype(ftype)
        if freqs.position_divisor != 1.0:
            t = t / ftype(freqs.position_divisor)
        angles = np.outer(t, freqs.inv_freq)
        cos, sin = np.cos(angles), np.sin(angles)
        if freqs.attention_scaling != 1.0:
            scale = ftype(freqs.attention_scaling)
            cos, sin = cos * scale, sin * scale
        cos_out[:, :half] = cos
        cos_out[:, half:] = cos
        sin_out[:, :half] = sin
        sin_out[:, half:] = sin


    def apply(self, x: np.ndarray, out: np.ndarray, cos: np.ndarray, sin: np.ndarray, positions: np.ndarray,
              layout: str, rotary_dim: int, inverse: bool, k: np.ndarray | None = None,
              k_out: np.ndarray | None = None) -> None:
        """Rotate ``x`` into ``out`` (and ``k`` into ``k_out``); ``(batch, heads, seq, head_dim)`` views (any
        strides, may alias).

        positions: ``(batch, seq)`` or ``(1, seq)`` int64 rows of the tables; cos/sin: ``(table_len, rotary_dim)``.
        ``inverse`` negates the sine and keeps the layout's reads and writes, as every backend's kernel does:
        for "deepseek" that is not the inverse rotation (the halves must go back to the pairs), which
        ``apply.RotaryJob`` composes from the "half" one.
        """
        if k is not None:
            self.apply(k, k_out, cos, sin, positions, layout, rotary_dim, inverse)
        half = rotary_dim // 2
        c = cos[positions][:, None, :, :half].astype(np.float64)  # (batch, 1, seq, half)
        s = sin[positions][:, None, :, :half].astype(np.float64)
        if inverse:
            s = -s
        rotated = x[..., :rotary_dim].astype(np.float64)
        if layout == "half":
            x1, x2 = rotated[..., :half], rotated[..., half:]
        else:  # "interleaved" and "deepseek" read pairs (2j, 2j + 1)
            x1, x2 = rotated[..., 0::2], rotated[..., 1::2]
        o1 = x1 * c - x2 * s
        o2 = x2 * c + x1 * s
        if layout == "interleaved":
            result = np.stack([o1, o2], axis=-1).reshape(rotated.shape)
        else:  # "half" and "deepseek" write halves
            result = np.concatenate([o1, o2], axis=-1)
        if rotary_dim < x.shape[-1] and not same_view(x, out):
            out[..., rotary_dim:] = x[..., rotary_dim:]
        out[..., :rotary_dim] = round_once(result, out.dtype)


def round_once(values: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """float64 ``values`` rounded once, to nearest even, to ``dtype``.

    NumPy's float64 -> float16/32 casts round once. ml_dtypes' float64 -> bfloat16 cast goes through float32,
    rounding twice (a value just above a bfloat16 halfway point can land on it in float32, then round to even
    the wrong way). Rounding to float32 *to odd* first makes the second rounding exact: float32 keeps 16 more
    bits than bfloat16 at every exponent, and an odd last bit records that something was dropped.
    """
    if dtype.name != "bfloat16":
        return values.astype(dtype)
    with np.errstate(over="ignore"):  # beyond float32: inf, made odd-truncated just below
        f32 = values.astype(np.float32)
    bits = f32.view(np.uint32)
    inexact = f32.astype(np.float64) != values
    bits = bits - (inexact & (np.abs(f32) > np.abs(values))).astype(np.uint32)  # truncate toward zero
    bits = bits | inexact.astype(np.uint32)  # then mark the dropped bits with an odd last bit
    return bits.view(np.float32).astype(dtype)


def make_backend() -> NumpyBackend:
    return NumpyBackend()
