"""Timers and the machine description shared by the benchmarks. Nothing here asserts a timing."""

from __future__ import annotations

import gc
import os
import platform
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np


def describe_cpu() -> str:
    """CPU model, core count and the Python / NumPy versions, in one line."""
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, numpy {np.__version__}"


def best_of(fn: Callable[[], object], repeats: int, warmup: bool = False) -> float:
    """The best wall time of ``repeats`` calls, in seconds (garbage collected before each)."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        gc.collect()
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def cupy_median(fn: Callable[[], object], repeats: int) -> float:
    """The median of ``repeats`` calls timed with CUDA events after one warm-up call, in seconds."""
    import cupy

    fn()
    cupy.cuda.Device().synchronize()
    times = []
    for _ in range(repeats):
        start, stop = cupy.cuda.Event(), cupy.cuda.Event()
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(cupy.cuda.get_elapsed_time(start, stop) / 1e3)
    return statistics.median(times)


def torch_cuda_median(fn: Callable[[], object], repeats: int) -> float:
    """As :func:`cupy_median`, with PyTorch's CUDA events (for the PyTorch reference on the GPU)."""
    import torch

    fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(repeats):
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop) / 1e3)
    return statistics.median(times)


def optional_torch() -> tuple[Any, Any]:
    """``(torch, ropeflow.bench._seed)`` when torch is installed, else ``(None, None)``."""
    try:
        import torch

        from . import _seed
    except ImportError:
        return None, None
    return torch, _seed


def result(title: str, columns: list[str], machine: str) -> dict[str, Any]:
    """An empty results record: rows are ``{"case": str, "ms": {column: float}}``."""
    return {"title": title, "columns": columns, "machine": machine, "rows": [], "notes": {}}
