"""Run ``rope.cu``'s kernels on the CPU: compile the unmodified source as host C++ behind ``cuda_shim.h``, load
it with ctypes and launch the :class:`ropeflow.backends._cupy.Launch` tuples that ``_cupy.py`` builds.

* One ``extern "C"`` launcher per kernel instance (the very ``name_expressions`` NVRTC gets) runs every
  (block, thread) of the grid serially, after setting the shim's built-ins.
* Each launcher's parameter list comes from the compiler (the C++ types of the kernel's parameters): count,
  kind (pointer, floating, integer), size, and the pointee's size and kind. Every argument is checked
  against it, after being marshalled as CuPy marshals it (``cupy/_core/raw.pyx`` ``_pointer``): arrays and
  None are pointers, NumPy scalars are passed as their bytes, Python ints/floats become int64/float64.
* :class:`Arena` places arrays inside one byte buffer with guard zones around (and holes between)
  them; :meth:`Arena.assert_only_written` fails if any byte outside the declared outputs changed.
"""

from __future__ import annotations

import ctypes
import hashlib
import shutil
import subprocess
from pathlib import Path
from typing import Any

import numpy as np

from ropeflow.backends import _cupy

SHIM = Path(__file__).with_name("cuda_shim.h")
CXX = shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")
#: -ffp-contract=off: no FMA contraction, each __*_rn intrinsic rounds once, as on the GPU.
CXXFLAGS = ("-std=c++17", "-O1", "-shared", "-fPIC", "-ffp-contract=off", "-fno-fast-math", "-Wall",
            "-Wno-unknown-pragmas", "-Werror")

_KIND_NAMES = {0: "pointer", 1: "floating scalar", 2: "integer scalar", 3: "other"}
_POINTEE_NAMES = {0: "void", 1: "floating", 2: "integer", 3: "16-bit float struct"}

_PRELUDE = r"""
#include "cuda_shim.h"
#include "{source}"
#include <cstddef>
#include <type_traits>
#include <utility>

template <typename P> constexpr int rf_kind() {{
    return std::is_pointer<P>::value ? 0 : std::is_floating_point<P>::value ? 1
         : std::is_integral<P>::value ? 2 : 3;
}}
template <typename P> struct rf_pointee {{ static constexpr int size = 0, kind = 0; }};
template <typename E> struct rf_pointee<E*> {{
    using V = typename std::remove_cv<E>::type;
    using S = typename std::conditional<std::is_void<V>::value, char, V>::type;
    static constexpr int size = std::is_void<V>::value ? 0 : (int)sizeof(S);
    static constexpr int kind = std::is_void<V>::value ? 0 : std::is_floating_point<V>::value ? 1
                              : std::is_integral<V>::value ? 2 : 3;
}};
template <typename... P> int rf_describe(void (*)(P...), int* out, int cap) {{
    const int rows[][4] = {{ {{rf_kind<P>(), (int)sizeof(P), rf_pointee<P>::size, rf_pointee<P>::kind}}... }};
    const int n = (int)sizeof...(P);
    for (int i = 0; i < n && i < cap; ++i) for (int c = 0; c < 4; ++c) out[4 * i + c] = rows[i][c];
    return n;
}}
template <typename... P, std::size_t... I>
void rf_call(void (*k)(P...), void** args, std::index_sequence<I...>) {{ k(*static_cast<P*>(args[I])...); }}
template <typename... P> void rf_run(void (*k)(P...), const unsigned* g, const unsigned* b, void** args) {{
    gridDim = {{g[0], g[1], g[2]}};
    blockDim = {{b[0], b[1], b[2]}};
    for (unsigned bz = 0; bz < g[2]; ++bz) for (unsigned by = 0; by < g[1]; ++by)
    for (unsigned bx = 0; bx < g[0]; ++bx) for (unsigned tz = 0; tz < b[2]; ++tz)
    for (unsigned ty = 0; ty < b[1]; ++ty) for (unsigned tx = 0; tx < b[0]; ++tx) {{
        blockIdx = {{bx, by, bz}};
        threadIdx = {{tx, ty, tz}};
        rf_call(k, args, std::index_sequence_for<P...>{{}});
    }}
}}
"""

