"""Rotation benchmark: ropeflow's apply (q and k) vs the seed's PyTorch apply_rotary_pos_emb, in one run.

    python benchmarks/bench_apply.py                  # CPU: numpy, numba, torch (if installed)
    python benchmarks/bench_apply.py --backend cupy   # GPU: CUDA kernel vs torch on CUDA vs a D2D copy

Shapes: prefill q, k of (1, 32, 4096, 128) and decode q, k of (8, 32, 1, 128) at per-sequence offsets;
float32 and float16; "half" layout (the seed's rotate_half form). CPU: best of ``--repeats``. GPU: median
of ``--repeats`` (>= 20) after a warm-up, CUDA events. Not a test: nothing here asserts a timing.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

_ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(_ROOT), str(_ROOT / "tests"), str(_ROOT / "benchmarks")]

from _common import best_of, cupy_median, describe_cpu, run, torch_cuda_median  # noqa: E402

import ropeflow  # noqa: E402

CASES = [("prefill", (1, 32, 4096, 128)), ("decode", (8, 32, 1, 128))]
TABLE_LEN = 8192


def _inputs(shape, dtype, xp=np):
    rng = np.random.default_rng(0)
    q = rng.standard_normal(shape).astype(dtype)
    k = rng.standard_normal(shape).astype(dtype)
    offsets = rng.integers(0, TABLE_LEN - shape[2], shape[0])
    positions = offsets[:, None] + np.arange(shape[2])[None, :]
    return xp.asarray(q), xp.asarray(k), offsets, positions


def cpu_main(repeats):
    try:
        import torch
        from torch_reference import apply_rotary_half
    except ImportError:
        torch = None
    print(f"machine: {describe_cpu()}" + (f", torch {torch.__version__} ({torch.get_num_threads()} threads)"
                                          if torch else ", torch absent"))
    print(f"best of {repeats}; q and k rotated; ratios = other / numba\n")
    print(f"{'case':8s} {'dtype':8s} {'torch ms':>9s} {'numpy ms':>9s} {'numba ms':>9s} {'copy ms':>8s}"
          "  torch/numba  numpy/numba  numba/copy")
    for label, shape in CASES:
        for dtype in (np.float32, np.float16):
            q, k, offsets, positions = _inputs(shape, dtype)
            timings = {}
            for name in ("numpy", "numba"):
                rope = ropeflow.RotaryEmbedding(shape[-1], TABLE_LEN, backend=name)
                rope.cos_sin(TABLE_LEN)
                timings[name] = best_of(lambda: rope.apply(q, k, offset=offsets), repeats, warmup=True)
            t_torch = float("nan")
            if torch is not None:
                cos, sin = ropeflow.RotaryEmbedding(shape[-1], TABLE_LEN, backend="numpy").cos_sin(TABLE_LEN)
                tdt = torch.float32 if dtype == np.float32 else torch.float16
                tc, ts = torch.from_numpy(np.array(cos)).to(tdt), torch.from_numpy(np.array(sin)).to(tdt)
                tq, tk, tp = torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(positions)
                t_torch = best_of(lambda: (apply_rotary_half(tq, tc, ts, tp), apply_rotary_half(tk, tc, ts, tp)),
                                  repeats, warmup=True)
            t_copy = best_of(lambda: (q.copy(), k.copy()), repeats, warmup=True)
            nb = timings["numba"]
            print(f"{label:8s} {np.dtype(dtype).name:8s} {t_torch * 1e3:9.3f} {timings['numpy'] * 1e3:9.3f} "
                  f"{nb * 1e3:9.3f} {t_copy * 1e3:8.3f}  {t_torch / nb:10.2f}x {timings['numpy'] / nb:11.2f}x "
                  f"{nb / t_copy:10.2f}x")


def gpu_main(repeats):
    import cupy

    try:
        import torch
        from torch_reference import apply_rotary_half

        torch_cuda = torch.cuda.is_available()
    except ImportError:
        torch, torch_cuda = None, False
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    print(f"device: {props['name'].decode()}, cupy {cupy.__version__}" + (f", torch {torch.__version__}" if torch
                                                                          else ""))
    print(f"median of {repeats} after warm-up (CUDA events); bandwidth = bytes read + written / time\n")

    print(f"{'case':8s} {'dtype':8s} {'kernel ms':>10s} {'torch ms':>9s} {'copy ms':>8s} {'kernel GB/s':>11s}"
          f" {'copy GB/s':>9s}  torch/kernel  kernel/copy bandwidth")
    for label, shape in CASES:
        for dtype in (np.float32, np.float16):
            q, k, offsets, positions = _inputs(shape, dtype, cupy)
            rope = ropeflow.RotaryEmbedding(shape[-1], TABLE_LEN, backend="cupy")
            rope.cos_sin(TABLE_LEN)
            qo, ko = cupy.empty_like(q), cupy.empty_like(k)
            from ropeflow.apply import prepare

            cos, sin = rope.cos_sin(TABLE_LEN)
            jq = prepare(q, cos, sin, offset=cupy.asarray(offsets), out=qo, backend="cupy")
            jk = prepare(k, cos, sin, offset=cupy.asarray(offsets), out=ko, backend="cupy")
            t_k = cupy_median(lambda: jq.run(jk))
            t_copy = cupy_median(lambda: (qo.__setitem__(Ellipsis, q), ko.__setitem__(Ellipsis, k)))
            t_torch = float("nan")
            if torch_cuda:
                tdt = torch.float32 if dtype == np.float32 else torch.float16
                tc = torch.as_tensor(cupy.asnumpy(cos), device="cuda").to(tdt)
                ts = torch.as_tensor(cupy.asnumpy(sin), device="cuda").to(tdt)
                tq = torch.as_tensor(cupy.asnumpy(q), device="cuda")
                tk = torch.as_tensor(cupy.asnumpy(k), device="cuda")
                tp = torch.as_tensor(positions, device="cuda")
                t_torch = torch_cuda_median(
                    lambda: (apply_rotary_half(tq, tc, ts, tp), apply_rotary_half(tk, tc, ts, tp)), repeats)
            moved = 2 * (q.nbytes + k.nbytes)  # read and write q and k (tables are small, cached)
            print(f"{label:8s} {np.dtype(dtype).name:8s} {t_k * 1e3:10.4f} {t_torch * 1e3:9.4f} {t_copy * 1e3:8.4f} "
                  f"{moved / t_k / 1e9:11.1f} {moved / t_copy / 1e9:9.1f}  {t_torch / t_k:11.2f}x "
                  f"{t_copy / t_k:10.2f}")


if __name__ == "__main__":
    run(__doc__, cpu_main, gpu_main)
