"""Rotation benchmark: ropeflow's apply (q and k) vs the seed's PyTorch ``apply_rotary_pos_emb``, in one run.

CPU (``CPU_CASES``): decode of 1, 8 and 64 sequences of one token (q 32 heads, k 8 heads, head_dim 128, through
``RotaryEmbedding.apply`` end to end: time per call), prefill q (1, 32, 4096, 128) with k (1, 8, 4096, 128) in
head-major and token-major memory (``seq_axis=-3``), and float16 / bfloat16 prefill; against the seed's PyTorch
code, a jitted JAX rotation, MLX's ``mx.fast.rope`` and ggml's rope (llama.cpp's kernel, through ggml-python)
where those are installed (``_peers``: each checked against ropeflow's output before it is timed), and a
plain copy of q and k (into preallocated arrays, and into new ones; in the prefill cases ropeflow's two columns
and the two copies are timed in alternating rounds, so that their ratios hold on a machine whose speed
drifts). "half" layout (the seed's
``rotate_half`` form). The decode cases are also timed through ``RotaryEmbedding.plan``, in rounds
alternating with ``apply``'s (printed under the table, ``notes["numba_plan_us"]`` in the JSON). GPU: prefill
and decode shapes, median of ``repeats`` after a warm-up, CUDA events, against the seed's code on CUDA and a
device-to-device copy.
Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from ._common import best_of, cupy_median, describe_cpu, optional_torch, result, torch_cuda_median
from ._progress import Progress

CASES = [("prefill", (1, 32, 4096, 128)), ("decode", (8, 32, 1, 128))]
QUICK_CASES = [("prefill", (1, 8, 1024, 128)), ("decode", (8, 32, 1, 128))]
DTYPES = (np.float32, np.float16)
TABLE_LEN = 8192
#: "numba out": prefill rotated into preallocated arrays (``apply_rotary(..., out=)``, q then k), against "copy"
#: (``np.copyto`` into preallocated arrays); "new copy": ``q.copy(), k.copy()``, new arrays as ``apply`` returns.
CPU_COLUMNS = ["torch", "jax", "mlx", "ggml", "numpy", "numba", "numba out", "copy", "new copy"]
#: CPU cases: (label, q shape (B, H, S, D), k heads, memory order, dtype). k has fewer heads (GQA, 32/8).
#: "token-major" arrays are (B, S, H, D) in memory, rotated with ``seq_axis=-3``.
CPU_CASES = [
    ("decode x1", (1, 32, 1, 128), 8, "head-major", "float32"),
    ("decode x8", (8, 32, 1, 128), 8, "head-major", "float32"),
    ("decode x64", (64, 32, 1, 128), 8, "head-major", "float32"),
    ("prefill", (1, 32, 4096, 128), 8, "head-major", "float32"),
    ("prefill", (1, 32, 4096, 128), 8, "token-major", "float32"),
    ("prefill", (1, 32, 4096, 128), 8, "head-major", "float16"),
    ("prefill", (1, 32, 4096, 128), 8, "head-major", "bfloat16"),
]
QUICK_CPU_CASES = [c for c in CPU_CASES if c[0].startswith("decode")] + [
    ("prefill", (1, 8, 1024, 128), 2, "head-major", "float32"),
    ("prefill", (1, 8, 1024, 128), 2, "token-major", "float32"),
    ("prefill", (1, 8, 1024, 128), 2, "head-major", "bfloat16"),
]


def _inputs(shape: tuple[int, ...], dtype: Any, xp: Any = np) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    q = rng.standard_normal(shape).astype(dtype)
    k = rng.standard_normal(shape).astype(dtype)
    offsets = rng.integers(0, TABLE_LEN - shape[2], shape[0])
    positions = offsets[:, None] + np.arange(shape[2])[None, :]
    return xp.asarray(q), xp.asarray(k), offsets, positions


def _np_dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        import ml_dtypes

        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


def _per_call(fn: Any, repeats: int, min_seconds: float = 0.02) -> float:
    """Seconds per call: the best over ``repeats`` rounds of the mean of enough back-to-back calls to fill
    ``min_seconds`` (decode calls take microseconds: one call is below the timer's noise). Each call's result
    is dropped before the next call, as in a decode loop: kept, thousands of results would make every call
    fault in fresh memory."""
    fn()
    calls = 1

    def batch() -> None:
        for _ in range(calls):
            fn()

    while best_of(batch, 1) < min_seconds and calls < 1 << 16:
        calls *= 4
    return best_of(batch, repeats) / calls


def _per_call_interleaved(fns: list[Any], repeats: int) -> list[float]:
    """:func:`_per_call` for several functions whose rounds alternate (round i of each, then round i + 1),
    so that a change of the machine's speed between minutes does not favour one of them."""
    best = [float("inf")] * len(fns)
    for _ in range(repeats):
        for i, fn in enumerate(fns):
            best[i] = min(best[i], _per_call(fn, 1))
    return best


def _jax_rotate() -> Any:
    """A jitted JAX ``rotate_half`` rotation of q and k (the seed's math), or None without JAX."""
    try:
        import jax
        import jax.numpy as jnp
    except ImportError:
        return None

    def rotate(x, cos, sin):
        half = x.shape[-1] // 2
        rot = jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)
        return x * cos + rot * sin

    @jax.jit
    def both(q, k, cos, sin):
        return rotate(q, cos, sin), rotate(k, cos, sin)

    return both


