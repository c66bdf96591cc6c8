"""Launching Numba's parallel kernels safely from threads and from forked processes.

Numba runs ``parallel=True`` kernels on one process-wide *threading layer*, chosen at the first parallel
launch (``NUMBA_THREADING_LAYER`` / ``numba.config.THREADING_LAYER``, default: the first of tbb, omp,
workqueue that loads) and reported by ``numba.threading_layer()`` only after that launch. The layers differ
in two ways that crash a process (numba's "The Threading Layers" documentation, and its sources):

* ``workqueue`` is not thread-safe: two parallel launches at once abort the process (SIGABRT).
  ``tbb`` and ``omp`` are thread-safe.
* GNU OpenMP (``omp`` on Linux) is not fork-safe: numba terminates a forked child at its first parallel
  launch ("fork() called from a process already using GNU OpenMP"). ``workqueue`` is reset in the child;
  ``tbb`` is suspended and resumed across the fork when the fork happens on the thread that started it,
  and may be left broken otherwise.

What this module does about it (:class:`ParallelKernel` wraps each parallel kernel):

* Threads. While the layer is unknown (before the first launch) or is ``workqueue``, launches hold one
  lock, so this library never launches two at once. Once the layer is known to be thread-safe the lock
  is dropped: the hot path is then one attribute test and the call.
* Forks. A child forked after the parent started a threading layer that is not fork-safe from the forking
  thread (see :func:`_fork_safe`) runs serial compiled copies of the kernels (``parallel=False``,
  ``nogil=True``): the same code and the same floating-point operations, so results are identical bit for
  bit. The parent compiles the serial copies for the signatures it uses just before the fork, so the
  children inherit machine code instead of compiling it each. A child forked before any parallel launch
  is a fresh process and stays parallel.

Launches made by other libraries in the same process are not covered: under ``workqueue`` they can still
collide with ours (numba's own limitation). ``docs/concurrency.md`` has the user-facing summary.
"""

from __future__ import annotations

import functools
import os
import threading
import types
from collections.abc import Callable
from typing import Any

import numba

#: Layers that numba documents as safe to launch into from several threads at once.
THREAD_SAFE_LAYERS = frozenset({"tbb", "omp"})


def started_layer() -> str | None:
    """The name of the threading layer this process has started (``numba.threading_layer()``), or None."""
    try:
        return numba.threading_layer()
    except ValueError:  # "Threading layer is not initialized."
        return None


class _LaunchState:
    """Process-wide launch policy, shared by every kernel; reset in forked children."""

    __slots__ = ("lock", "settled", "serial", "pool_thread", "serial_after_fork")

    def __init__(self) -> None:
        #: Held around parallel launches; None once the layer is known to be thread-safe.
        self.lock: threading.Lock | None = threading.Lock()
        #: True once the threading layer was seen started (the lock decision is final).
        self.settled = False
        #: True in a forked child that must not launch parallel kernels.
        self.serial = False
        #: ``threading.get_ident()`` of the thread whose launch started the layer (None: unknown).
        self.pool_thread: int | None = None
        #: Decided in the parent just before a fork, applied in the child.
        self.serial_after_fork = False

    def settle(self, layer_before: str | None) -> None:
        """Record the layer after a locked launch: drop the lock if the layer is thread-safe."""
        layer = started_layer()
        if layer is None:  # pragma: no cover - a parallel launch always starts the layer
            return
        if layer_before is None:
            self.pool_thread = threading.get_ident()
        self.settled = True
        if layer in THREAD_SAFE_LAYERS:
            self.lock = None


_state = _LaunchState()
_kernels: list[ParallelKernel] = []


