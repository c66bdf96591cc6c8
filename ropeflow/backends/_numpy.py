"""The readable reference backend: vectorized NumPy in the PyTorch reference's op order.

    t     = arange(start, stop) as float32 (float64 in exact mode), divided by position_divisor
    freqs = outer(t, inv_freq)                   # float32 IEEE products: bit-identical on every backend
    cos   = cos(concat(freqs, freqs)) * attention_scaling
"""

from __future__ import annotations

from typing import Any

import numpy as np

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


def make_backend() -> NumpyBackend:
    return NumpyBackend()
