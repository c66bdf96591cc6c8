"""Threads and forked processes on the numba backend (issue 13, part 6).

Under numba's ``workqueue`` threading layer two parallel launches at once abort the process, and under GNU
OpenMP (``omp``) a child forked after the parent used the layer is terminated at its first parallel launch.
Such failures kill the interpreter, so those cases run in subprocesses, one per threading layer
(``NUMBA_THREADING_LAYER``), and a layer that cannot be loaded here is skipped with numba's reason.
Each subprocess asserts correct results itself; the test asserts exit status 0 and the summary it prints.
"""

from __future__ import annotations

import functools
import json
import os
import subprocess
import sys
import textwrap
import threading
from pathlib import Path

import numpy as np
import pytest

_numba = pytest.importorskip("ropeflow.backends._numba")
from ropeflow.backends import _numba_threads  # noqa: E402
from ropeflow.scaling import compute_frequencies, parse_scaling  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
LAYERS = ["workqueue", "omp", "tbb"]
TIMEOUT_S = 180  # a hang (a Pool whose workers are killed at once) fails instead of blocking the suite


def _env(layer: str) -> dict[str, str]:
    env = dict(os.environ)
    env["NUMBA_THREADING_LAYER"] = layer
    env["NUMBA_NUM_THREADS"] = "4"  # several workers even on a 1- or 2-core machine, so launches can overlap
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])])
    return env


def _run(code: str, layer: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", textwrap.dedent(code)], env=_env(layer), cwd=ROOT,
                          capture_output=True, text=True, timeout=TIMEOUT_S)


@functools.cache
def _unavailable(layer: str) -> str | None:
    """Why ``layer`` cannot be loaded here (numba's message), or None when a parallel launch runs on it."""
    if layer == "workqueue":
        return None  # built into numba: always present
    probe = """
        import numba, numpy as np
        @numba.njit(parallel=True)
        def f(a):
            for i in numba.prange(a.size):
                a[i] = i
        f(np.zeros(8))
        print(numba.threading_layer())
    """
    r = _run(probe, layer)
    if r.returncode == 0 and r.stdout.split()[-1:] == [layer]:
        return None
    lines = [line for line in (r.stderr or r.stdout).strip().splitlines() if line.strip()]
    return " ".join(lines[-3:]) or f"exit status {r.returncode}"


def _run_on(layer: str, code: str) -> dict:
    """Run ``code`` under ``layer`` (skipping when it is unavailable); its last stdout line is a JSON summary."""
    reason = _unavailable(layer)
    if reason is not None:
        pytest.skip(f"numba threading layer {layer!r} is not available here: {reason}")
    r = _run(code, layer)
    assert r.returncode == 0, f"exit status {r.returncode} under {layer}\nstdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert summary["layer"] == layer
    return summary


THREADS_CODE = """
    import json, threading
    import numba, numpy as np
    from ropeflow import RotaryEmbedding

    N_THREADS, ROUNDS, SEQ, DIM = 8, 4, 256, 64
    barrier = threading.Barrier(N_THREADS)
    results, errors = [], []

    def config(t, i):
        # a distinct base per call: no two calls share a table, so every call launches the table kernel
        return dict(dim=DIM, max_position_embeddings=512, base=10000.0 + 100.0 * t + i)

    def work(t):
        try:
            rng = np.random.default_rng(t)
            barrier.wait()  # all threads start together: the first launches (layer still unknown) overlap too
            for i in range(ROUNDS):
                rope = RotaryEmbedding(**config(t, i), backend="numba")
                cos, sin = rope.cos_sin(SEQ)
                q = rng.standard_normal((2, 4, SEQ, DIM), dtype=np.float32)
                k = rng.standard_normal((2, 2, SEQ, DIM), dtype=np.float32)
                q_rot, k_rot = rope.apply(q, k)
                results.append((t, i, cos, sin, q, k, q_rot, k_rot))
        except BaseException as exc:
            errors.append(f"thread {t}: {exc!r}")

    threads = [threading.Thread(target=work, args=(t,)) for t in range(N_THREADS)]
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    assert not errors, errors
    assert len(results) == N_THREADS * ROUNDS

    for t, i, cos, sin, q, k, q_rot, k_rot in results:
        # tables: the numpy reference, within the few ulps by which the sin/cos routines may differ
        ref_cos, ref_sin = RotaryEmbedding(**config(t, i), backend="numpy").cos_sin(SEQ)
        np.testing.assert_allclose(cos, ref_cos, rtol=0, atol=1e-6)
        np.testing.assert_allclose(sin, ref_sin, rtol=0, atol=1e-6)
        # rotation: bit for bit what one thread alone computes from the same tables
        alone_q, alone_k = RotaryEmbedding(**config(t, i), backend="numba").apply(q, k)
        assert np.array_equal(q_rot, alone_q) and np.array_equal(k_rot, alone_k)
        ref_q, ref_k = RotaryEmbedding(**config(t, i), backend="numpy").apply(q, k)
        np.testing.assert_allclose(q_rot, ref_q, rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(k_rot, ref_k, rtol=1e-5, atol=1e-5)
    print(json.dumps({"layer": numba.threading_layer(), "calls": len(results)}))
"""