def _peer_cell(prepare: Any, name: str, q: np.ndarray, k: np.ndarray, offsets: np.ndarray, seq_axis: int,
               base: float, want: tuple[Any, Any], repeats: int) -> tuple[float, str | None]:
    """Seconds per call of one peer library on one case, or NaN and why: absent, unsupported, or its output
    disagrees with ropeflow's ``want`` (then it is not timed)."""
    from . import _peers

    if prepare is None:
        return math.nan, None
    try:
        peer = prepare(q, k, offsets, seq_axis, base)
    except _peers.Unsupported as exc:
        return math.nan, str(exc)
    except Exception as exc:  # a peer failing here must not end the benchmark
        return math.nan, f"{name}: setup failed: {type(exc).__name__}: {exc}"
    try:
        peer.run()
        why = _peers.mismatch(peer.outputs(), (np.asarray(want[0]), np.asarray(want[1])), (q, k), offsets, base,
                              seq_axis)
        if why is not None:
            return math.nan, f"{name}: output differs from ropeflow's, not timed: {why}"
        return _per_call(peer.run, repeats), None
    except Exception as exc:
        return math.nan, f"{name}: failed: {type(exc).__name__}: {exc}"
    finally:
        peer.close()


def _peer_versions() -> dict[str, Any]:
    """``{"mlx": preparer or None, "ggml": ...}`` and a machine-line fragment naming what is installed."""
    from importlib import metadata

    from . import _peers

    found, words = {}, []
    for name, dist in (("mlx", "mlx"), ("ggml", "ggml-python")):
        found[name] = _peers.PEERS[name]()
        if found[name] is None:
            words.append(f"{name} absent")
        else:
            try:
                words.append(f"{dist} {metadata.version(dist)}")
            except metadata.PackageNotFoundError:
                words.append(f"{name} present")
    return {"preparers": found, "machine": ", ".join(words)}


def cpu_steps(quick: bool) -> int:
    """How many progress steps :func:`cpu_main` takes."""
    return len(QUICK_CPU_CASES if quick else CPU_CASES) * len(CPU_COLUMNS)


def _case_inputs(shape: tuple[int, ...], k_heads: int, order: str, dtype_name: str
                 ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, int]:
    """``(q, k, offsets, positions, seq_axis)`` of one CPU case (the same values on every call)."""
    dtype = _np_dtype(dtype_name)
    b, h, s, d = shape
    q, _, offsets, positions = _inputs(shape, dtype)
    k, _, _, _ = _inputs((b, k_heads, s, d), dtype)
    if order == "token-major":
        q, k = (np.ascontiguousarray(a.transpose(0, 2, 1, 3)) for a in (q, k))
        return q, k, offsets, positions, -3
    return q, k, offsets, positions, -2


