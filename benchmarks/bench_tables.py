"""Table-build benchmark: ropeflow backends vs the seed's PyTorch code, with ratios measured in one run.

    python benchmarks/bench_tables.py                  # CPU: numpy, numba, torch (if installed), memory floor
    python benchmarks/bench_tables.py --backend cupy   # GPU: RawKernel vs torch on CUDA vs a D2D copy

CPU timings are the best of ``--repeats`` cold builds (a new instance each time, allocation included).
GPU timings use CUDA events after a warm-up and report the median of ``--repeats`` (>= 20) runs.
Not a test: nothing here asserts a timing. The code lives in ``ropeflow.bench.tables`` (``ropeflow bench``).
"""

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from ropeflow.bench import script_main  # noqa: E402

if __name__ == "__main__":
    script_main("tables", __doc__)
