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
from .._xp import same_view
from ..scaling import Frequencies

THREADS_PER_BLOCK = 256
_TABLE_EXACT_TEMPLATE = "rope_table_exact<{}>"
_CTYPES = {"float32": "float", "float64": "double"}
_APPLY_TEMPLATE = "rope_apply<{}, {}, {}>"
_APPLY_TYPES = {"float32": ("float", "float"), "float64": ("double", "double"), "float16": ("rope_half", "float")}
LAYOUT_CODES = {"half": 0, "interleaved": 1, "deepseek": 2}
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


def apply_kernel_name(x_dtype: Any, layout: str) -> str:
    """The rotation kernel for inputs of ``x_dtype`` and a layout; tables are float32 (float64 for float64)."""
    name = np.dtype(x_dtype).name
    if name not in _APPLY_TYPES:
        raise TypeError(f"x.dtype: the cupy backend rotates float16, float32 and float64, got {name}")
    if layout not in LAYOUT_CODES:
        raise ValueError(f"layout: unknown layout {layout!r}; allowed: {', '.join(map(repr, LAYOUT_CODES))}")
    return _APPLY_TEMPLATE.format(*_APPLY_TYPES[name], LAYOUT_CODES[layout])


def apply_table_dtype(x_dtype: Any) -> np.dtype:
    """The table dtype the rotation kernel for ``x_dtype`` reads."""
    return np.dtype(np.float64 if np.dtype(x_dtype) == np.float64 else np.float32)


def name_expressions() -> tuple[str, ...]:
    """The template instances the module is compiled with."""
    tables = tuple(_TABLE_EXACT_TEMPLATE.format(c) for c in _CTYPES.values())
    applies = tuple(_APPLY_TEMPLATE.format(t, tt, code) for t, tt in _APPLY_TYPES.values()
                    for code in LAYOUT_CODES.values())
    return tables + applies


def tensor_args(x4: Any, out4: Any) -> tuple:
    """The per-tensor kernel arguments: in, out, rows, heads, input and output element strides."""
    b, h, s, _ = x4.shape
    isz, osz = x4.itemsize, out4.itemsize
    strides = [st // isz for st in x4.strides] + [st // osz for st in out4.strides]
    return (x4, out4, np.int64(b * h * s), np.int64(h), *(np.int64(v) for v in strides))


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

    def apply(self, x: Any, out: Any, cos: Any, sin: Any, positions: Any, layout: str, rotary_dim: int,
              inverse: bool, k: Any = None, k_out: Any = None) -> None:
        """Rotate ``x`` (and ``k``, in the same launch) into ``out`` (``k_out``); (B, H, S, D) strided views."""
        copy_rest = rotary_dim < int(x.shape[-1]) and not same_view(x, out)
        if k is not None and copy_rest != (rotary_dim < int(k.shape[-1]) and not same_view(k, k_out)):
            raise ValueError("k_out: q and k must both be rotated in place, or both out of place")
        if layout == "deepseek" and self.cupy.may_share_memory(x, out):
            x = x.copy()  # channels move within a row: an in-place permutation needs the input intact
        if k is not None and layout == "deepseek" and self.cupy.may_share_memory(k, k_out):
            k = k.copy()
        name = apply_kernel_name(x.dtype, layout)
        want = apply_table_dtype(x.dtype)
        cos = self.cupy.ascontiguousarray(cos, dtype=want)
        sin = self.cupy.ascontiguousarray(sin, dtype=want)
        half = rotary_dim // 2
        head_dim = int(x.shape[-1])
        a_args = tensor_args(x, out)
        if k is None:
            dummy = self.cupy.empty((1, 1, 1, 1), dtype=x.dtype)
            b_args = (dummy, dummy, np.int64(0), np.int64(1)) + (np.int64(0),) * 8
        else:
            b_args = tensor_args(k, k_out)
        rows = int(a_args[2]) + int(b_args[2])
        per_row = half + (head_dim - rotary_dim if copy_rest else 0)
        grid, block = launch_config(rows * per_row)
        positions = self.cupy.asarray(positions, dtype=self.cupy.int64)
        pos_sb, pos_ss = (st // positions.itemsize for st in positions.strides)
        device = x.device.id
        with self.cupy.cuda.Device(device):
            kernel = self.module(device).get_function(name)
            kernel(grid, block, (*a_args, *b_args, cos, sin, np.int64(cos.shape[1]), positions, np.int64(pos_sb),
                                 np.int64(pos_ss), np.int64(x.shape[2]), np.int32(half), np.int32(rotary_dim),
                                 np.int32(head_dim), np.int32(copy_rest), np.float64(-1.0 if inverse else 1.0)))

    def namespace_for_current_device(self, dtype_name: str) -> tuple[Any, Any, int]:
        """``(xp, dtype, device id)`` for tables requested without an input array."""
        if dtype_name == "bfloat16":
            raise TypeError("dtype: bfloat16 is not supported on the cupy backend; use float16, float32 or float64")
        return self.xp, np.dtype(dtype_name), int(self.cupy.cuda.runtime.getDevice())


def make_backend() -> CupyBackend:
    return CupyBackend()
