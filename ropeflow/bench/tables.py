"""Table-build benchmark: ropeflow backends vs the seed's PyTorch code, with ratios measured in one run.

CPU: the best of ``repeats`` cold builds (a new instance each time, allocation included), against the seed's
PyTorch code (when torch is installed) and the memory floor (``np.empty`` + ``fill`` of both outputs).
GPU (``backend="cupy"``): CUDA events after a warm-up, the median of ``repeats`` runs, against the seed's
code on CUDA and a device-to-device copy. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import math
import subprocess
import sys
import time
from typing import Any

import numpy as np

from ._common import best_of, cupy_median, describe_cpu, optional_torch, result, torch_cuda_median
from ._progress import Progress

CPU_SIZES = [(4096, 64), (32768, 64), (131072, 64), (131072, 128)]
QUICK_CPU_SIZES = [(4096, 64), (32768, 64)]
GPU_SIZES = [(4096, 64), (163840, 64), (131072, 128), (1048576, 128)]
QUICK_GPU_SIZES = [(4096, 64), (163840, 64)]
CPU_COLUMNS = ["torch", "numpy", "numba", "exact", "floor"]
#: Also time ``import ropeflow`` and the first numba call in fresh processes (a few seconds).
MEASURE_STARTUP = True


def ropeflow_build(backend: str, n: int, dim: int, precision: str = "reference"):
    """A function that builds an ``n x dim`` float32 table from nothing (a new instance each call)."""
    import ropeflow

    def run() -> None:
        rope = ropeflow.RotaryEmbedding(dim, n, 10000.0, backend=backend, precision=precision)
        rope.cos_sin(n, "float32")

    return run


def memory_floor(n: int, dim: int):
    """A function that only allocates and fills two ``n x dim`` float32 arrays: the floor of a table build."""

    def run() -> None:
        np.empty((n, dim), np.float32).fill(1.0)
        np.empty((n, dim), np.float32).fill(1.0)

    return run


def cpu_steps(quick: bool) -> int:
    """How many progress steps :func:`cpu_main` takes."""
    return len(QUICK_CPU_SIZES if quick else CPU_SIZES) * len(CPU_COLUMNS) + 3


def cpu_main(repeats: int, quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run the CPU table benchmark, print its table, return the results."""
    import numba

    import ropeflow

    progress = progress or Progress(cpu_steps(quick), enabled=False)
    torch, seed = optional_torch()
    machine = f"{describe_cpu()}, numba {numba.__version__}" + (
        f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ", torch absent")
    res = result("table build, float32, from nothing", CPU_COLUMNS, machine)
    progress.echo(f"machine: {machine}")
    progress.echo(f"best of {repeats}, float32, built from nothing (allocation included); "
                  "ratios = torch time / time\n")
    for b in ("numpy", "numba"):  # JIT warm-up
        ropeflow_build(b, 16, 64)()
    header = f"{'size':>14s} {'torch ms':>9s} {'numpy ms':>9s} {'numba ms':>9s} {'exact ms':>9s} {'floor ms':>9s}"
    progress.echo(header + "   numba/torch  numba/numpy  numba/floor  exact/ref")
    for n, dim in QUICK_CPU_SIZES if quick else CPU_SIZES:
        case = f"{n} x {dim}"
        progress.step(f"torch {case}")
        t_torch = math.nan
        if torch is not None:
            build = seed.table_builder(dim, 10000.0)
            t_torch = best_of(lambda: build(n), repeats)
        progress.step(f"numpy {case}")
        t_np = best_of(ropeflow_build("numpy", n, dim), repeats)
        progress.step(f"numba {case}")
        t_nb = best_of(ropeflow_build("numba", n, dim), repeats)
        progress.step(f"numba exact {case}")
        t_ex = best_of(ropeflow_build("numba", n, dim, "exact"), repeats)
        progress.step(f"floor {case}")
        t_fl = best_of(memory_floor(n, dim), repeats)
        times = dict(zip(CPU_COLUMNS, (t_torch, t_np, t_nb, t_ex, t_fl), strict=True))
        res["rows"].append({"case": case, "ms": {k: v * 1e3 for k, v in times.items()}})
        progress.echo(f"{n:>8d} x {dim:<3d} {t_torch * 1e3:9.2f} {t_np * 1e3:9.2f} {t_nb * 1e3:9.2f} "
                      f"{t_ex * 1e3:9.2f} {t_fl * 1e3:9.2f}   {t_torch / t_nb:10.2f}x {t_np / t_nb:11.2f}x "
                      f"{t_nb / t_fl:11.2f}x {t_ex / t_nb:9.2f}x")

    progress.step("cache hits")
    rope = ropeflow.RotaryEmbedding(64, 8192, 10000.0)
    rope.cos_sin(8192)
    hits = 10000 if quick else 100000
    start = time.perf_counter()
    for _ in range(hits):
        rope.cos_sin(4096)
    hit = (time.perf_counter() - start) / hits
    x = np.zeros((1, 1, 4096, 64), np.float32)
    start = time.perf_counter()
    for _ in range(hits):
        rope(x)
    hit_x = (time.perf_counter() - start) / hits
    res["notes"].update(cache_hit_us=hit * 1e6, call_hit_us=hit_x * 1e6)
    progress.echo(f"\ncache hit: cos_sin(4096) {hit * 1e6:.2f} us, rope(x) {hit_x * 1e6:.2f} us")

    progress.step("decode loop")
    steps = 2048 if quick else 8192

    def decode() -> None:
        r = ropeflow.RotaryEmbedding(64, steps, 10000.0)
        for n in range(1, steps + 1):
            r.cos_sin(n)

    t_decode = best_of(decode, 5)
    t_build = best_of(ropeflow_build("numba", steps, 64), 5)
    budget = 2 * (t_build + steps * hit)
    res["notes"].update(decode_ms=t_decode * 1e3, decode_ratio=t_decode / (t_build + steps * hit))
    progress.echo(f"decode loop 1..{steps}: {t_decode * 1e3:.2f} ms; one {steps}-row build {t_build * 1e3:.2f} ms "
                  f"+ {steps} hits {steps * hit * 1e3:.2f} ms; ratio to that "
                  f"{t_decode / (t_build + steps * hit):.2f}x (target <= 2x, budget {budget * 1e3:.2f} ms)")

    progress.step("import and first call")
    if not MEASURE_STARTUP:
        return res
    code = "import time; t=time.perf_counter(); import ropeflow; print(time.perf_counter()-t)"
    n_proc = 2 if quick else 5
    imports = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout) for _ in range(n_proc)]
    first = ("import time, ropeflow; r = ropeflow.RotaryEmbedding(64, backend='numba'); t=time.perf_counter(); "
             "r.cos_sin(4096); print(time.perf_counter()-t)")
    subprocess.run([sys.executable, "-c", first], capture_output=True, check=True)  # warm the on-disk cache
    firsts = [float(subprocess.run([sys.executable, "-c", first], capture_output=True, text=True,
                                   check=True).stdout) for _ in range(2 if quick else 3)]
    res["notes"].update(import_ms=min(imports) * 1e3, first_numba_call_ms=min(firsts) * 1e3)
    progress.echo(f"import ropeflow: {min(imports) * 1e3:.0f} ms (best of {n_proc} processes); first numba call in "
                  f"a new process with a warm cache: {min(firsts) * 1e3:.0f} ms (best of {len(firsts)})")
    return res


