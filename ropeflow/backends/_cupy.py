"""The CuPy backend: CUDA C kernels from ``kernels/rope.cu`` through ``cupy.RawModule``.

* The ``.cu`` source ships as package data; it is read once, prefixed with a ``#line`` directive so NVRTC
  errors point at the real file and line, and compiled on first use, one ``RawModule`` per device.
* Template instances are named through ``name_expressions`` (thinc's pattern) and fetched lazily.
* Tables live on the device of the input; the front end keys its cache by device id.

The host-side helpers (:func:`kernel_name`, :func:`launch_config`, :func:`kernel_source`) need neither a
GPU nor CuPy, so they are unit-tested everywhere.
"""

from __future__ import annotations

import threading
from importlib import resources
from typing import Any

import numpy as np

from .._errors import BackendUnavailableError
from ..scaling import Frequencies

THREADS_PER_BLOCK = 256
_TABLE_EXACT_TEMPLATE = "rope_table_exact<{}>"
_CTYPES = {"float32": "float", "float64": "double"}
CUDA_EXTRAS_HINT = "pip install 'ropeflow[cuda12]' or 'ropeflow[cuda13]' (matching your CUDA driver)"


def kernel_source() -> str:
    """``rope.cu`` with a ``#line 1 "rope.cu"`` directive in front."""
    text = resources.files("ropeflow.backends").joinpath("kernels/rope.cu").read_text(encoding="utf-8")
    return '#line 1 "rope.cu"\n' + text


def kernel_name(inv_freq_dtype: Any, out_dtype: Any) -> str:
    """The kernel that fills a table of ``out_dtype`` from frequencies of ``inv_freq_dtype``.

    float32 frequencies (reference precision) -> ``rope_table_ref`` (float32 tables only);
    float64 frequencies (exact precision) -> ``rope_table_exact<float|double>``.
    """
    freq, out = np.dtype(inv_freq_dtype).name, np.dtype(out_dtype).name
    if freq == "float32":
        if out != "float32":
            raise TypeError(f"dtype: reference-precision tables are float32, got a {out} output")
        return "rope_table_ref"
    if freq == "float64" and out in _CTYPES:
        return _TABLE_EXACT_TEMPLATE.format(_CTYPES[out])
    raise TypeError(f"dtype: no table kernel for {freq} frequencies and {out} output; allowed: float32, float64")


def name_expressions() -> tuple[str, ...]:
    """The template instances the module is compiled with."""
    return tuple(_TABLE_EXACT_TEMPLATE.format(c) for c in _CTYPES.values())


def launch_config(work_items: int, threads: int = THREADS_PER_BLOCK, max_blocks: int = 65535 * 8
                  ) -> tuple[tuple[int], tuple[int]]:
    """``(grid, block)`` for a grid-stride loop over ``work_items`` threads' worth of work."""
    if work_items < 0:
        raise ValueError(f"work_items: must be >= 0, got {work_items}")
    blocks = max(1, min((work_items + threads - 1) // threads, max_blocks))
    return (blocks,), (threads,)


def _import_cupy() -> Any:
    try:
        import cupy
    except ImportError as exc:
        raise BackendUnavailableError(f"backend 'cupy': CuPy is not installed; {CUDA_EXTRAS_HINT}") from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # CUDARuntimeError without a driver or device
        raise BackendUnavailableError(
            f"backend 'cupy': CuPy is installed but no usable CUDA GPU or driver was found ({exc}); "
            "use backend='numba' or 'numpy' on this machine"
        ) from exc
    if count < 1:
        raise BackendUnavailableError("backend 'cupy': CuPy is installed but reports no CUDA device")
    return cupy


class CupyBackend:
    name = "cupy"
    is_host = False

    def __init__(self) -> None:
        self.cupy = _import_cupy()
        import array_api_compat.cupy as xp

        self.xp = xp
        self._modules: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._checked = False

    # --------------------------------------------------------------------------------- compilation
    def module(self, device: int) -> Any:
        """The compiled ``RawModule`` for ``device`` (compiled once per device)."""
        mod = self._modules.get(device)
        if mod is None:
            with self._lock:
                mod = self._modules.get(device)
                if mod is None:
                    with self.cupy.cuda.Device(device):
                        mod = self.cupy.RawModule(code=kernel_source(), options=("-std=c++14",),
                                                  name_expressions=name_expressions())
                        mod.compile()
                    self._modules[device] = mod
        return mod

    def self_test(self) -> None:
        """Compile and run a small table once; raise BackendUnavailableError if the GPU cannot."""
        if self._checked:
            return
        from ..scaling import compute_frequencies

        try:
            freqs = compute_frequencies(None, 8, 10000.0, 16, "reference")
            device = int(self.cupy.cuda.runtime.getDevice())
            cos = self.empty((4, 8), np.float32, device)
            sin = self.empty((4, 8), np.float32, device)
            self.build_rows(self.prepare(freqs, device), 0, cos, sin)
            self.cupy.cuda.Device(device).synchronize()
        except Exception as exc:
            raise BackendUnavailableError(f"backend 'cupy': a test kernel failed to compile or run: {exc}") from exc
        self._checked = True

    # ----------------------------------------------------------------------------------- protocol
    def empty(self, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        with self.cupy.cuda.Device(device):
            return self.cupy.empty(shape, dtype=dtype)

    def prepare(self, freqs: Frequencies, device: Any) -> tuple[Frequencies, Any, int]:
        with self.cupy.cuda.Device(device):
            return freqs, self.cupy.asarray(freqs.inv_freq), int(device)

    def build_rows(self, prepared: tuple[Frequencies, Any, int], start: int, cos_out: Any, sin_out: Any) -> None:
        freqs, inv_freq, device = prepared
        rows, dim = cos_out.shape
        half = dim // 2
        if rows == 0:
            return
        if not (cos_out.flags.c_contiguous and sin_out.flags.c_contiguous):
            raise ValueError("cos_out/sin_out: table outputs must be C-contiguous")
        name = kernel_name(inv_freq.dtype, cos_out.dtype)
        grid, block = launch_config(rows * half)
        with self.cupy.cuda.Device(device):
            kernel = self.module(device).get_function(name)
            if name == "rope_table_ref":
                args = (inv_freq, np.int64(start), np.int64(rows), np.int32(half),
                        np.float32(freqs.position_divisor), np.float32(freqs.attention_scaling),
                        np.int32(freqs.position_divisor != 1.0), np.int32(freqs.attention_scaling != 1.0),
                        cos_out, sin_out)
            else:
                args = (inv_freq, np.int64(start), np.int64(rows), np.int32(half),
                        np.float64(freqs.position_divisor), np.float64(freqs.attention_scaling), cos_out, sin_out)
            kernel(grid, block, args)

    def namespace_for_current_device(self, dtype_name: str) -> tuple[Any, Any, int]:
        """``(xp, dtype, device id)`` for tables requested without an input array."""
        if dtype_name == "bfloat16":
            raise TypeError("dtype: bfloat16 is not supported on the cupy backend; use float16, float32 or float64")
        return self.xp, np.dtype(dtype_name), int(self.cupy.cuda.runtime.getDevice())


def make_backend() -> CupyBackend:
    return CupyBackend()
