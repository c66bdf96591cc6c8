"""Compile the Numba kernels ahead of the first call (``ropeflow compile``, :func:`warmup`).

Numba compiles a kernel once per combination of argument types (dtype, memory layout, write access) on
its first call with them, and keeps the machine code in its on-disk cache (``__pycache__`` next to the
package, or ``NUMBA_CACHE_DIR``). A cold first call costs 5-25 s per combination on a 2-core machine; later
processes load the code in well under a second. :func:`warmup` makes those first calls on tiny arrays
ahead of time (a container build, a CI job, before a server takes traffic), spread over ``jobs``
processes that share the cache: with two processes the compiling takes about half the time.

Only the compiling is done ahead of time: nothing here changes a result, and every later call still
checks its arguments and may compile a combination not listed in :func:`warmup_cases`.
"""

from __future__ import annotations

import concurrent.futures
import multiprocessing
import time
from dataclasses import dataclass

import numpy as np

from ._xp import bfloat16_dtype

#: Input dtypes the kernels rotate.
WARMUP_DTYPES = ("float32", "float16", "bfloat16", "float64")
#: Storage dtypes of the cos/sin tables the kernels read.
TABLE_DTYPES = ("float32", "float64")
#: How the input lies in memory: a contiguous array, a slice of a fused qkv buffer (rows 3x apart), or a
#: read-only array (e.g. a JAX array's NumPy view). Each is a distinct compiled kernel.
VARIANTS = ("contiguous", "strided", "read-only")
#: ``decode``: small work, run by the serial kernel; ``prefill``: large work, run by the parallel kernel.
SIZES = ("decode", "prefill")

_HEAD_DIM = 64
_SHAPES = {"decode": (2, 4, 1, _HEAD_DIM), "prefill": (1, 8, 256, _HEAD_DIM)}  # (batch, heads, seq, head_dim)


@dataclass(frozen=True)
class WarmupCase:
    """One compiled kernel: inputs of ``dtype`` in memory ``variant`` with tables of ``table`` dtype, at
    ``size`` (which picks the serial or the parallel kernel)."""

    dtype: str
    table: str
    variant: str
    size: str

    def __str__(self) -> str:
        return f"{self.size} {self.dtype} x {self.table} table, {self.variant}"


@dataclass(frozen=True)
class WarmupResult:
    """What compiling one case took: ``seconds`` of wall time in its process (a fraction of a second when
    the cache already held the kernel)."""

    case: WarmupCase
    seconds: float


def _reference_table(dtype: str) -> str:
    """The table dtype a ``precision="reference"`` embedding reads for inputs of ``dtype``."""
    return "float64" if dtype == "float64" else "float32"


def _tables_read(dtype: str) -> tuple[str, ...]:
    """The table dtypes the kernels read for inputs of ``dtype`` (float64 inputs: float64 tables; a float32
    table given with them is widened first)."""
    return ("float64",) if dtype == "float64" else TABLE_DTYPES


def warmup_cases(dtypes: str | tuple[str, ...] | None = None) -> list[WarmupCase]:
    """The kernels :func:`warmup` compiles for inputs of ``dtypes`` (a name or names from
    :data:`WARMUP_DTYPES`; None: all of them, bfloat16 only where ml_dtypes is installed): the serial
    (decode) kernel for every table dtype read with them and every memory variant, and the parallel
    (prefill) kernel for contiguous inputs and the table dtype of reference precision; most expensive
    first. Other combinations (a strided prefill, say) still compile on their first call."""
    if dtypes is None:
        dtypes = tuple(d for d in WARMUP_DTYPES if d != "bfloat16" or _bfloat16() is not None)
    elif isinstance(dtypes, str):
        dtypes = (dtypes,)
    dtypes = tuple(dtypes)
    unknown = [d for d in dtypes if d not in WARMUP_DTYPES]
    if unknown or not dtypes:
        shown = repr(unknown[0]) if unknown else "none"
        raise ValueError(f"dtypes: unknown dtype {shown}; allowed: {', '.join(WARMUP_DTYPES)}")
    if "bfloat16" in dtypes and _bfloat16() is None:
        raise ValueError("dtypes: 'bfloat16' needs ml_dtypes, which is not installed (pip install ml_dtypes)")
    prefill = [WarmupCase(d, _reference_table(d), "contiguous", "prefill") for d in dtypes]
    decode = [WarmupCase(d, t, v, "decode") for v in VARIANTS for t in TABLE_DTYPES for d in dtypes
              if t in _tables_read(d)]
    return prefill + decode