def _ropeflow_times(case: tuple[Any, ...], repeats: int, progress: Progress) -> dict[str, float]:
    """ropeflow's columns and the copies of one case (seconds per call)."""
    import ropeflow

    label, shape, k_heads, order, dtype_name = case
    name = f"{label} {order} {dtype_name}"
    q, k, offsets, _, seq_axis = _case_inputs(shape, k_heads, order, dtype_name)
    times = {}
    for backend in ("numpy", "numba"):
        progress.step(f"{backend} {name}")
        rope = ropeflow.RotaryEmbedding(shape[3], TABLE_LEN, backend=backend)
        rope.cos_sin(TABLE_LEN)
        call = lambda: rope.apply(q, k, offset=offsets, seq_axis=seq_axis)  # noqa: E731
        if backend == "numba" and label.startswith("decode"):  # also through a plan, rounds interleaved
            step = rope.plan(q, k, seq_axis=seq_axis)
            planned, applied = step(q, k, offset=offsets), call()  # the plan must give apply's results
            if not all(np.array_equal(a, b) for a, b in zip(planned, applied, strict=True)):
                raise AssertionError(f"{name}: rope.plan's result differs from rope.apply's")
            times[backend], times["numba plan"] = _per_call_interleaved(
                [call, lambda: step(q, k, offset=offsets)], repeats)
        elif backend == "numba":  # timed below, in rounds alternating with the copies
            numba_apply = call
        else:
            times[backend] = _per_call(call, repeats)
    qo, ko = np.empty_like(q), np.empty_like(k)
    copy_into = lambda: (np.copyto(qo, q), np.copyto(ko, k))  # noqa: E731
    new_copy = lambda: (q.copy(), k.copy())  # noqa: E731
    progress.step(f"copy {name}")
    progress.step(f"new copy {name}")
    progress.step(f"numba out {name}")
    if label.startswith("decode"):  # decode: two calls' overhead, not the kernel
        times["copy"], times["new copy"] = _per_call_interleaved([copy_into, new_copy], repeats)
        times["numba out"] = math.nan
        return times
    # prefill: ropeflow and the copies in alternating rounds, so that the ratios compare like with like on a
    # machine whose speed drifts between minutes
    cos, sin = rope.cos_sin(TABLE_LEN)
    rotate_into = lambda: [  # noqa: E731
        ropeflow.apply_rotary(x, cos, sin, offset=offsets, seq_axis=seq_axis, out=o, backend="numba")
        for x, o in ((q, qo), (k, ko))]
    times["numba"], times["numba out"], times["copy"], times["new copy"] = _per_call_interleaved(
        [numba_apply, rotate_into, copy_into, new_copy], repeats)
    return times


