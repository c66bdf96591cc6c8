"""What the torch path costs per call over the NumPy path (issue 15): decode-sized ``RotaryEmbedding.apply``
and cache hits, with torch CPU tensors vs NumPy arrays of the same values, in one process.

    python benchmarks/bench_interop.py [--repeats N]

Each figure is the median over ``--repeats`` rounds of the mean time of 2000 back-to-back calls; the two paths
alternate round by round, so machine noise hits both alike. The last row times, alone, the five torch calls
every torch decode call makes (``Tensor.numpy()`` for q, k and the offsets, ``torch.from_numpy`` for the two
results): the floor of the torch path's overhead with torch's Python API.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import ropeflow  # noqa: E402
from ropeflow.bench._common import describe_cpu  # noqa: E402


def per_call(fn, calls: int = 2000) -> float:
    start = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - start) / calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeats", type=int, default=15)
    args = parser.parse_args()
    import torch

    torch.set_num_threads(1)
    print(f"# {describe_cpu()}, torch {torch.__version__}, ropeflow {ropeflow.__version__}")
    rope = ropeflow.RotaryEmbedding(128, 8192, 500000.0)
    rope.cos_sin(8192)
    print("| work | numpy (us) | torch (us) | torch - numpy (us) |")
    print("|---|---|---|---|")
    for n_seqs in (1, 8, 64):
        qn = np.random.default_rng(0).standard_normal((n_seqs, 32, 1, 128)).astype(np.float32)
        kn = np.random.default_rng(1).standard_normal((n_seqs, 8, 1, 128)).astype(np.float32)
        offn = np.arange(n_seqs, dtype=np.int64) * 7 + 100
        qt, kt, offt = torch.from_numpy(qn), torch.from_numpy(kn), torch.from_numpy(offn)
        cases = {
            f"apply(q, k, offset=(B,)) decode, {n_seqs} seq x 32/8 heads": (
                lambda: rope.apply(qn, kn, offset=offn), lambda: rope.apply(qt, kt, offset=offt)),
        }
        if n_seqs == 8:
            idn = offn[:, None].copy()
            idt = torch.from_numpy(idn)
            cases[f"apply(q, k, position_ids (B, 1)) decode, {n_seqs} seq"] = (
                lambda: rope.apply(qn, kn, idn), lambda: rope.apply(qt, kt, idt))
            cases["in place, out=(q, k), offset int, 8 seq"] = (
                lambda: rope.apply(qn, kn, offset=100, out=(qn, kn)),
                lambda: rope.apply(qt, kt, offset=100, out=(qt, kt)))
            cases["cache hit rope(x)"] = (lambda: rope(qn), lambda: rope(qt))
            outs = rope.apply(qn, kn, offset=offn)
            cases["torch conversions alone: 3x numpy(), 2x from_numpy (numpy column: nothing)"] = (
                lambda: None, lambda: (qt.numpy(), kt.numpy(), offt.numpy(), torch.from_numpy(outs[0]),
                                       torch.from_numpy(outs[1])))
        for name, (f_np, f_t) in cases.items():
            f_np(), f_t()
            a, b = [], []
            for _ in range(args.repeats):
                a.append(per_call(f_np))
                b.append(per_call(f_t))
            ma, mb = statistics.median(a) * 1e6, statistics.median(b) * 1e6
            print(f"| {name} | {ma:.2f} | {mb:.2f} | {mb - ma:+.2f} |")


if __name__ == "__main__":
    main()
