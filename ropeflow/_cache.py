"""The shared table cache (DESIGN 1.6).

A :class:`Table` holds the cos/sin rows of one set of frequencies on one backend and device, in one
storage dtype. Tables are shared through a process-wide registry keyed by everything that determines
their bits, so identical configurations (61 DeepSeek-V3 layers) hold one table, not 61. The registry holds
tables weakly: a table lives as long as some :class:`~ropeflow.RotaryEmbedding` holds it.

Growth is geometric and computes only the new rows: asking for ``n > capacity`` rows allocates
``min(max(n, 2 * capacity), 2 * n, limit)`` rows, copies the old rows and builds the rest. A cache never
holds more than twice the largest length asked. A hit takes no lock: it reads one immutable snapshot.
Casts to other dtypes are made from the storage table (never from an already rounded one) and memoized
per dtype until the table grows.
"""

from __future__ import annotations

import sys
import threading
import warnings
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ._xp import device_scope
from .scaling import Frequencies


@dataclass(frozen=True)
class _Snapshot:
    rows: int
    cos: Any
    sin: Any
    #: n -> (cos[:n], sin[:n]), since slicing costs a few hundred nanoseconds (a torch tensor: a microsecond)
    views: dict = field(default_factory=dict)

    def head(self, n: int) -> tuple[Any, Any]:
        """``(cos[:n], sin[:n])``, memoized per ``n`` (read-only tables: handing out the same pair is safe)."""
        pair = self.views.get(n)
        if pair is None:
            pair = self.cos[:n], self.sin[:n]
            if len(self.views) < _MAX_VIEWS:
                self.views[n] = pair
        return pair


@dataclass
class CacheStats:
    """Counters of one table: how many builds ran and how many rows they computed."""

    builds: int = 0
    rows_computed: int = 0
    casts: int = 0


@dataclass(eq=False)
class Table:
    """cos/sin rows ``[0, capacity)`` of one ``Frequencies`` on one backend/device, storage dtype ``dtype``.

    ``limit``: the largest capacity allowed (2**24 rows in reference precision: float32 positions).
    ``grow``: False for tables that are built once at an exact length (dynamic NTK's long tables).
    """

    backend: Any
    device: Any
    freqs: Frequencies
    dtype: np.dtype
    limit: int
    grow: bool = True
    stats: CacheStats = field(default_factory=CacheStats)

    def __post_init__(self) -> None:
        self._lock = threading.Lock()
        self._snapshot = _Snapshot(0, None, None)
        self._casts: dict[Any, _Snapshot] = {}  # dtype name, or (dtype name, (library, device))
        self._prepared = self.backend.prepare(self.freqs, self.device)
        self._dtype_name = self.dtype.name

    @property
    def capacity(self) -> int:
        return self._snapshot.rows

    def rows(self, n: int) -> _Snapshot:
        """A snapshot holding at least ``n`` rows, building the missing ones."""
        snap = self._snapshot
        if snap.rows >= n and snap.cos is not None:
            return snap
        with self._lock:
            snap = self._snapshot
            if snap.rows >= n and snap.cos is not None:
                return snap
            old = snap.rows
            # geometric growth, capped at twice the request and at the limit (never below the request)
            new = max(n, min(2 * old, 2 * n, self.limit)) if self.grow else n
            dim = 2 * self.freqs.inv_freq.shape[0]
            try:
                if new * dim * self.dtype.itemsize > sys.maxsize:  # past the address space (NumPy: "array is too big")
                    raise MemoryError
                cos = self.backend.empty((new, dim), self.dtype, self.device)
                sin = self.backend.empty((new, dim), self.dtype, self.device)
            except MemoryError:
                raise MemoryError(
                    f"{n} positions (0 .. {n - 1}) need two ({new}, {dim}) {self.dtype.name} tables "
                    f"({2 * new * dim * self.dtype.itemsize / 2**30:.3g} GiB), more than this machine can allocate"
                ) from None
            if old:
                with device_scope(cos):  # CuPy copies on the current device: make it the table's
                    cos[:old] = snap.cos[:old]
                    sin[:old] = snap.sin[:old]
            self.backend.build_rows(self._prepared, old, cos[old:], sin[old:])
            self.stats.builds += 1
            self.stats.rows_computed += new - old
            _make_read_only(cos, sin)
            snap = _Snapshot(new, cos, sin)
            self._snapshot = snap
            self._casts = {}
            return snap

    def get(self, n: int, dtype_name: str, xp_dtype: Any, xp: Any, origin: Any = None) -> tuple[Any, Any]:
        """``(cos[:n], sin[:n])`` in ``xp_dtype`` (a memoized cast of the storage table); with an ``origin``
        (a torch or JAX caller) views of one memoized tensor per (library, device, dtype)."""
        snap = self.rows(n)
        if origin is None and dtype_name == self._dtype_name:
            return snap.head(n)
        memo_key = dtype_name if origin is None else (dtype_name, origin.key())
        cast = self._casts.get(memo_key)
        if cast is None or cast.rows != snap.rows:
            with self._lock:
                snap = self._snapshot
                cast = self._casts.get(memo_key)
                if cast is None or cast.rows != snap.rows:
                    cast = self._make_cast(snap, dtype_name, xp_dtype, xp, origin)
                    self._casts[memo_key] = cast
        return cast.head(n)

    def _make_cast(self, snap: _Snapshot, dtype_name: str, xp_dtype: Any, xp: Any, origin: Any) -> _Snapshot:
        if dtype_name == self._dtype_name:
            cos, sin = snap.cos, snap.sin
        else:
            plain = self._casts.get(dtype_name)
            if plain is None or plain.rows != snap.rows:
                cast_table = getattr(self.backend, "cast_table", None)
                if cast_table is None:
                    cos, sin = xp.astype(snap.cos, xp_dtype), xp.astype(snap.sin, xp_dtype)
                else:  # on the table's device, float16/bfloat16 by the backend's own kernel
                    cos = cast_table(snap.cos, xp_dtype, self.device)
                    sin = cast_table(snap.sin, xp_dtype, self.device)
                _make_read_only(cos, sin)
                self._casts[dtype_name] = _Snapshot(snap.rows, cos, sin)
                self.stats.casts += 1
            else:
                cos, sin = plain.cos, plain.sin
        if origin is not None:
            from ._interop import from_native

            with warnings.catch_warnings():  # torch warns that NumPy's read-only flag does not carry over
                warnings.simplefilter("ignore", UserWarning)
                cos, sin = from_native(cos, origin), from_native(sin, origin)
        return _Snapshot(snap.rows, cos, sin)