def gpu_steps(quick: bool) -> int:
    """How many progress steps :func:`gpu_main` takes."""
    return len(QUICK_GPU_SIZES if quick else GPU_SIZES) * 3


def gpu_main(repeats: int, quick: bool = False, progress: Progress | None = None) -> dict[str, Any]:
    """Run the GPU table benchmark (CuPy kernel vs the seed's code on CUDA vs a copy); print and return it."""
    import cupy

    from ropeflow.backends import get_backend
    from ropeflow.scaling import compute_frequencies

    progress = progress or Progress(gpu_steps(quick), enabled=False)
    torch, seed = optional_torch()
    torch_cuda = torch is not None and torch.cuda.is_available()
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    machine = (f"{props['name'].decode()}, driver {cupy.cuda.runtime.driverGetVersion()}, runtime "
               f"{cupy.cuda.runtime.runtimeGetVersion()}, cupy {cupy.__version__}"
               + (f", torch {torch.__version__}" if torch else ""))
    res = result("table build on the GPU, float32", ["kernel", "torch", "copy"], machine)
    progress.echo(f"device: {machine}")
    progress.echo(f"median of {repeats} after warm-up, CUDA events; bandwidth = bytes written / time\n")
    impl = get_backend("cupy")
    progress.echo(f"{'size':>16s} {'kernel ms':>10s} {'torch ms':>9s} {'copy ms':>8s} {'kernel GB/s':>11s} "
                  f"{'copy GB/s':>9s}  torch/kernel  write/copy")
    for n, dim in QUICK_GPU_SIZES if quick else GPU_SIZES:
        case = f"{n} x {dim}"
        progress.step(f"kernel {case}")
        freqs = compute_frequencies(None, dim, 10000.0, n, "reference")
        prepared = impl.prepare(freqs, dev.id)
        cos = cupy.empty((n, dim), cupy.float32)
        sin = cupy.empty((n, dim), cupy.float32)
        t_k = cupy_median(lambda: impl.build_rows(prepared, 0, cos, sin), repeats)
        progress.step(f"copy {case}")
        src = cupy.ones((n, dim), cupy.float32)
        dst = cupy.empty_like(src)
        src2, dst2 = src.copy(), cupy.empty_like(src)
        t_copy = cupy_median(lambda: (dst.__setitem__(Ellipsis, src), dst2.__setitem__(Ellipsis, src2)), repeats)
        progress.step(f"torch {case}")
        t_torch = math.nan
        if torch_cuda:
            build = seed.table_builder(dim, 10000.0, "cuda")
            t_torch = torch_cuda_median(lambda: build(n), repeats)
        written = 2 * n * dim * 4
        bw_k, bw_copy = written / t_k / 1e9, 2 * written / t_copy / 1e9  # copy reads and writes
        res["rows"].append({"case": case, "ms": {"kernel": t_k * 1e3, "torch": t_torch * 1e3, "copy": t_copy * 1e3}})
        progress.echo(f"{n:>9d} x {dim:<4d} {t_k * 1e3:10.3f} {t_torch * 1e3:9.3f} {t_copy * 1e3:8.3f} "
                      f"{bw_k:11.1f} {bw_copy:9.1f}  {t_torch / t_k:11.2f}x {written / t_k / (written / t_copy):10.2f}")
    return res
