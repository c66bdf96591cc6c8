"""Shared fixtures: the ``backend`` fixture parametrized over every backend, and a strict assert_close."""

from __future__ import annotations

import os
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

import ropeflow

settings.register_profile(
    "ci", max_examples=int(os.environ.get("HYPOTHESIS_MAX_EXAMPLES", 40)), deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
settings.load_profile("ci")

_AVAILABLE = ropeflow.available_backends()


@pytest.hookimpl(tryfirst=True)
def pytest_sessionstart(session: pytest.Session) -> None:
    """Under pytest-xdist (``-n 2`` or more), compile the Numba kernels into the on-disk cache before the
    workers start, one process per worker (``ropeflow.warmup``): each worker would otherwise compile
    nearly every kernel itself, the same ones at the same time. ``ROPEFLOW_TEST_WARMUP=0`` skips it."""
    config = session.config
    workers = getattr(config.option, "numprocesses", None)
    if hasattr(config, "workerinput") or not isinstance(workers, int) or workers < 2 \
            or os.environ.get("ROPEFLOW_TEST_WARMUP") == "0" or "numba" not in _AVAILABLE:
        return
    import time

    from ropeflow.warmup import processes, warmup, warmup_cases

    if processes(workers, len(warmup_cases())) == 1:
        return  # no on-disk cache: the workers could not share what this process compiled
    start = time.perf_counter()
    try:
        results = warmup(jobs=workers)
        line = (f"ropeflow.warmup: {len(results)} Numba kernels ready in {time.perf_counter() - start:.1f} s "
                f"({workers} processes)")
    except Exception as exc:  # only a speed-up: the workers then compile on first use, as without it
        line = f"ropeflow.warmup failed ({type(exc).__name__}: {exc}); the workers compile on first use"
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None:
        reporter.write_line(line)
BACKENDS = [
    pytest.param("numpy", id="numpy"),
    pytest.param("numba", id="numba", marks=pytest.mark.skipif("numba" not in _AVAILABLE, reason="numba missing")),
    pytest.param("cupy", id="cupy", marks=[pytest.mark.gpu,
                                            pytest.mark.skipif("cupy" not in _AVAILABLE, reason="no usable GPU")]),
]
HOST_BACKENDS = [p for p in BACKENDS if p.id != "cupy"]

#: One float32 ulp of values in [0.5, 1): the unit of the agreement bounds.
ULP32 = 2.0**-24


@pytest.fixture(params=BACKENDS, scope="session")
def backend(request: pytest.FixtureRequest) -> str:
    return request.param


def to_numpy(a: Any) -> np.ndarray:
    if type(a).__module__.startswith("cupy"):
        return a.get()
    return np.asarray(a)


def input_array(backend: str, shape: tuple[int, ...], dtype: Any) -> Any:
    """A zero array of ``shape``/``dtype`` in the backend's array library."""
    if backend == "cupy":
        import cupy

        return cupy.zeros(shape, dtype=dtype)
    return np.zeros(shape, dtype=dtype)


def assert_close(actual: Any, desired: Any, *, atol: float, rtol: float = 0.0, library: str | None = None) -> None:
    """Values within ``atol + rtol * |desired|``, and the same array library, dtype and shape: a test cannot
    pass because both sides quietly became NumPy, or float64."""
    if library is not None:
        assert type(actual).__module__.split(".")[0] == library, f"expected a {library} array, got {type(actual)}"
    assert actual.dtype == desired.dtype, f"dtype {actual.dtype} != {desired.dtype}"
    assert actual.shape == desired.shape, f"shape {actual.shape} != {desired.shape}"
    a = to_numpy(actual).astype(np.float64)
    d = to_numpy(desired).astype(np.float64)
    assert np.all(np.isfinite(a)), "non-finite values"
    err = np.abs(a - d)
    bound = atol + rtol * np.abs(d)
    worst = np.unravel_index(np.argmax(err - bound), err.shape) if err.size else None
    assert np.all(err <= bound), f"max error {err.max():.3e} > bound at {worst}: {a[worst]!r} vs {d[worst]!r}"


def dtype_eps(name: str) -> float:
    """Machine epsilon (spacing at 1.0) of a table dtype."""
    if name == "bfloat16":
        return 2.0**-7
    return float(np.finfo(name).eps)
