"""Backends: the objects that fill cos/sin table rows (and apply rotations) on one kind of array.

Design rules (after einops' ``_backends.py``):

* A backend is one small class with one job per method. Everything else (validation, policy, cache,
  shapes) lives once in the front end (:mod:`ropeflow.rotary`, :mod:`ropeflow.apply`).
* Backends are discovered lazily: asking for one by name imports its module, and the module imports its
  framework (numba, cupy) only then. ``import ropeflow`` imports neither.
* Frequencies arrive already computed on the host (:mod:`ropeflow.scaling`), so all backends agree exactly
  on ``inv_freq`` and on the float32 angles, and differ only in their sin/cos routines.
* A backend that cannot run raises :class:`~ropeflow.BackendUnavailableError` saying what to install.
"""

from __future__ import annotations

import functools
import importlib
from typing import Any, Protocol

from .._errors import BackendUnavailableError
from .._xp import is_cupy, is_numpy

BACKEND_NAMES = ("numpy", "numba", "cupy")
_MODULES = {"numpy": "._numpy", "numba": "._numba", "cupy": "._cupy"}
_instances: dict[str, Any] = {}


class Backend(Protocol):
    """What the front end needs from a backend.

    Tables are float32 (reference precision) or float64 (exact precision), C-contiguous, shape
    ``(rows, dim)``; ``build_rows`` fills rows for positions ``start .. start + rows - 1``.
    """

    name: str
    is_host: bool

    def empty(self, shape: tuple[int, ...], dtype: Any, device: Any) -> Any:
        """An uninitialised array on ``device``."""

    def prepare(self, freqs: Any, device: Any) -> Any:
        """The frequencies in the form ``build_rows`` wants (e.g. copied to the device), memoizable."""

    def build_rows(self, prepared: Any, start: int, cos_out: Any, sin_out: Any) -> None:
        """Write rows ``[start, start + len(cos_out))`` of the cos and sin tables into the outputs."""


def get_backend(name: str) -> Any:
    """The backend called ``name`` (``"numpy"``, ``"numba"``, ``"cupy"``), imported on first use."""
    if not isinstance(name, str) or name not in _MODULES:
        raise ValueError(f"backend: unknown backend {name!r}; allowed: 'auto', {', '.join(map(repr, BACKEND_NAMES))}")
    backend = _instances.get(name)
    if backend is None:
        module = importlib.import_module(_MODULES[name], __name__)
        backend = module.make_backend()
        _instances[name] = backend
    return backend


@functools.cache
def host_default() -> str:
    """The host backend ``"auto"`` picks: numba when it imports, else numpy."""
    try:
        get_backend("numba")
    except BackendUnavailableError:
        return "numpy"
    return "numba"


def resolve(requested: str, x: Any = None) -> Any:
    """The backend that serves ``x`` (or host tables when ``x`` is None) for a ``backend=`` request."""
    if requested == "auto":
        if x is not None and is_cupy(x):
            return get_backend("cupy")
        return get_backend(host_default())
    backend = get_backend(requested)
    if x is not None:
        if backend.is_host and not is_numpy(x):
            raise TypeError(
                f"x: a CuPy array was given to the host backend {requested!r}; move it with cupy.asnumpy(x) or "
                "use backend='cupy' (or 'auto')"
            )
        if not backend.is_host and not is_cupy(x):
            raise TypeError(
                f"x: a {type(x).__module__}.{type(x).__name__} was given to backend {requested!r}, which works on "
                "CuPy arrays on the GPU; move it with cupy.asarray(x) or use a host backend ('numba', 'numpy')"
            )
    return backend


def available_backends() -> list[str]:
    """The backends that can actually run here (for cupy: a kernel compiled and ran on a GPU)."""
    names = []
    for name in BACKEND_NAMES:
        try:
            backend = get_backend(name)
            check = getattr(backend, "self_test", None)
            if check is not None:
                check()
        except BackendUnavailableError:
            continue
        names.append(name)
    return names


__all__ = ["Backend", "BACKEND_NAMES", "available_backends", "get_backend", "resolve", "host_default"]