def _bfloat16() -> np.dtype | None:
    """NumPy's bfloat16 dtype, or None without ml_dtypes."""
    try:
        return bfloat16_dtype()
    except TypeError:
        return None


def _input(case: WarmupCase) -> np.ndarray:
    """A zero array of the case's shape, dtype and memory variant."""
    dtype = _bfloat16() if case.dtype == "bfloat16" else np.dtype(case.dtype)
    shape = _SHAPES[case.size]
    if case.variant == "strided":
        fused = np.zeros(shape[:-1] + (3 * shape[-1],), dtype=dtype)
        return fused[..., shape[-1]: 2 * shape[-1]]
    x = np.zeros(shape, dtype=dtype)
    if case.variant == "read-only":
        x.flags.writeable = False
    return x


def compile_case(case: WarmupCase) -> WarmupResult:
    """Compile (or load from the on-disk cache) the kernels of ``case`` in this process, by rotating a
    zero array of its kind with tables built by the Numba backend."""
    from .apply import apply_rotary
    from .rotary import RotaryEmbedding

    start = time.perf_counter()
    x = _input(case)
    precision = "exact" if case.table == "float64" and case.dtype != "float64" else "reference"
    rope = RotaryEmbedding(_HEAD_DIM, 4096, 10000.0, precision=precision, backend="numba")
    cos, sin = rope.cos_sin(x.shape[2], dtype=case.table)
    out = apply_rotary(x, cos, sin, offset=0, backend="numba")
    if np.any(np.asarray(out, dtype=np.float32) != 0):  # rotating zeros gives zeros
        raise AssertionError(f"warm-up of {case}: rotating zeros gave a nonzero result")
    return WarmupResult(case, time.perf_counter() - start)


def _caches_on_disk() -> bool:
    """Whether the Numba kernels keep their machine code on disk (else other processes cannot share it)."""
    from .backends import _numba

    return type(_numba._apply_tiles.parallel._cache).__name__ != "NullCache"


def processes(jobs: int, n_cases: int) -> int:
    """How many processes :func:`warmup` uses for ``n_cases`` cases and ``jobs``."""
    return max(1, min(jobs, n_cases)) if _caches_on_disk() else 1


def warmup(dtypes: str | tuple[str, ...] | None = None, jobs: int = 1) -> list[WarmupResult]:
    """Compile the Numba kernels of :func:`warmup_cases` for ``dtypes`` into Numba's on-disk cache, in
    ``jobs`` processes (1: in this one). Returns one :class:`WarmupResult` per case, in the order of
    :func:`warmup_cases`. Raises ``BackendUnavailableError`` when Numba is not installed.

    Other processes share the result only through the on-disk cache (whose saves are locked against each
    other: see ``ropeflow.backends._numba_cache``): where Numba has no writable cache location, everything
    is compiled in this process instead (whatever ``jobs`` says). With ``jobs > 1`` the processes are
    started with ``spawn``: a script calling this needs the usual ``if __name__ == "__main__":`` guard."""
    from .backends import resolve

    if isinstance(jobs, bool) or not isinstance(jobs, int) or jobs < 1:
        raise ValueError(f"jobs: expected a positive int, got {jobs!r}")
    resolve("numba", None)  # BackendUnavailableError when numba is missing
    cases = warmup_cases(dtypes)
    n_processes = processes(jobs, len(cases))
    if n_processes == 1:
        return [compile_case(c) for c in cases]
    context = multiprocessing.get_context("spawn")  # fork would copy Numba's thread pools
    with concurrent.futures.ProcessPoolExecutor(max_workers=n_processes, mp_context=context) as pool:
        return list(pool.map(compile_case, cases))