def _peer_times(case: tuple[Any, ...], repeats: int, progress: Progress, torch: Any, seed: Any, jax_rotate: Any,
                preparers: dict[str, Any], notes: list[str]) -> dict[str, float]:
    """The other libraries' columns of one case (seconds per call; NaN where absent or unsupported)."""
    import ropeflow

    label, shape, k_heads, order, dtype_name = case
    name = f"{label} {order} {dtype_name}"
    q, k, offsets, positions, seq_axis = _case_inputs(shape, k_heads, order, dtype_name)
    dtype = q.dtype
    rope = ropeflow.RotaryEmbedding(shape[3], TABLE_LEN, backend="numpy")
    cos, sin = rope.cos_sin(TABLE_LEN)
    progress.step(f"torch {name}")
    times = {"torch": math.nan, "jax": math.nan}
    if torch is not None:
        tdt = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}[dtype_name]
        tc, ts = torch.from_numpy(np.array(cos)).to(tdt), torch.from_numpy(np.array(sin)).to(tdt)
        tp = torch.from_numpy(positions)
        as_torch = (lambda a: torch.from_numpy(a.view(np.int16)).view(torch.bfloat16)) \
            if dtype_name == "bfloat16" else torch.from_numpy
        tq, tk = as_torch(q), as_torch(k)
        if order == "token-major":  # the seed's code wants (B, H, S, D): hand it the transposed views
            tq, tk = tq.transpose(1, 2), tk.transpose(1, 2)
        times["torch"] = _per_call(lambda: (seed.apply_rotary_half(tq, tc, ts, tp),
                                            seed.apply_rotary_half(tk, tc, ts, tp)), repeats)
    progress.step(f"jax {name}")
    if jax_rotate is not None and order == "head-major":
        import jax.numpy as jnp

        jq, jk = jnp.asarray(q), jnp.asarray(k)
        jc = jnp.asarray(np.asarray(cos)[positions][:, None].astype(dtype))
        js = jnp.asarray(np.asarray(sin)[positions][:, None].astype(dtype))
        times["jax"] = _per_call(lambda: [a.block_until_ready() for a in jax_rotate(jq, jk, jc, js)], repeats)
    want = rope.apply(q, k, offset=offsets, seq_axis=seq_axis)  # what they must match
    for peer in ("mlx", "ggml"):
        progress.step(f"{peer} {name}")
        times[peer], why = _peer_cell(preparers[peer], peer, q, k, offsets, seq_axis, rope.base, want, repeats)
        if why:
            notes.append(f"{name}: {why}")
    return times


