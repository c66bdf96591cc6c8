"""Naive, obviously-correct references: plain loops and the formulas written out, independent of ropeflow.

Nothing here imports ropeflow; tests compare the library against these.
"""

from __future__ import annotations

import math

import mpmath
import numpy as np


def f32_round(x: mpmath.mpf | float) -> np.float32:
    """``x`` rounded once to the nearest float32 (ties to even), with no double rounding."""
    with mpmath.workprec(24):
        y = +mpmath.mpf(x)
    return np.float32(float(y))


def inv_freq_reference_steps(dim: int, base: float) -> np.ndarray:
    """The PyTorch reference ``1.0 / (base ** (arange(0, dim, 2).float() / dim))``, every float32 step
    correctly rounded (base cast to float32 first, as PyTorch does for a Python scalar base)."""
    mpmath.mp.prec = 200
    base32 = mpmath.mpf(float(np.float32(base)))
    out = np.empty(dim // 2, np.float32)
    for j in range(dim // 2):
        e = f32_round(mpmath.mpf(2 * j) / dim)
        power = f32_round(base32 ** mpmath.mpf(float(e)))
        out[j] = f32_round(1 / mpmath.mpf(float(power)))
    return out


def dynamic_base_f64(base: float, factor: float, seq_len: int, max_pos: int, dim: int) -> float:
    """DESIGN 1.2 written out in float64: the base for a served length beyond ``max_pos``."""
    if seq_len <= max_pos:
        return base
    return base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))


def tables_from_inv_freq(inv_freq: np.ndarray, start: int, stop: int, scale: float = 1.0,
                         divisor: float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Row loop: float32 angle ``float32(p / divisor) * inv_freq[j]`` (or float64 for float64 frequencies),
    cos/sin by ``math`` in float64 of that angle, rounded to the frequency dtype, times ``scale``."""
    ftype = inv_freq.dtype.type
    half = inv_freq.shape[0]
    cos = np.empty((stop - start, 2 * half), ftype)
    sin = np.empty((stop - start, 2 * half), ftype)
    for row, p in enumerate(range(start, stop)):
        t = ftype(p)
        if divisor != 1.0:
            t = ftype(t / ftype(divisor))
        for j in range(half):
            angle = ftype(t * inv_freq[j])
            c = ftype(math.cos(float(angle)))
            s = ftype(math.sin(float(angle)))
            if scale != 1.0:
                c, s = ftype(c * ftype(scale)), ftype(s * ftype(scale))
            cos[row, j] = cos[row, j + half] = c
            sin[row, j] = sin[row, j + half] = s
    return cos, sin


def true_cos_sin(p: int, j: int, dim: int, base: float) -> tuple[mpmath.mpf, mpmath.mpf]:
    """Ground truth ``cos(p * base ** (-2j/dim))`` and the sine, in 200-bit arithmetic."""
    mpmath.mp.prec = 200
    angle = mpmath.mpf(p) * mpmath.power(mpmath.mpf(base), -mpmath.mpf(2 * j) / dim)
    return mpmath.cos(angle), mpmath.sin(angle)


def apply_naive(x: np.ndarray, cos: np.ndarray, sin: np.ndarray, positions: np.ndarray, layout: str,
                rotary_dim: int, inverse: bool = False) -> np.ndarray:
    """Loop over (batch, head, seq, pair) of a (B, H, S, D) array; returns float64. DESIGN 1.4 written out:
    half pairs (j, j + half) in place; interleaved pairs (2j, 2j + 1) in place; deepseek pairs (2j, 2j + 1)
    written to (j, j + half), and with ``inverse`` (j, j + half) written back to (2j, 2j + 1). Channels past
    rotary_dim pass through."""
    n_b, n_h, n_s, _ = x.shape
    half = rotary_dim // 2
    out = x.astype(np.float64)
    for b in range(n_b):
        for h in range(n_h):
            for s in range(n_s):
                p = int(positions[b, s])
                row = x[b, h, s].astype(np.float64)
                for j in range(half):
                    c = float(cos[p, j])
                    sn = -float(sin[p, j]) if inverse else float(sin[p, j])
                    if layout == "half":
                        i1, i2, o1, o2 = j, j + half, j, j + half
                    elif layout == "interleaved":
                        i1, i2, o1, o2 = 2 * j, 2 * j + 1, 2 * j, 2 * j + 1
                    elif inverse:  # deepseek undone: the halves go back to the pairs they came from
                        i1, i2, o1, o2 = j, j + half, 2 * j, 2 * j + 1
                    else:
                        i1, i2, o1, o2 = 2 * j, 2 * j + 1, j, j + half
                    x1, x2 = float(row[i1]), float(row[i2])
                    out[b, h, s, o1] = x1 * c - x2 * sn
                    out[b, h, s, o2] = x2 * c + x1 * sn
    return out