_MAX_VIEWS = 256


def _make_read_only(*arrays: Any) -> None:
    """Shared tables are handed out as views: protect NumPy ones from writes (CuPy has no such flag)."""
    for a in arrays:
        if isinstance(a, np.ndarray):
            a.flags.writeable = False


_registry: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def shared_table(backend: Any, device: Any, freqs: Frequencies, dtype: np.dtype, limit: int,
                 grow: bool = True) -> Table:
    """The one table for this key if some caller holds it, else a new one, not yet shared: a caller
    :func:`publish` shares it once it served a call, so a failed call leaves the registry as it was."""
    with _registry_lock:
        table = _registry.get(_key(backend, device, freqs, dtype, limit, grow))
    return table if table is not None else Table(backend, device, freqs, np.dtype(dtype), limit, grow)


def publish(table: Table) -> None:
    """Share ``table`` with every later caller of :func:`shared_table` with its key (first one wins)."""
    key = _key(table.backend, table.device, table.freqs, table.dtype, table.limit, table.grow)
    with _registry_lock:
        _registry.setdefault(key, table)


def live_table_arrays() -> list[Any]:
    """The native (NumPy or CuPy) cos and sin arrays every shared table serves now: its rows and its dtype
    casts (the memos for torch and JAX callers are views of these)."""
    with _registry_lock:
        tables = list(_registry.values())
    arrays: list[Any] = []
    for table in tables:
        snap = table._snapshot
        if snap.cos is not None:
            arrays += [snap.cos, snap.sin]
        arrays += [a for key, cast in list(table._casts.items()) if isinstance(key, str) for a in (cast.cos, cast.sin)]
    return arrays


def _key(backend: Any, device: Any, freqs: Frequencies, dtype: Any, limit: int, grow: bool) -> tuple:
    return (backend.name, device, freqs.key(), np.dtype(dtype).str, limit, grow)
