"""Rotation benchmark: ropeflow's apply (q and k) vs the seed's PyTorch apply_rotary_pos_emb, in one run.

    python benchmarks/bench_apply.py                  # CPU: numpy, numba, torch (if installed)
    python benchmarks/bench_apply.py --backend cupy   # GPU: CUDA kernel vs torch on CUDA vs a D2D copy

Shapes: prefill q, k of (1, 32, 4096, 128) and decode q, k of (8, 32, 1, 128) at per-sequence offsets;
float32 and float16; "half" layout (the seed's rotate_half form). CPU: best of ``--repeats``. GPU: median
of ``--repeats`` (>= 20) after a warm-up, CUDA events. Not a test: nothing here asserts a timing.
The code lives in ``ropeflow.bench.apply`` (``ropeflow bench``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ropeflow.bench import script_main  # noqa: E402

if __name__ == "__main__":
    script_main("apply", __doc__)
