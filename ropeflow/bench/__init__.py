"""Benchmarks shipped with the package: ``ropeflow bench`` and the ``benchmarks/`` scripts run these.

Two suites, each with a CPU and a GPU (CuPy) form:

* ``tables``: building cos/sin tables from nothing, against the seed's PyTorch code and the memory floor;
* ``apply``: rotating q and k, against the seed's ``apply_rotary_pos_emb`` and a plain copy.

Ratios are measured within one run. Nothing here asserts a timing. torch is optional: without it the
PyTorch columns read ``nan``.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Sequence
from typing import Any

from . import apply, tables
from ._progress import Progress

SUITES = {"tables": tables, "apply": apply}
#: ``cpu``: the host backends (numpy, numba) with torch and the memory floor; ``cupy``: the CUDA kernels.
TARGETS = ("cpu", "cupy")


def default_repeats(backend: str, quick: bool) -> int:
    """Best of 7 on the CPU (3 quick), median of 30 on the GPU (10 quick)."""
    if backend == "cupy":
        return 10 if quick else 30
    return 3 if quick else 7


def check_target(backend: str) -> None:
    """``ValueError`` naming ``--backend`` when ``backend`` is unknown or cannot run here."""
    if backend not in TARGETS:
        raise ValueError(f"--backend: unknown benchmark target {backend!r}; allowed: {', '.join(TARGETS)}")
    if backend == "cupy":
        from ropeflow.backends import available_backends

        if "cupy" not in available_backends():
            raise ValueError("--backend: cupy cannot run here (no usable GPU, or CuPy missing: pip install "
                             "'ropeflow[cuda12]' or 'ropeflow[cuda13]')")


def run(suites: Sequence[str] = ("tables", "apply"), backend: str = "cpu", *, quick: bool = False,
        repeats: int | None = None, progress: bool | None = None) -> dict[str, Any]:
    """Run ``suites`` on ``backend`` (``"cpu"`` or ``"cupy"``), print their tables, return the results.

    repeats: timings per measurement (default :func:`default_repeats`).
    progress: draw a progress bar on stderr (``None``: when stderr is a terminal; shown after 1 s).
    Returns ``{"tables": {...}, "apply": {...}, "machine": str}``; each suite holds ``title``, ``columns``,
    ``rows`` (``{"case", "ms": {column: milliseconds}}``) and ``notes``.
    """
    check_target(backend)
    for s in suites:
        if s not in SUITES:
            raise ValueError(f"suite: unknown benchmark {s!r}; allowed: {', '.join(SUITES)}")
    if repeats is not None and repeats < 1:
        raise ValueError(f"--repeats: must be >= 1, got {repeats}")
    n = repeats or default_repeats(backend, quick)
    gpu = backend == "cupy"
    total = sum(SUITES[s].gpu_steps(quick) if gpu else SUITES[s].cpu_steps(quick) for s in suites)
    bar = Progress(total, enabled=progress)
    results: dict[str, Any] = {"when": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                               "load_average_before": _load()}
    try:
        for i, s in enumerate(suites):
            if i:
                bar.echo("")
            bar.echo(f"== {s} ({'quick' if quick else 'full'}, {backend}) ==")
            module = SUITES[s]
            results[s] = (module.gpu_main if gpu else module.cpu_main)(n, quick, bar)
    finally:
        bar.close()
    results["load_average_after"] = _load()
    results["machine"] = next(iter(r["machine"] for k, r in results.items() if k in SUITES))
    bar.echo(f"\n{results['when']}; 1-minute load average {results['load_average_before']} before, "
             f"{results['load_average_after']} after ({os.cpu_count()} cores)")
    return results


def _load() -> float | None:
    """The 1-minute load average (None where the OS has none): how busy the machine was."""
    try:
        return round(os.getloadavg()[0], 2)
    except (AttributeError, OSError):
        return None


def script_main(suite: str, doc: str, argv: Sequence[str] | None = None) -> None:
    """The command line of the ``benchmarks/`` scripts: ``--backend cpu|cupy``, ``--repeats N``, ``--quick``,
    ``--json FILE``."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--backend", choices=TARGETS, default="cpu")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timings per measurement (default: best of 7 on the CPU, median of 30 on the GPU)")
    parser.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats")
    parser.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    args = parser.parse_args(argv)
    try:
        results = run([suite], args.backend, quick=args.quick, repeats=args.repeats)
    except ValueError as exc:
        parser.error(str(exc))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)


__all__ = ["Progress", "SUITES", "TARGETS", "default_repeats", "run", "script_main"]