def cpu_main(repeats: int, quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run the CPU rotation benchmark, print its table, return the results.

    ropeflow and the copies are timed first, for every case, before any other library has run: the thread
    pools of torch (OpenMP), JAX, MLX and ggml keep spinning after their work, and on a 2-core machine they
    take the cores from whatever is timed next (microsecond decode calls most of all)."""
    progress = progress or Progress(cpu_steps(quick), enabled=False)
    torch, seed = optional_torch()
    cases = QUICK_CPU_CASES if quick else CPU_CASES
    ours = [_ropeflow_times(case, repeats, progress) for case in cases]
    jax_rotate = _jax_rotate()
    peers = _peer_versions()
    machine = describe_cpu() + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch
                                else ", torch absent") + (", jax present" if jax_rotate else ", jax absent") + \
        f", {peers['machine']}"
    res = result("rotate q and k", CPU_COLUMNS, machine)
    progress.echo(f"machine: {machine}")
    progress.echo(f"best of {repeats}; q and k (fewer heads) rotated by RotaryEmbedding.apply at per-sequence "
                  "offsets; ropeflow and the copies timed first, the other libraries after; ratios = other / "
                  "numba\n")
    progress.echo(f"{'case':32s} {'torch':>9s} {'jax':>9s} {'mlx':>9s} {'ggml':>9s} {'numpy':>9s} {'numba':>9s} "
                  f"{'nb out':>9s} {'copy':>9s} {'new copy':>9s}  torch/numba  numba/new copy  nb out/copy   (ms)")
    peer_notes: list[str] = []
    for case, times in zip(cases, ours, strict=True):
        times.update(_peer_times(case, repeats, progress, torch, seed, jax_rotate, peers["preparers"], peer_notes))
        label, shape, k_heads, order, dtype_name = case
        nb = times["numba"]
        res["rows"].append({"case": f"{label} q{shape} k heads {k_heads} {order} {dtype_name}",
                            "ms": {c: times[c] * 1e3 for c in CPU_COLUMNS}})
        progress.echo(f"{label + ' ' + order + ' ' + dtype_name:32s} "
                      + " ".join(f"{times[c] * 1e3:9.4f}" for c in CPU_COLUMNS)
                      + f"  {times['torch'] / nb:10.2f}x {nb / times['new copy']:13.2f}x "
                        f"{times['numba out'] / times['copy']:11.2f}x")
    planned = [(case[0], times["numba plan"]) for case, times in zip(cases, ours, strict=True) if "numba plan" in times]
    if planned:
        res["notes"]["numba_plan_us"] = {label: t * 1e6 for label, t in planned}
        progress.echo("\nthe decode calls through rope.plan(q, k): "
                      + ", ".join(f"{label} {t * 1e6:.1f} us" for label, t in planned))
    if peer_notes:
        res["notes"]["peers"] = peer_notes
        progress.echo("\nempty (nan) peer cells:\n" + "\n".join(f"  {n}" for n in peer_notes))
    return res


def gpu_steps(quick: bool) -> int:
    """How many progress steps :func:`gpu_main` takes."""
    return len(QUICK_CASES if quick else CASES) * len(DTYPES) * 3


def gpu_main(repeats: int, quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run the GPU rotation benchmark (one CUDA launch for q and k); print and return it."""
    import cupy

    import ropeflow
    from ropeflow.apply import prepare

    progress = progress or Progress(gpu_steps(quick), enabled=False)
    torch, seed = optional_torch()
    torch_cuda = torch is not None and torch.cuda.is_available()
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    machine = f"{props['name'].decode()}, cupy {cupy.__version__}" + (f", torch {torch.__version__}" if torch else "")
    res = result("rotate q and k on the GPU", ["kernel", "torch", "copy"], machine)
    progress.echo(f"device: {machine}")
    progress.echo(f"median of {repeats} after warm-up (CUDA events); bandwidth = bytes read + written / time\n")
    progress.echo(f"{'case':8s} {'dtype':8s} {'kernel ms':>10s} {'torch ms':>9s} {'copy ms':>8s} "
                  f"{'kernel GB/s':>11s} {'copy GB/s':>9s}  torch/kernel  kernel/copy bandwidth")
    for label, shape in QUICK_CASES if quick else CASES:
        for dtype in DTYPES:
            case = f"{label} {np.dtype(dtype).name}"
            q, k, offsets, positions = _inputs(shape, dtype, cupy)
            rope = ropeflow.RotaryEmbedding(shape[-1], TABLE_LEN, backend="cupy")
            qo, ko = cupy.empty_like(q), cupy.empty_like(k)
            cos, sin = rope.cos_sin(TABLE_LEN)
            jq = prepare(q, cos, sin, offset=cupy.asarray(offsets), out=qo, backend="cupy")
            jk = prepare(k, cos, sin, offset=cupy.asarray(offsets), out=ko, backend="cupy")
            progress.step(f"kernel {case}")
            t_k = cupy_median(lambda: jq.run(jk), repeats)
            progress.step(f"copy {case}")
            t_copy = cupy_median(lambda: (qo.__setitem__(Ellipsis, q), ko.__setitem__(Ellipsis, k)), repeats)
            progress.step(f"torch {case}")
            t_torch = math.nan
            if torch_cuda:
                tdt = torch.float32 if dtype == np.float32 else torch.float16
                tc = torch.as_tensor(cupy.asnumpy(cos), device="cuda").to(tdt)
                ts = torch.as_tensor(cupy.asnumpy(sin), device="cuda").to(tdt)
                tq = torch.as_tensor(cupy.asnumpy(q), device="cuda")
                tk = torch.as_tensor(cupy.asnumpy(k), device="cuda")
                tp = torch.as_tensor(positions, device="cuda")
                t_torch = torch_cuda_median(lambda: (seed.apply_rotary_half(tq, tc, ts, tp),
                                                     seed.apply_rotary_half(tk, tc, ts, tp)), repeats)
            moved = 2 * (q.nbytes + k.nbytes)  # read and write q and k (tables are small, cached)
            res["rows"].append({"case": f"{label} {shape} {np.dtype(dtype).name}",
                                "ms": {"kernel": t_k * 1e3, "torch": t_torch * 1e3, "copy": t_copy * 1e3}})
            progress.echo(f"{label:8s} {np.dtype(dtype).name:8s} {t_k * 1e3:10.4f} {t_torch * 1e3:9.4f} "
                          f"{t_copy * 1e3:8.4f} {moved / t_k / 1e9:11.1f} {moved / t_copy / 1e9:9.1f}  "
                          f"{t_torch / t_k:11.2f}x {t_copy / t_k:10.2f}")
    return res