class ParallelKernel:
    """A ``parallel=True`` Numba kernel with a serial twin, launched as the layer in use allows.

    ``parallel`` is the parallel dispatcher; ``serial`` (compiled on first use) is the same Python function
    compiled without ``parallel`` and with ``nogil``. Calling the object runs the kernel (see the module
    docstring for which variant runs and when a lock is held) and returns its result.
    """

    def __init__(self, fn: Callable[..., Any], jit: Callable[..., Callable[[Callable], Any]]) -> None:
        functools.update_wrapper(self, fn)
        self.py_func = fn
        self._jit = jit
        self.parallel = jit(parallel=True)(fn)
        self._serial: Any = None
        self._serial_lock = threading.Lock()
        _kernels.append(self)

    @property
    def serial(self) -> Any:
        """The serial dispatcher. It compiles a renamed copy of the function: Numba's on-disk cache is keyed
        by qualified name and line, not by ``parallel``, so the same function object would load the
        parallel machine code from the cache."""
        if self._serial is None:
            with self._serial_lock:
                if self._serial is None:
                    fn = self.py_func
                    twin = types.FunctionType(fn.__code__, fn.__globals__, fn.__name__ + "_serial",
                                              fn.__defaults__, fn.__closure__)
                    twin.__qualname__ = fn.__qualname__ + "_serial"
                    twin.__doc__ = fn.__doc__
                    self._serial = self._jit(nogil=True)(twin)
        return self._serial

    def compile_serial_twins(self) -> None:
        """Compile the serial twin for every signature the parallel kernel has compiled."""
        serial = self.serial
        for sig in self.parallel.signatures:
            if sig not in serial.signatures:
                serial.compile(sig)

    def __call__(self, *args: Any) -> Any:
        state = _state
        if state.serial:
            return self.serial(*args)
        lock = state.lock
        if lock is None:
            return self.parallel(*args)
        with lock:
            if state.settled:
                return self.parallel(*args)
            before = started_layer()
            result = self.parallel(*args)
            state.settle(before)
            return result


def parallel_kernel(jit: Callable[..., Callable[[Callable], Any]]) -> Callable[[Callable], ParallelKernel]:
    """A decorator factory: ``parallel_kernel(jit)(fn)`` is ``ParallelKernel(fn, jit)``, where
    ``jit(**options)`` returns a Numba decorator (``parallel=True`` or ``nogil=True`` are added here)."""
    return lambda fn: ParallelKernel(fn, jit)


def _fork_safe(layer: str | None, state: _LaunchState) -> bool:
    """Whether a child forked now from this thread can keep launching parallel kernels."""
    if layer is None:
        return True  # nothing started: the child starts its own layer
    if layer == "workqueue":
        # numba resets workqueue in the child; a launch in flight on another thread would leave it mid-task.
        return state.lock is None or not state.lock.locked()
    if layer == "tbb":
        # numba suspends TBB across a fork only when forking from the thread that started it.
        return state.pool_thread == threading.get_ident()
    return False  # omp: GNU OpenMP is not fork-safe (and other OpenMP runtimes are not relied on)


def _before_fork() -> None:
    """In the parent: decide whether the child runs serial twins, and if so compile them now (once), so
    that children inherit the machine code. Never raises: a failure only defers compiling to the child."""
    state = _state
    state.serial_after_fork = state.serial or not _fork_safe(started_layer(), state)
    if state.serial_after_fork:
        try:
            for kernel in _kernels:
                kernel.compile_serial_twins()
        except Exception:  # pragma: no cover - the child compiles on first use instead
            pass


def _after_fork_in_child() -> None:
    """In the child: fresh locks (a parent thread may have held one at the fork) and the decided mode."""
    state = _state
    if state.lock is not None:
        state.lock = threading.Lock()  # the parent's may have been held by another thread
    for kernel in _kernels:
        kernel._serial_lock = threading.Lock()
    if state.serial_after_fork:
        state.serial = True
    elif started_layer() == "tbb":
        state.pool_thread = threading.get_ident()  # numba restarted TBB on this thread


if hasattr(os, "register_at_fork"):  # POSIX
    os.register_at_fork(before=_before_fork, after_in_child=_after_fork_in_child)
