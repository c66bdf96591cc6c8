"""Numba's on-disk cache, made safe for several processes compiling into it at once.

Numba saves a compiled version by reading the function's index file, picking the first free data-file
number, writing the index back and then the data file, with no lock. Two processes saving *different*
versions of one function at the same moment (``ropeflow compile --jobs 2``, pytest-xdist workers) can both
pick the same number: one index entry is lost, and the surviving entry may name the data file the other
process wrote last, machine code compiled for other argument types. :func:`lock_cache_file` makes a
dispatcher's saves and loads take an exclusive ``flock`` on one lock file per cache folder, so that each
save is one step for every other process. Where ``fcntl`` does not exist (Windows) nothing changes.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from typing import Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows
    fcntl = None

from numba.core.caching import IndexDataCacheFile

#: The lock file, one per cache folder (next to the index and data files it guards).
LOCK_NAME = "ropeflow-numba-cache.lock"


@contextlib.contextmanager
def _folder_locked(folder: str) -> Iterator[None]:
    os.makedirs(folder, exist_ok=True)
    with open(os.path.join(folder, LOCK_NAME), "a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


class LockedIndexDataCacheFile(IndexDataCacheFile):
    """Numba's index-and-data cache file, each save and load under the folder's exclusive lock."""

    def save(self, key: Any, data: Any) -> None:
        with _folder_locked(self._cache_path):
            super().save(key, data)

    def load(self, key: Any) -> Any:
        with _folder_locked(self._cache_path):
            return super().load(key)


def lock_cache_file(dispatcher: Any) -> Any:
    """Make ``dispatcher``'s on-disk cache (if it has one of Numba's usual kind) lock its saves and loads;
    returns ``dispatcher``."""
    cache_file = getattr(getattr(dispatcher, "_cache", None), "_cache_file", None)
    if fcntl is not None and type(cache_file) is IndexDataCacheFile:
        cache_file.__class__ = LockedIndexDataCacheFile
    return dispatcher
