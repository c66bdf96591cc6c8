"""Table-build benchmark: ropeflow backends vs the seed's PyTorch code, with ratios measured in one run.

    python benchmarks/bench_tables.py                  # CPU: numpy, numba, torch (if installed), memory floor
    python benchmarks/bench_tables.py --backend cupy   # GPU: RawKernel vs torch on CUDA vs a D2D copy

CPU timings are the best of ``--repeats`` cold builds (a new instance each time, allocation included).
GPU timings use CUDA events after a warm-up and report the median of ``--repeats`` (>= 20) runs.
Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests"), str(_ROOT / "benchmarks")]

from _common import best_of, cupy_median, describe_cpu, run, torch_cuda_median  # noqa: E402

import ropeflow  # noqa: E402

CPU_SIZES = [(4096, 64), (32768, 64), (131072, 64), (131072, 128)]
GPU_SIZES = [(4096, 64), (163840, 64), (131072, 128), (1048576, 128)]


def ropeflow_build(backend: str, n: int, dim: int, precision: str = "reference"):
    def run():
        rope = ropeflow.RotaryEmbedding(dim, n, 10000.0, backend=backend, precision=precision)
        rope.cos_sin(n, "float32")

    return run


def memory_floor(n: int, dim: int):
    def run():
        np.empty((n, dim), np.float32).fill(1.0)
        np.empty((n, dim), np.float32).fill(1.0)

    return run


def cpu_main(repeats: int) -> None:
    try:
        import torch
        from torch_reference import DeepseekV3RotaryEmbedding
    except ImportError:
        torch = None
    import numba

    print(f"machine: {describe_cpu()}, numba {numba.__version__}"
          + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)" if torch else ", torch absent"))
    print(f"best of {repeats}, float32, built from nothing (allocation included); ratios = torch time / time\n")
    for b in ("numpy", "numba"):  # JIT warm-up
        ropeflow_build(b, 16, 64)()
    header = f"{'size':>14s} {'torch ms':>9s} {'numpy ms':>9s} {'numba ms':>9s} {'exact ms':>9s} {'floor ms':>9s}"
    print(header + "   numba/torch  numba/numpy  numba/floor  exact/ref")
    for n, dim in CPU_SIZES:
        t_torch = float("nan")
        if torch is not None:
            ref = DeepseekV3RotaryEmbedding(dim, 16, 10000.0)
            t_torch = best_of(lambda: ref._set_cos_sin_cache(n, "cpu", torch.float32), repeats)
        t_np = best_of(ropeflow_build("numpy", n, dim), repeats)
        t_nb = best_of(ropeflow_build("numba", n, dim), repeats)
        t_ex = best_of(ropeflow_build("numba", n, dim, "exact"), repeats)
        t_fl = best_of(memory_floor(n, dim), repeats)
        print(f"{n:>8d} x {dim:<3d} {t_torch * 1e3:9.2f} {t_np * 1e3:9.2f} {t_nb * 1e3:9.2f} {t_ex * 1e3:9.2f} "
              f"{t_fl * 1e3:9.2f}   {t_torch / t_nb:10.2f}x {t_np / t_nb:11.2f}x {t_nb / t_fl:11.2f}x "
              f"{t_ex / t_nb:9.2f}x")

    rope = ropeflow.RotaryEmbedding(64, 8192, 10000.0)
    rope.cos_sin(8192)
    hits = 100000
    start = time.perf_counter()
    for _ in range(hits):
        rope.cos_sin(4096)
    hit = (time.perf_counter() - start) / hits
    x = np.zeros((1, 1, 4096, 64), np.float32)
    start = time.perf_counter()
    for _ in range(hits):
        rope(x)
    hit_x = (time.perf_counter() - start) / hits
    print(f"\ncache hit: cos_sin(4096) {hit * 1e6:.2f} us, rope(x) {hit_x * 1e6:.2f} us")

    def decode():
        r = ropeflow.RotaryEmbedding(64, 8192, 10000.0)
        for n in range(1, 8193):
            r.cos_sin(n)

    t_decode = best_of(decode, 5)
    t_build = best_of(ropeflow_build("numba", 8192, 64), 5)
    budget = 2 * (t_build + 8192 * hit)
    print(f"decode loop 1..8192: {t_decode * 1e3:.2f} ms; one 8192-row build {t_build * 1e3:.2f} ms + 8192 hits "
          f"{8192 * hit * 1e3:.2f} ms; ratio to that {t_decode / (t_build + 8192 * hit):.2f}x (target <= 2x, "
          f"budget {budget * 1e3:.2f} ms)")

    code = "import time; t=time.perf_counter(); import ropeflow; print(time.perf_counter()-t)"
    imports = [float(subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                    check=True).stdout) for _ in range(5)]
    first = ("import time, ropeflow; r = ropeflow.RotaryEmbedding(64, backend='numba'); t=time.perf_counter(); "
             "r.cos_sin(4096); print(time.perf_counter()-t)")
    subprocess.run([sys.executable, "-c", first], capture_output=True, check=True)  # warm the on-disk cache
    firsts = [float(subprocess.run([sys.executable, "-c", first], capture_output=True, text=True,
                                   check=True).stdout) for _ in range(3)]
    print(f"import ropeflow: {min(imports) * 1e3:.0f} ms (best of 5 processes); first numba call in a new "
          f"process with a warm cache: {min(firsts) * 1e3:.0f} ms (best of 3)")


def gpu_main(repeats: int) -> None:
    import cupy

    try:
        import torch
        from torch_reference import DeepseekV3RotaryEmbedding

        torch_cuda = torch.cuda.is_available()
    except ImportError:
        torch, torch_cuda = None, False
    dev = cupy.cuda.Device()
    props = cupy.cuda.runtime.getDeviceProperties(dev.id)
    print(f"device: {props['name'].decode()}, driver {cupy.cuda.runtime.driverGetVersion()}, runtime "
          f"{cupy.cuda.runtime.runtimeGetVersion()}, cupy {cupy.__version__}"
          + (f", torch {torch.__version__}" if torch else ""))
    print(f"median of {repeats} after warm-up, CUDA events; bandwidth = bytes written / time\n")

    from ropeflow.backends import get_backend
    from ropeflow.scaling import compute_frequencies

    impl = get_backend("cupy")
    print(f"{'size':>16s} {'kernel ms':>10s} {'torch ms':>9s} {'copy ms':>8s} {'kernel GB/s':>11s} {'copy GB/s':>9s}"
          "  torch/kernel  write/copy")
    for n, dim in GPU_SIZES:
        freqs = compute_frequencies(None, dim, 10000.0, n, "reference")
        prepared = impl.prepare(freqs, dev.id)
        cos = cupy.empty((n, dim), cupy.float32)
        sin = cupy.empty((n, dim), cupy.float32)
        t_k = cupy_median(lambda: impl.build_rows(prepared, 0, cos, sin))
        src = cupy.ones((n, dim), cupy.float32)
        dst = cupy.empty_like(src)
        src2, dst2 = src.copy(), cupy.empty_like(src)
        t_copy = cupy_median(lambda: (dst.__setitem__(Ellipsis, src), dst2.__setitem__(Ellipsis, src2)))
        t_torch = float("nan")
        if torch_cuda:
            ref = DeepseekV3RotaryEmbedding(dim, 16, 10000.0, device="cuda")

            t_torch = torch_cuda_median(lambda: ref._set_cos_sin_cache(n, "cuda", torch.float32), repeats)
        written = 2 * n * dim * 4
        bw_k, bw_copy = written / t_k / 1e9, 2 * written / t_copy / 1e9  # copy reads and writes
        print(f"{n:>9d} x {dim:<4d} {t_k * 1e3:10.3f} {t_torch * 1e3:9.3f} {t_copy * 1e3:8.3f} {bw_k:11.1f} "
              f"{bw_copy:9.1f}  {t_torch / t_k:11.2f}x {written / t_k / (written / t_copy):10.2f}")


if __name__ == "__main__":
    run(__doc__, cpu_main, gpu_main)