_WRAPPER = """
extern "C" int rf_describe_{i}(int* out, int cap) {{ return rf_describe(&{name}, out, cap); }}
extern "C" void rf_launch_{i}(const unsigned* g, const unsigned* b, void** args) {{ rf_run(&{name}, g, b, args); }}
"""


class HostKernels:
    """The kernels of ``rope.cu`` compiled for the host; :meth:`run` executes a :class:`_cupy.Launch`."""

    def __init__(self, build_dir: Path) -> None:
        if CXX is None:
            raise RuntimeError("no C++ compiler (g++, c++ or clang++) on the PATH")
        source = Path(_cupy.__file__).with_name("kernels") / "rope.cu"
        self.names = _cupy.kernel_names()
        code = _PRELUDE.format(source=source.as_posix()) + "".join(
            _WRAPPER.format(i=i, name=name) for i, name in enumerate(self.names))
        digest = hashlib.sha256((code + source.read_text() + SHIM.read_text() + " ".join(CXXFLAGS)).encode())
        lib = build_dir / f"rope_host_{digest.hexdigest()[:16]}.so"
        if not lib.exists():
            cpp = build_dir / "rope_host.cpp"
            cpp.write_text(code)
            proc = subprocess.run([CXX, *CXXFLAGS, f"-I{SHIM.parent}", str(cpp), "-o", str(lib)],
                                  capture_output=True, text=True, timeout=600)
            if proc.returncode:
                raise RuntimeError(f"host compile of rope.cu failed:\n{proc.stderr}")
        self.lib = ctypes.CDLL(str(lib))
        self.params: dict[str, list[tuple[int, int, int, int]]] = {}
        for i, name in enumerate(self.names):
            buf = (ctypes.c_int * (4 * 128))()
            n = getattr(self.lib, f"rf_describe_{i}")(buf, 128)
            self.params[name] = [tuple(buf[4 * j:4 * j + 4]) for j in range(n)]
        self.launches: dict[str, int] = dict.fromkeys(self.names, 0)

    def run(self, launch: _cupy.Launch, grid: tuple[int, ...] | None = None,
            block: tuple[int, ...] | None = None) -> None:
        """Run ``launch`` serially, with its own grid/block or the given ones (the kernels must be right for any)."""
        grid = _dim3(launch.grid if grid is None else grid)
        block = _dim3(launch.block if block is None else block)
        storage = marshal(launch.args, self.params[launch.name], launch.name)
        argv = (ctypes.c_void_p * len(storage))(*[ctypes.addressof(s) for s in storage])
        fn = getattr(self.lib, f"rf_launch_{self.names.index(launch.name)}")
        fn((ctypes.c_uint * 3)(*grid), (ctypes.c_uint * 3)(*block), argv)
        self.launches[launch.name] += 1


def _dim3(d: tuple[int, ...]) -> tuple[int, int, int]:
    d = tuple(int(v) for v in d) + (1,) * (3 - len(d))
    assert len(d) == 3 and all(v >= 1 for v in d), d
    return d


def _pointee_kind(dtype: np.dtype) -> int:
    if dtype.name in ("float16", "bfloat16"):
        return 3
    return 1 if dtype.kind == "f" else 2


