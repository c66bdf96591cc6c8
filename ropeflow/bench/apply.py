"""Rotation benchmark: ropeflow's apply (q and k) vs the seed's PyTorch ``apply_rotary_pos_emb``, in one run.

Shapes: prefill q, k of (1, 32, 4096, 128) and decode q, k of (8, 32, 1, 128) at per-sequence offsets
(quick: prefill (1, 8, 1024, 128)); float32 and float16; "half" layout (the seed's ``rotate_half`` form).
CPU: best of ``repeats``. GPU: median of ``repeats`` after a warm-up, CUDA events, against the seed's code on
CUDA and a device-to-device copy. Not a test: nothing here asserts a timing.
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
CPU_COLUMNS = ["torch", "numpy", "numba", "copy"]


def _inputs(shape: tuple[int, ...], dtype: Any, xp: Any = np) -> tuple[Any, Any, np.ndarray, np.ndarray]:
    rng = np.random.default_rng(0)
    q = rng.standard_normal(shape).astype(dtype)
    k = rng.standard_normal(shape).astype(dtype)
    offsets = rng.integers(0, TABLE_LEN - shape[2], shape[0])
    positions = offsets[:, None] + np.arange(shape[2])[None, :]
    return xp.asarray(q), xp.asarray(k), offsets, positions


def cpu_steps(quick: bool) -> int:
    """How many progress steps :func:`cpu_main` takes."""
    return len(QUICK_CASES if quick else CASES) * len(DTYPES) * len(CPU_COLUMNS)


def cpu_main(repeats: int, quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run the CPU rotation benchmark, print its table, return the results."""
    import ropeflow

    progress = progress or Progress(cpu_steps(quick), enabled=False)
    torch, seed = optional_torch()
    machine = describe_cpu() + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch
                                else ", torch absent")
    res = result("rotate q and k", CPU_COLUMNS, machine)
    progress.echo(f"machine: {machine}")
    progress.echo(f"best of {repeats}; q and k rotated; ratios = other / numba\n")
    progress.echo(f"{'case':8s} {'dtype':8s} {'torch ms':>9s} {'numpy ms':>9s} {'numba ms':>9s} {'copy ms':>8s}"
                  "  torch/numba  numpy/numba  numba/copy")
    for label, shape in QUICK_CASES if quick else CASES:
        for dtype in DTYPES:
            case = f"{label} {np.dtype(dtype).name}"
            q, k, offsets, positions = _inputs(shape, dtype)
            timings = {}
            for name in ("numpy", "numba"):
                progress.step(f"{name} {case}")
                rope = ropeflow.RotaryEmbedding(shape[-1], TABLE_LEN, backend=name)
                rope.cos_sin(TABLE_LEN)
                timings[name] = best_of(lambda: rope.apply(q, k, offset=offsets), repeats, warmup=True)
            progress.step(f"torch {case}")
            t_torch = math.nan
            if torch is not None:
                cos, sin = ropeflow.RotaryEmbedding(shape[-1], TABLE_LEN, backend="numpy").cos_sin(TABLE_LEN)
                tdt = torch.float32 if dtype == np.float32 else torch.float16
                tc, ts = torch.from_numpy(np.array(cos)).to(tdt), torch.from_numpy(np.array(sin)).to(tdt)
                tq, tk, tp = torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(positions)
                t_torch = best_of(lambda: (seed.apply_rotary_half(tq, tc, ts, tp),
                                           seed.apply_rotary_half(tk, tc, ts, tp)), repeats, warmup=True)
            progress.step(f"copy {case}")
            t_copy = best_of(lambda: (q.copy(), k.copy()), repeats, warmup=True)
            nb = timings["numba"]
            times = {"torch": t_torch, "numpy": timings["numpy"], "numba": nb, "copy": t_copy}
            res["rows"].append({"case": f"{label} {shape} {np.dtype(dtype).name}",
                                "ms": {c: t * 1e3 for c, t in times.items()}})
            progress.echo(f"{label:8s} {np.dtype(dtype).name:8s} {t_torch * 1e3:9.3f} {timings['numpy'] * 1e3:9.3f} "
                          f"{nb * 1e3:9.3f} {t_copy * 1e3:8.3f}  {t_torch / nb:10.2f}x "
                          f"{timings['numpy'] / nb:11.2f}x {nb / t_copy:10.2f}x")
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
