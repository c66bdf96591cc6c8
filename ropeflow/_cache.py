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

import threading
import weakref
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from .scaling import Frequencies


@dataclass(frozen=True)
class _Snapshot:
    rows: int
    cos: Any
    sin: Any


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
        self._casts: dict[str, _Snapshot] = {}
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
            cos = self.backend.empty((new, dim), self.dtype, self.device)
            sin = self.backend.empty((new, dim), self.dtype, self.device)
            if old:
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

    def get(self, n: int, dtype_name: str, xp_dtype: Any, xp: Any) -> tuple[Any, Any]:
        """``(cos[:n], sin[:n])`` in ``xp_dtype`` (a memoized cast of the storage table)."""
        snap = self.rows(n)
        if dtype_name == self._dtype_name:
            return snap.cos[:n], snap.sin[:n]
        cast = self._casts.get(dtype_name)
        if cast is None or cast.rows != snap.rows:
            with self._lock:
                snap = self._snapshot
                cast = self._casts.get(dtype_name)
                if cast is None or cast.rows != snap.rows:
                    cast_table = getattr(self.backend, "cast_table", None)
                    if cast_table is None:
                        cos, sin = xp.astype(snap.cos, xp_dtype), xp.astype(snap.sin, xp_dtype)
                    else:  # on the table's device, float16/bfloat16 by the backend's own kernel
                        cos, sin = cast_table(snap.cos, xp_dtype, self.device), cast_table(snap.sin, xp_dtype,
                                                                                          self.device)
                    _make_read_only(cos, sin)
                    cast = _Snapshot(snap.rows, cos, sin)
                    self._casts[dtype_name] = cast
                    self.stats.casts += 1
        return cast.cos[:n], cast.sin[:n]


def _make_read_only(*arrays: Any) -> None:
    """Shared tables are handed out as views: protect NumPy ones from writes (CuPy has no such flag)."""
    for a in arrays:
        if isinstance(a, np.ndarray):
            a.flags.writeable = False


_registry: weakref.WeakValueDictionary = weakref.WeakValueDictionary()
_registry_lock = threading.Lock()


def shared_table(backend: Any, device: Any, freqs: Frequencies, dtype: np.dtype, limit: int,
                 grow: bool = True) -> Table:
    """The one table for this key, created on first use and shared by every caller while alive."""
    key = (backend.name, device, freqs.key(), np.dtype(dtype).str, limit, grow)
    with _registry_lock:
        table = _registry.get(key)
        if table is None:
            table = Table(backend, device, freqs, np.dtype(dtype), limit, grow)
            _registry[key] = table
        return table