@pytest.mark.parametrize("layer", LAYERS)
def test_eight_threads_cos_sin_and_apply(layer):
    """8 threads x (cos_sin + apply) at once: no abort, correct tables and rotations, on every layer."""
    summary = _run_on(layer, THREADS_CODE)
    assert summary["calls"] == 32


FORK_CODE = """
    import json, multiprocessing as mp
    import numba, numpy as np
    from ropeflow import RotaryEmbedding
    from ropeflow.backends import _numba_threads

    SEQ, DIM = 300, 64

    def config(n):
        return dict(dim=DIM, max_position_embeddings=256, base=5000.0 + n)

    def inputs(n):
        return np.random.default_rng(n).standard_normal((1, 3, SEQ, DIM), dtype=np.float32)

    def compute(n):
        # a configuration the parent has not built (the child must launch kernels, not read an inherited
        # table) and a rotation (always a launch)
        rope = RotaryEmbedding(**config(n), backend="numba")
        cos, sin = rope.cos_sin(SEQ)
        q_rot, _ = rope.apply(inputs(n))
        return cos, sin, q_rot

    def task(n):
        cos, sin, q_rot = compute(n)
        return _numba_threads._state.serial, cos.tobytes(), sin.tobytes(), q_rot.tobytes()

    def process_main(conn, n):
        conn.send(task(n))
        conn.close()

    if __name__ == "__main__":
        ctx = mp.get_context("fork")
        compute(0)  # the parent uses the numba backend: the threading layer is now started
        layer = numba.threading_layer()

        parent_end, child_end = ctx.Pipe()
        proc = ctx.Process(target=process_main, args=(child_end, 1))
        proc.start()
        child_end.close()  # a child that dies closes the pipe: recv() raises EOFError instead of waiting
        from_process = parent_end.recv()
        proc.join(60)
        assert proc.exitcode == 0, proc.exitcode

        with ctx.Pool(2) as pool:  # a Pool replaces killed workers and waits forever: bound the wait
            from_pool = pool.map_async(task, [2, 3, 4, 5]).get(timeout=60)

        serial_in_child = set()
        for n, (serial, cos_b, sin_b, q_b) in zip([1, 2, 3, 4, 5], [from_process, *from_pool]):
            serial_in_child.add(serial)
            # the parent, still parallel after the forks, computes the same: bit for bit
            cos, sin, q_rot = compute(n)
            assert cos_b == cos.tobytes() and sin_b == sin.tobytes() and q_b == q_rot.tobytes(), n
            ref_cos, _ = RotaryEmbedding(**config(n), backend="numpy").cos_sin(SEQ)
            np.testing.assert_allclose(cos, ref_cos, rtol=0, atol=1e-6)
        assert not _numba_threads._state.serial
        print(json.dumps({"layer": layer, "serial_in_child": sorted(serial_in_child)}))
"""

#: Which kernels a child forked after use runs: serial twins where the layer is not fork-safe.
EXPECTED_CHILD_SERIAL = {"workqueue": [False], "omp": [True], "tbb": [False]}


@pytest.mark.parametrize("layer", LAYERS)
def test_fork_after_use(layer):
    """After the parent used the backend: a fork-context Process and a Pool of workers compute the right
    tables and rotations (bit-identical to the parent's), and the parent keeps working in parallel."""
    summary = _run_on(layer, FORK_CODE)
    assert summary["serial_in_child"] == EXPECTED_CHILD_SERIAL[layer]


# ------------------------------------------------------------------------------------------ in-process