def marshal(args: tuple, params: list[tuple[int, int, int, int]], name: str) -> list[Any]:
    """ctypes storage for each argument, marshalled as CuPy does, after checking it against the parameter."""
    assert len(args) == len(params), f"{name}: {len(args)} arguments for {len(params)} parameters"
    storage: list[Any] = []
    for i, (arg, (kind, size, pointee_size, pointee_kind)) in enumerate(zip(args, params, strict=True)):
        where = f"{name} argument {i} ({type(arg).__name__})"
        if arg is None or isinstance(arg, np.ndarray):
            assert kind == 0, f"{where}: an array/None for a {_KIND_NAMES[kind]} parameter"
            assert size == 8
            if arg is not None:
                assert pointee_size in (0, arg.itemsize), \
                    f"{where}: a {arg.dtype} array for a pointer to {pointee_size}-byte elements"
                assert pointee_kind in (0, _pointee_kind(arg.dtype)), \
                    f"{where}: a {arg.dtype} array for a pointer to {_POINTEE_NAMES[pointee_kind]} elements"
            storage.append(ctypes.c_void_p(None if arg is None else arg.__array_interface__["data"][0]))
            continue
        # CuPy: Python int (bool included) -> int64, float -> float64; NumPy scalars keep their dtype
        if not isinstance(arg, np.generic):
            if isinstance(arg, int):
                arg = np.int64(arg)
            elif isinstance(arg, float):
                arg = np.float64(arg)
            else:
                raise AssertionError(f"{where}: CuPy cannot pass this type")
        assert kind in (1, 2), f"{where}: a scalar for a {_KIND_NAMES[kind]} parameter"
        want = "f" if kind == 1 else "iub"
        assert arg.dtype.kind in want, f"{where}: a {arg.dtype} scalar for a {_KIND_NAMES[kind]} parameter"
        assert arg.dtype.itemsize == size, f"{where}: {arg.dtype.itemsize} bytes for a {size}-byte parameter"
        storage.append(ctypes.create_string_buffer(arg.tobytes(), size))
    return storage


class Arena:
    """One byte buffer holding test arrays at explicit strides, with guard zones around each, all filled with
    a random pattern; :meth:`assert_only_written` checks that no byte outside the declared outputs changed."""

    def __init__(self, nbytes: int = 1 << 20, seed: int = 0, guard: int = 256) -> None:
        self.guard = guard
        self.buf = np.random.default_rng(seed).integers(0, 256, nbytes, dtype=np.uint8)
        self.used = guard

    def array(self, shape: tuple[int, ...], dtype: Any, order: tuple[int, ...] | None = None,
              spread: tuple[int, ...] | None = None) -> np.ndarray:
        """A fresh array of ``shape`` inside the arena. ``order``: axis nesting from outermost to innermost
        (a permutation; default C order); ``spread``: per-axis step in elements of the dense layout (holes)."""
        dtype = np.dtype(dtype)
        nd = len(shape)
        order = tuple(range(nd)) if order is None else order
        spread = (1,) * nd if spread is None else spread
        strides = [0] * nd
        step = dtype.itemsize
        for ax in reversed(order):
            strides[ax] = step * spread[ax]
            step = strides[ax] * max(shape[ax], 1)
        start = -(-self.used // 16) * 16
        end = start + step
        assert end + self.guard <= self.buf.size, "arena too small"
        self.used = end + self.guard
        return np.ndarray(shape, dtype, buffer=self.buf, offset=start, strides=tuple(strides))

    def snapshot(self) -> np.ndarray:
        return self.buf.copy()

    def assert_only_written(self, before: np.ndarray, *outputs: np.ndarray) -> None:
        mask = np.zeros(self.buf.size, bool)
        base = self.buf.__array_interface__["data"][0]
        for out in outputs:
            offs = np.zeros(out.shape, np.int64)
            for ax, st in enumerate(out.strides):
                shape = [1] * out.ndim
                shape[ax] = out.shape[ax]
                offs = offs + (np.arange(out.shape[ax], dtype=np.int64) * st).reshape(shape)
            first = out.__array_interface__["data"][0] - base
            idx = (first + offs.ravel())[:, None] + np.arange(out.itemsize)[None, :]
            mask[idx.ravel()] = True
        changed = np.flatnonzero((self.buf != before) & ~mask)
        assert changed.size == 0, f"{changed.size} bytes outside the outputs were written (first at {changed[:8]})"
