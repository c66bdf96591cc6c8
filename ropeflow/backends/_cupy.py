"""The CuPy backend: CUDA C kernels from ``kernels/rope.cu`` through ``cupy.RawModule``.

* The ``.cu`` source ships as package data; it is read once, prefixed with a ``#line`` directive so NVRTC
  errors point at the real file and line, and compiled on first use (options :data:`COMPILE_OPTIONS`), one
  ``RawModule`` per device. Template instances are named through :func:`name_expressions` (thinc's pattern).
* Every launch is described by a pure function of the arrays (:func:`table_launch`, :func:`apply_launch`,
  :func:`cast_launch`) that returns a :class:`Launch`: kernel name, grid, block, the argument tuple and the
  device. They touch no GPU and accept NumPy arrays in place of CuPy arrays, so the test suite runs the
  kernels on the CPU with exactly these tuples (``tests/test_cuda_host.py``).
* The hot path (``apply``) makes no allocation, no table cast and no device-to-host synchronization: the
  kernels read float32 or float64 tables directly, q-only calls pass null pointers for k, and positions
  outside the tables are caught in the kernel, which writes NaN for those rows and records the error in a
  per-device buffer that :meth:`CupyBackend.check_errors` reads at a point of the caller's choosing.
* Everything runs on the device of the input (q): a tensor, table or position array on another device is a
  ``ValueError`` naming it, never an illegal memory access.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from typing import Any

import numpy as np

from .._errors import BackendUnavailableError
from .._xp import same_view
from ..scaling import Frequencies

#: NVRTC options of the RawModule (CuPy adds the architecture); the NVRTC test compiles with exactly these.
COMPILE_OPTIONS = ("-std=c++14",)
THREADS_PER_BLOCK = 256
#: Largest gridDim.y / gridDim.z; kernels are grid-stride loops, so larger problems loop.
MAX_GRID_YZ = 65535
#: Rows (batch * heads * seq) of one tensor in one launch: the kernel splits row indices with 32-bit
#: multiply-shift division, exact below 2**31.
MAX_ROWS = 2**31 - 1
LAYOUT_CODES = {"half": 0, "interleaved": 1, "deepseek": 2}
CUDA_EXTRAS_HINT = "pip install 'ropeflow[cuda12]' or 'ropeflow[cuda13]' (matching your CUDA driver)"

_TABLE_EXACT_TEMPLATE = "rope_table_exact<{}>"
_APPLY_TEMPLATE = "rope_apply<{}, {}, {}>"
_CAST_TEMPLATE = "rope_cast<{}, {}>"
#: C++ element type of each input dtype the rotation kernel accepts.
_ELEMENT_TYPES = {"float32": "float", "float64": "double", "float16": "rope_half", "bfloat16": "rope_bf16"}
#: Table dtypes the kernels write (exact tables) and read (rotation).
_TABLE_TYPES = {"float32": "float", "float64": "double"}
#: 16-bit table dtypes made by the cast kernel from a float32 or float64 storage table.
_CAST_TARGETS = {"float16": "rope_half", "bfloat16": "rope_bf16"}


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
    if freq == "float64" and out in _TABLE_TYPES:
        return _TABLE_EXACT_TEMPLATE.format(_TABLE_TYPES[out])
    raise TypeError(f"dtype: no table kernel for {freq} frequencies and {out} output; allowed: float32, float64")


def apply_kernel_name(x_dtype: Any, layout: str, table_dtype: Any = None) -> str:
    """The rotation kernel for inputs of ``x_dtype``, tables of ``table_dtype`` (float32 or float64; default:
    float64 for float64 inputs, else float32) and a layout."""
    name = np.dtype(x_dtype).name
    if name not in _ELEMENT_TYPES:
        raise TypeError(f"x.dtype: the cupy backend rotates {', '.join(_ELEMENT_TYPES)}, got {name}")
    if table_dtype is None:
        table_dtype = np.float64 if name == "float64" else np.float32
    table = np.dtype(table_dtype).name
    if table not in _TABLE_TYPES:
        raise TypeError(f"cos.dtype: the cupy rotation kernel reads float32 or float64 tables, got {table}")
    if layout not in LAYOUT_CODES:
        raise ValueError(f"layout: unknown layout {layout!r}; allowed: {', '.join(map(repr, LAYOUT_CODES))}")
    return _APPLY_TEMPLATE.format(_ELEMENT_TYPES[name], _TABLE_TYPES[table], LAYOUT_CODES[layout])


def cast_kernel_name(src_dtype: Any, dst_dtype: Any) -> str:
    """The kernel that rounds a float32/float64 table once to float16 or bfloat16."""
    src, dst = np.dtype(src_dtype).name, np.dtype(dst_dtype).name
    if src not in _TABLE_TYPES or dst not in _CAST_TARGETS:
        raise TypeError(f"dtype: no cast kernel from {src} to {dst}; allowed: float32/float64 to float16/bfloat16")
    return _CAST_TEMPLATE.format(_TABLE_TYPES[src], _CAST_TARGETS[dst])


def name_expressions() -> tuple[str, ...]:
    """The template instances the module is compiled with (``rope_table_ref`` is ``extern "C"``)."""
    tables = tuple(_TABLE_EXACT_TEMPLATE.format(c) for c in _TABLE_TYPES.values())
    casts = tuple(_CAST_TEMPLATE.format(s, d) for s in _TABLE_TYPES.values() for d in _CAST_TARGETS.values())
    applies = tuple(_APPLY_TEMPLATE.format(t, tt, code) for t in _ELEMENT_TYPES.values()
                    for tt in _TABLE_TYPES.values() for code in LAYOUT_CODES.values())
    return tables + casts + applies


def kernel_names() -> tuple[str, ...]:
    """Every kernel the backend can launch: ``rope_table_ref`` and the :func:`name_expressions`."""
    return ("rope_table_ref",) + name_expressions()


# ------------------------------------------------------------------------------------ launch geometry
def launch_config(work_items: int, threads: int = THREADS_PER_BLOCK, max_blocks: int = 65535 * 8
                  ) -> tuple[tuple[int], tuple[int]]:
    """``(grid, block)`` for a 1-D grid-stride loop over ``work_items`` threads' worth of work."""
    if work_items < 0:
        raise ValueError(f"work_items: must be >= 0, got {work_items}")
    blocks = max(1, min((work_items + threads - 1) // threads, max_blocks))
    return (blocks,), (threads,)


def launch_config_2d(width: int, rows: int, depth: int = 1, threads: int = THREADS_PER_BLOCK
                     ) -> tuple[tuple[int, int, int], tuple[int, int, int]]:
    """``(grid, block)`` for the 2-D kernels: x covers ``width`` items of a row (consecutive threads touch
    consecutive columns), y covers ``rows`` (capped at :data:`MAX_GRID_YZ` blocks: the kernels loop), z is
    ``depth`` (1, or 2 for q and k)."""
    if width < 0 or rows < 0 or depth < 1:
        raise ValueError(f"width, rows, depth: expected >= 0, >= 0, >= 1, got {width}, {rows}, {depth}")
    bx = 1
    while bx < min(width, threads):
        bx *= 2
    by = max(1, threads // bx)
    gx = max(1, -(-width // bx))
    gy = max(1, min(-(-rows // by), MAX_GRID_YZ))
    return (gx, gy, depth), (bx, by, 1)


def fast_divisor(d: int) -> tuple[int, int]:
    """``(mul, shr)`` with ``n // d == (n * mul >> 32) >> shr`` for every ``0 <= n < 2**31`` (``mul == 0``
    encodes ``d == 1``): the kernel's ``rope_div``, after Granlund and Montgomery (CUTLASS' FastDivmod)."""
    if d < 1 or d > MAX_ROWS:
        raise ValueError(f"d: the divisor must be in [1, 2**31), got {d}")
    if d == 1:
        return 0, 0
    log2 = (d - 1).bit_length()  # ceil(log2(d))
    p = 31 + log2
    return ((1 << p) + d - 1) // d, p - 32


# ------------------------------------------------------------------------------------ launch builders
@dataclass(frozen=True)
class Launch:
    """One kernel launch: ``kernel(grid, block, args)`` on ``device`` (None for host arrays)."""

    name: str
    grid: tuple[int, ...]
    block: tuple[int, ...]
    args: tuple
    device: Any


def device_of(a: Any) -> Any:
    """The CUDA device ordinal holding ``a`` (``a.device.id``), or None for host (NumPy) arrays."""
    return getattr(getattr(a, "device", None), "id", None)


def element_strides(a: Any, name: str) -> tuple[int, ...]:
    """``a``'s strides in elements; a byte stride, or a data address, that is not a multiple of the itemsize is
    a ValueError (on a GPU a misaligned element is a fault that poisons the whole CUDA context)."""
    size = a.itemsize
    bad = [s for s in a.strides if s % size]
    if bad:
        raise ValueError(f"{name}: byte strides {tuple(a.strides)} are not multiples of the itemsize {size}; the "
                         "cupy kernels address elements (pass a copy, e.g. cupy.ascontiguousarray)")
    if isinstance(a, np.ndarray):  # the host harness (a NumPy .data is a memoryview, refused for bfloat16)
        address = a.__array_interface__["data"][0]
    else:
        address = getattr(getattr(a, "data", None), "ptr", None)  # CuPy
    if address is not None and a.size and address % size:
        raise ValueError(f"{name}: its data address {address:#x} is not a multiple of the itemsize {size} (a "
                         "view at a byte offset that is not a multiple of it); pass a copy, e.g. x.copy()")
    return tuple(s // size for s in a.strides)


def _same_device(device: Any, **arrays: Any) -> None:
    for name, a in arrays.items():
        if a is not None and device_of(a) != device:
            raise ValueError(f"{name}: on device {device_of(a)}, but q is on device {device}; the kernel runs on "
                             "q's device and every array it reads or writes must be there")


def table_launch(inv_freq: Any, freqs: Frequencies, start: int, cos_out: Any, sin_out: Any) -> Launch | None:
    """Fill table rows ``[start, start + len(cos_out))``: cos_out, sin_out ``(rows, dim)`` C-contiguous,
    float32 (reference precision, float32 ``inv_freq``) or float32/float64 (exact, float64 ``inv_freq``)."""
    rows, dim = cos_out.shape
    half = dim // 2
    if tuple(sin_out.shape) != (rows, dim) or sin_out.dtype != cos_out.dtype:
        raise ValueError(f"sin_out: shape {tuple(sin_out.shape)} {sin_out.dtype} must equal cos_out's "
                         f"{(rows, dim)} {cos_out.dtype}")
    if inv_freq.shape != (half,):
        raise ValueError(f"inv_freq: shape {tuple(inv_freq.shape)} does not match the table width {dim}")
    if rows == 0 or half == 0:
        return None
    if not (cos_out.flags.c_contiguous and sin_out.flags.c_contiguous):
        raise ValueError("cos_out/sin_out: table outputs must be C-contiguous")
    device = device_of(inv_freq)
    _same_device(device, cos_out=cos_out, sin_out=sin_out)
    name = kernel_name(inv_freq.dtype, cos_out.dtype)
    grid, block = launch_config_2d(half, rows)
    if name == "rope_table_ref":
        args = (inv_freq, np.int64(start), np.int64(rows), np.int32(half), np.float32(freqs.position_divisor),
                np.float32(freqs.attention_scaling), np.int32(freqs.position_divisor != 1.0),
                np.int32(freqs.attention_scaling != 1.0), cos_out, sin_out)
    else:
        args = (inv_freq, np.int64(start), np.int64(rows), np.int32(half), np.float64(freqs.position_divisor),
                np.float64(freqs.attention_scaling), cos_out, sin_out)
    return Launch(name, grid, block, args, device)


def cast_launch(src: Any, dst: Any) -> Launch | None:
    """Round the float32/float64 table ``src`` once into ``dst`` (float16 or bfloat16, same shape);
    both C-contiguous."""
    if tuple(src.shape) != tuple(dst.shape):
        raise ValueError(f"dst: shape {tuple(dst.shape)} must equal src's {tuple(src.shape)}")
    if not (src.flags.c_contiguous and dst.flags.c_contiguous):
        raise ValueError("src/dst: table casts need C-contiguous arrays")
    name = cast_kernel_name(src.dtype, dst.dtype)
    device = device_of(src)
    _same_device(device, dst=dst)
    n = int(src.size)
    if n == 0:
        return None
    grid, block = launch_config(n)
    return Launch(name, grid + (1, 1), block + (1, 1), (src, dst, np.int64(n)), device)


def deepseek_sources(layout: str, x: Any, out: Any, k: Any, k_out: Any, may_share_memory: Callable) -> tuple:
    """``(x, k)``, copied where an in-place "deepseek" call needs its input intact (channels move within a
    row); the only allocation of a rotation, and only in that case."""
    if layout == "deepseek":
        if may_share_memory(x, out):
            x = x.copy()
        if k is not None and may_share_memory(k, k_out):
            k = k.copy()
    return x, k


def _tensor_args(x4: Any, out4: Any, rotary_dim: int, name: str) -> tuple:
    """q's or k's kernel arguments: in, out, rows, heads, heads' (mul, shr), width, in/out element strides."""
    b, h, s, head_dim = (int(v) for v in x4.shape)
    if tuple(out4.shape) != tuple(x4.shape) or out4.dtype != x4.dtype:
        raise ValueError(f"{name}_out: shape {tuple(out4.shape)} {out4.dtype} must equal {name}'s "
                         f"{tuple(x4.shape)} {x4.dtype}")
    if rotary_dim > head_dim:
        raise ValueError(f"rotary_dim: {rotary_dim} is larger than {name}'s head_dim {head_dim}")
    rows = b * h * s
    if rows > MAX_ROWS:
        raise ValueError(f"{name}: {rows} rows (batch * heads * seq) in one launch; the cupy kernel handles at "
                         f"most {MAX_ROWS}: rotate it in chunks along the batch axis")
    width = rotary_dim // 2 + (head_dim - rotary_dim if rotary_dim < head_dim and not same_view(x4, out4) else 0)
    mul, shr = fast_divisor(max(h, 1))
    return (x4, out4, np.uint32(rows), np.uint32(h), np.uint32(mul), np.uint32(shr), np.int32(width),
            *(np.int64(v) for v in element_strides(x4, name)),
            *(np.int64(v) for v in element_strides(out4, f"{name}_out")))


_ABSENT_TENSOR = (None, None, np.uint32(0), np.uint32(1), np.uint32(0), np.uint32(0), np.int32(0)) + (np.int64(0),) * 8


def apply_launch(x: Any, out: Any, cos: Any, sin: Any, positions: Any, layout: str, rotary_dim: int,
                 inverse: bool, k: Any = None, k_out: Any = None, *, error: Any) -> Launch | None:
    """The rotation of ``x`` into ``out`` (and ``k`` into ``k_out``, in the same launch).

    x, out: ``(B, H, S, D)`` views, any element strides; k, k_out: ``(B, Hk, S, Dk)`` (head count and head_dim
    may differ from q's), same dtype; each tensor is in place or not on its own. cos, sin: ``(table_len, >=
    rotary_dim // 2)`` float32 or float64, any element strides. positions: ``(B, S)`` int64 table rows (a
    broadcast view is fine). error: the per-device int64 error buffer of 3 elements. Everything must be on
    x's device, which the launch uses.
    """
    device = device_of(x)
    _same_device(device, out=out, k=k, k_out=k_out, cos=cos, sin=sin, positions=positions, error=error)
    n_batch, _, n_seq, _ = (int(v) for v in x.shape)
    if k is not None:
        if k_out is None:
            raise ValueError("k_out: required with k")
        if k.dtype != x.dtype or int(k.shape[0]) != n_batch or int(k.shape[2]) != n_seq:
            raise ValueError(f"k: shape {tuple(k.shape)} {k.dtype} must share q's batch, seq and dtype "
                             f"({n_batch}, _, {n_seq}, _) {x.dtype}")
    if cos.dtype != sin.dtype or tuple(cos.shape) != tuple(sin.shape) or cos.ndim != 2:
        raise ValueError(f"cos, sin: expected two (table_len, rotary_dim) tables of one dtype, got "
                         f"{tuple(cos.shape)} {cos.dtype} and {tuple(sin.shape)} {sin.dtype}")
    if rotary_dim <= 0 or rotary_dim % 2 or rotary_dim // 2 > int(cos.shape[1]):
        raise ValueError(f"rotary_dim: must be a positive even integer with rotary_dim // 2 <= the tables' width "
                         f"{int(cos.shape[1])}, got {rotary_dim}")
    if positions.dtype != np.int64 or tuple(positions.shape) != (n_batch, n_seq):
        raise ValueError(f"positions: expected int64 of shape (batch, seq) = {(n_batch, n_seq)}, got "
                         f"{positions.dtype} {tuple(positions.shape)}")
    if error.dtype != np.int64 or error.shape != (3,):
        raise ValueError(f"error: expected an int64 buffer of shape (3,), got {error.dtype} {tuple(error.shape)}")
    name = apply_kernel_name(x.dtype, layout, cos.dtype)
    a_args = _tensor_args(x, out, rotary_dim, "q")
    b_args = _ABSENT_TENSOR if k is None else _tensor_args(k, k_out, rotary_dim, "k")
    rows = max(int(a_args[2]), int(b_args[2]))
    if rows == 0:
        return None
    cos_rs, cos_cs = element_strides(cos, "cos")
    sin_rs, sin_cs = element_strides(sin, "sin")
    pos_sb, pos_ss = element_strides(positions, "positions")
    seq_mul, seq_shr = fast_divisor(n_seq)
    grid, block = launch_config_2d(max(int(a_args[6]), int(b_args[6])), rows, 1 if k is None else 2)
    args = (*a_args, *b_args, cos, sin, np.int64(cos_rs), np.int64(cos_cs), np.int64(sin_rs), np.int64(sin_cs),
            np.int64(cos.shape[0]), positions, np.int64(pos_sb), np.int64(pos_ss), np.uint32(n_seq),
            np.uint32(seq_mul), np.uint32(seq_shr), np.int32(rotary_dim // 2), np.int32(rotary_dim),
            np.float64(-1.0 if inverse else 1.0), np.int32(token_major_order(x)), error)
    return Launch(name, grid, block, args, device)


def token_major_order(x: Any) -> bool:
    """Whether the rotation kernel should walk ``x`` ((B, H, S, D) view) in (batch, seq, head) row order: when
    its head stride is the smaller of head and seq (token-major memory, ``seq_axis=-3``), so that consecutive
    rows are neighbours in memory, as for head-major arrays in (batch, head, seq) order."""
    _, n_heads, n_seq, _ = (int(v) for v in x.shape)
    if n_heads < 2 or n_seq < 2:
        return False
    return abs(int(x.strides[1])) < abs(int(x.strides[2]))


def position_error(values: Any) -> ValueError | None:
    """The error recorded in an error buffer's host copy ``[flag, position, table_rows]``, or None."""
    flag, position, rows = (int(v) for v in values)
    if not flag:
        return None
    return ValueError(f"positions: a rotation read position {position}, outside the tables' rows [0, {rows}); "
                      "its rotated channels were written as NaN. Build the tables for more positions.")


# ------------------------------------------------------------------------------------------- backend
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
        self._errors: dict[int, Any] = {}
        self._lock = threading.Lock()
        self._checked = False

    # --------------------------------------------------------------------------------- compilation
    def module(self, device: int) -> Any:
        """The compiled ``RawModule`` for ``device`` (compiled once per device)."""

        def compile_module() -> Any:
            mod = self.cupy.RawModule(code=kernel_source(), options=COMPILE_OPTIONS,
                                      name_expressions=name_expressions())
            mod.compile()
            return mod

        return self._per_device(self._modules, device, compile_module)

    def _per_device(self, cache: dict[int, Any], device: int, make: Any) -> Any:
        """``cache[device]``, made once (under the lock, with ``device`` current) on first use."""
        value = cache.get(device)
        if value is None:
            with self._lock:
                value = cache.get(device)
                if value is None:
                    with self.cupy.cuda.Device(device):
                        value = make()
                    cache[device] = value
        return value

    def error_buffer(self, device: int) -> Any:
        """The device's int64 ``[flag, position, table_rows]`` buffer the rotation kernel reports into
        (allocated once per device)."""
        return self._per_device(self._errors, device, lambda: self.cupy.zeros(3, dtype=self.cupy.int64))

    def check_errors(self, device: int | None = None) -> None:
        """Raise the ``ValueError`` of an out-of-range position seen by a rotation since the last check, on
        ``device`` (default: every device used), and clear it. This synchronizes: call it at a point where
        the caller synchronizes anyway (end of a step, before reading results), not per call."""
        devices = list(self._errors) if device is None else [device]
        for d in devices:
            buf = self._errors.get(d)
            if buf is None:
                continue
            with self.cupy.cuda.Device(d):
                err = position_error(buf.get())
                if err is not None:
                    buf.fill(0)
                    raise err

    def _launch(self, launch: Launch | None) -> None:
        if launch is None:
            return
        with self.cupy.cuda.Device(launch.device):
            self.module(launch.device).get_function(launch.name)(launch.grid, launch.block, launch.args)

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
        freqs, inv_freq, _ = prepared
        self._launch(table_launch(inv_freq, freqs, start, cos_out, sin_out))

    def cast_table(self, table: Any, dtype: Any, device: Any) -> Any:
        """``table`` (float32/float64, C-contiguous) cast to ``dtype`` on its device: float16 and bfloat16 by
        the cast kernel (one rounding, no toolkit headers), other dtypes by CuPy."""
        with self.cupy.cuda.Device(device):
            if np.dtype(dtype).name not in _CAST_TARGETS:
                return self.cupy.asarray(table).astype(dtype)
            out = self.cupy.empty(table.shape, dtype=dtype)
            self._launch(cast_launch(self.cupy.ascontiguousarray(table), out))
            return out

    def apply(self, x: Any, out: Any, cos: Any, sin: Any, positions: Any, layout: str, rotary_dim: int,
              inverse: bool, k: Any = None, k_out: Any = None) -> None:
        """Rotate ``x`` (and ``k``, in the same launch) into ``out`` (``k_out``); (B, H, S, D) strided views,
        on x's device. No allocation (but the input copy of an in-place "deepseek" call), no sync."""
        device = device_of(x)
        with self.cupy.cuda.Device(device):
            x, k = deepseek_sources(layout, x, out, k, k_out, self.cupy.may_share_memory)
            self._launch(apply_launch(x, out, cos, sin, positions, layout, rotary_dim, inverse, k, k_out,
                                      error=self.error_buffer(device)))

    def namespace_for_current_device(self, dtype_name: str) -> tuple[Any, Any, int]:
        """``(xp, dtype, device id)`` for tables requested without an input array."""
        from .._xp import numpy_dtype

        return self.xp, numpy_dtype(dtype_name), int(self.cupy.cuda.runtime.getDevice())


def make_backend() -> CupyBackend:
    return CupyBackend()