def _tables(precision: str, dim: int, start: int, rows: int, scaling=None):
    freqs = compute_frequencies(parse_scaling(scaling), dim, 10000.0, 4096, precision)
    dtype = freqs.inv_freq.dtype
    cos, sin = np.empty((rows, dim), dtype), np.empty((rows, dim), dtype)
    _numba.make_backend().build_rows(freqs, start, cos, sin)
    return freqs, cos, sin


@pytest.mark.parametrize("precision", ["reference", "exact"])
@pytest.mark.parametrize("scaling", [None, {"rope_type": "linear", "factor": 4.0}], ids=["default", "linear"])
def test_serial_twins_build_identical_tables(precision, scaling, monkeypatch):
    _, cos_p, sin_p = _tables(precision, 96, 17, 700, scaling)
    monkeypatch.setattr(_numba_threads._state, "serial", True)
    _, cos_s, sin_s = _tables(precision, 96, 17, 700, scaling)
    assert np.array_equal(cos_p, cos_s) and np.array_equal(sin_p, sin_s)


def test_serial_twins_identical_on_the_libm_path(monkeypatch):
    """Angles past the polynomial's range take the libm branch of the same kernel."""
    from ropeflow.scaling import Frequencies

    freqs = Frequencies(np.array([64.0, 1.0], np.float32))
    out = []
    for serial in (False, True):
        monkeypatch.setattr(_numba_threads._state, "serial", serial)
        cos, sin = np.empty((8, 4), np.float32), np.empty((8, 4), np.float32)
        _numba.make_backend().build_rows(freqs, 2**24 - 8, cos, sin)
        out.append((cos, sin))
    assert all(np.array_equal(a, b) for a, b in zip(*out, strict=True))


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
def test_serial_twins_rotate_identically(dtype, layout, monkeypatch):
    """Every layout and dtype, inverse and partial rotary: the serial twin's output equals the parallel
    kernel's bit for bit (no fast-math, no reductions: the same operations in the same order per element)."""
    dt = _dtype(dtype)
    head_dim, rotary_dim = 80, 64
    precision = "exact" if dtype == "float64" else "reference"
    _, cos, sin = _tables(precision, rotary_dim, 0, 64)
    rng = np.random.default_rng(7)
    x = rng.standard_normal((2, 3, 40, head_dim)).astype(dt)
    positions = rng.integers(0, 64, size=(2, 40)).astype(np.int64)
    backend = _numba.make_backend()
    for inverse in (False, True):
        outs = []
        for serial in (False, True):
            monkeypatch.setattr(_numba_threads._state, "serial", serial)
            out = np.empty_like(x)
            backend.apply(x, out, cos, sin, positions, layout, rotary_dim, inverse)
            outs.append(out)
        assert outs[0].tobytes() == outs[1].tobytes(), (layout, dtype, inverse)


def test_serial_twin_is_a_separate_non_parallel_compilation():
    """The twin is compiled from a renamed copy (numba's disk cache ignores ``parallel``: the same function
    would load the parallel machine code) without ``parallel`` and with ``nogil``."""
    kernel = _numba._table_rows_f32
    twin = kernel.serial
    assert twin is not kernel.parallel
    assert twin.py_func.__qualname__ == kernel.py_func.__qualname__ + "_serial"
    assert twin.py_func.__code__ is kernel.py_func.__code__
    assert not twin.targetoptions.get("parallel") and twin.targetoptions.get("nogil")
    assert kernel.parallel.targetoptions.get("parallel")


def test_launch_lock_follows_the_layer():
    """After a launch in this process, the lock is held only where the layer is not thread-safe."""
    _tables("reference", 8, 0, 4)
    layer = _numba_threads.started_layer()
    assert layer is not None and _numba_threads._state.settled
    if layer in _numba_threads.THREAD_SAFE_LAYERS:
        assert _numba_threads._state.lock is None
    else:
        assert _numba_threads._state.lock is not None


def test_fork_safety_rules():
    state = _numba_threads._LaunchState()
    me = threading.get_ident()
    assert _numba_threads._fork_safe(None, state)  # nothing started: the child starts its own layer
    assert not _numba_threads._fork_safe("omp", state)
    state.pool_thread = me
    assert _numba_threads._fork_safe("tbb", state)
    state.pool_thread = me + 1  # TBB started by another thread: numba cannot suspend it across the fork
    assert not _numba_threads._fork_safe("tbb", state)
    assert _numba_threads._fork_safe("workqueue", state)
    with state.lock:  # a workqueue launch in flight on another thread
        assert not _numba_threads._fork_safe("workqueue", state)
