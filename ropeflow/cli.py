"""Command line: ``ropeflow demo | backends | tables``."""

from __future__ import annotations

import argparse
import platform
import sys
import time
from collections.abc import Sequence

import numpy as np

from . import __version__
from .backends import available_backends
from .rotary import RotaryEmbedding


def _build_seconds(backend: str, dim: int, base: float, seq_len: int, repeats: int = 3
                   ) -> tuple[float, np.ndarray, np.ndarray]:
    """Best wall time of ``repeats`` cold builds of ``seq_len`` rows, and the tables.

    Each build uses a new instance; the previous one (and with it the shared table) is freed first, so
    every build starts from nothing, allocation included.
    """
    best = float("inf")
    for _ in range(repeats):
        rope = RotaryEmbedding(dim, seq_len, base, backend=backend)
        start = time.perf_counter()
        cos, sin = rope.cos_sin(seq_len, "float32")
        if backend == "cupy":
            import cupy

            cupy.cuda.Device().synchronize()
        best = min(best, time.perf_counter() - start)
        if backend == "cupy":
            cos, sin = cupy.asnumpy(cos), cupy.asnumpy(sin)
        cos, sin = np.array(cos), np.array(sin)
        del rope
    return best, cos, sin


def demo(seq_len: int = 163840, dim: int = 64, base: float = 10000.0) -> int:
    """Build the DeepSeek-V3-sized standard table on every available backend; print agreement and time."""
    backends = available_backends()
    print(f"ropeflow {__version__} on {platform.machine()} / Python {platform.python_version()}")
    print(f"available backends: {', '.join(backends)}")
    print(f"standard RoPE table: {seq_len} positions x dim {dim}, base {base:g}, float32, reference precision\n")
    results = {}
    for name in backends:
        RotaryEmbedding(dim, seq_len, base, backend=name).cos_sin(seq_len)  # warm-up: compile, first touch
        results[name] = _build_seconds(name, dim, base, seq_len)
    ref_cos, ref_sin = results["numpy"][1], results["numpy"][2]
    print("best of 3 cold builds (allocation included)")
    print(f"{'backend':8s} {'build ms':>10s} {'vs numpy':>9s} {'max |cos-ref|':>14s} {'max |sin-ref|':>14s}")
    for name, (elapsed, cos, sin) in results.items():
        speedup = results["numpy"][0] / elapsed
        print(f"{name:8s} {elapsed * 1e3:10.2f} {speedup:8.2f}x {np.abs(cos - ref_cos).max():14.3e} "
              f"{np.abs(sin - ref_sin).max():14.3e}")
    exact = RotaryEmbedding(dim, seq_len, base, precision="exact")
    e_cos, _ = exact.cos_sin(seq_len, "float64")
    p = np.arange(seq_len, dtype=np.float64)[:, None]
    truth = np.cos(p * base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim))
    print(f"\nreference precision (float32 angles) vs float64 truth: max error "
          f"{np.abs(ref_cos[:, : dim // 2] - truth).max():.2e}")
    print(f"exact precision (float64 angles) vs float64 truth:     max error "
          f"{np.abs(e_cos[:, : dim // 2] - truth).max():.2e}")
    worst = max(np.abs(results[n][1] - ref_cos).max() for n in results)
    ok = worst <= 4 * 2.0**-24
    print(f"\nbackends agree within 4 float32 ulps of 1.0: {'yes' if ok else 'NO'}")
    return 0 if ok else 1


def tables(seq_len: int, dim: int, base: float, rows: int) -> int:
    rope = RotaryEmbedding(dim, max(seq_len, 1), base)
    cos, sin = rope.cos_sin(seq_len)
    np.set_printoptions(precision=6, suppress=True, linewidth=120)
    print(f"cos[:{rows}, :8] =\n{np.asarray(cos)[:rows, :8]}\nsin[:{rows}, :8] =\n{np.asarray(sin)[:rows, :8]}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="ropeflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    p_demo = sub.add_parser("demo", help="build a DeepSeek-V3-sized table on every backend, compare and time")
    p_demo.add_argument("--seq-len", type=int, default=163840)
    p_demo.add_argument("--dim", type=int, default=64)
    sub.add_parser("backends", help="list the backends that work here")
    p_tab = sub.add_parser("tables", help="print the first rows of a standard table")
    p_tab.add_argument("--seq-len", type=int, default=16)
    p_tab.add_argument("--dim", type=int, default=64)
    p_tab.add_argument("--base", type=float, default=10000.0)
    p_tab.add_argument("--rows", type=int, default=4)
    args = parser.parse_args(argv)
    if args.command == "demo":
        return demo(args.seq_len, args.dim)
    if args.command == "backends":
        print("\n".join(available_backends()))
        return 0
    return tables(args.seq_len, args.dim, args.base, args.rows)


if __name__ == "__main__":
    sys.exit(main())
