"""Figures for ``ropeflow plot`` and ``ropeflow bench --plot``: matplotlib is imported here, lazily.

matplotlib comes with the ``plot`` extra (``pip install 'ropeflow[plot]'``); without it the functions raise
:class:`PlotUnavailableError` with that hint.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np

from ._inspect import _contexts, spectrum
from .rotary import RotaryEmbedding
from .scaling import compute_frequencies

#: The output formats ``plot`` writes, by file extension.
FORMATS = ("png", "svg", "pdf")
#: One float32 ulp of values in [0.5, 1): the bound exact precision meets.
ULP32 = 2.0**-24


class PlotUnavailableError(ImportError):
    """matplotlib is not installed: the message says to install the ``plot`` extra."""


def _pyplot() -> Any:
    try:
        import matplotlib
    except ImportError:
        raise PlotUnavailableError(
            "plotting needs matplotlib, which is not installed: pip install 'ropeflow[plot]'"
        ) from None
    matplotlib.use("Agg")  # files only, no display needed
    import matplotlib.pyplot as plt

    return plt


def check_output(path: str, option: str = "-o/--output") -> str:
    """The format of output ``path`` from its extension; ``ValueError`` naming ``option`` (the command-line
    option that gave the path) and the allowed formats otherwise."""
    ext = path.rsplit(".", 1)[-1].lower() if "." in path.rsplit("/", 1)[-1] else ""
    if ext not in FORMATS:
        raise ValueError(f"{option}: unknown image format {ext or '(none)'!r} in {path!r}; allowed: "
                         f"{', '.join('.' + f for f in FORMATS)}")
    return ext


def precision_error(rope: RotaryEmbedding, seq_len: int, bins: int = 160, chunk: int = 8192
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Error against position of float32 tables in reference and in exact precision.

    The truth is ``attention_scaling * cos(p / position_divisor * inv_freq[j])`` in float64 from the exact
    (float64) frequencies of the config. Returns ``(positions, reference_error, exact_error)``: the largest
    ``|cos - truth|`` over all frequencies and over the positions of each of ``bins`` log-spaced bins, the
    positions being each bin's upper end. Works in chunks of ``chunk`` rows.
    """
    kwargs = dict(backend="numpy")
    cfg = rope.scaling
    ref = RotaryEmbedding(rope.dim, rope.max_position_embeddings, rope.base, scaling=cfg, precision="reference",
                          **kwargs)
    exact = RotaryEmbedding(rope.dim, rope.max_position_embeddings, rope.base, scaling=cfg, precision="exact",
                            **kwargs)
    c_ref, _ = ref.cos_sin(seq_len, "float32")
    c_ex, _ = exact.cos_sin(seq_len, "float32")
    truth_freqs = compute_frequencies(cfg, rope.dim, rope.base, rope.max_position_embeddings, "exact", seq_len)
    inv = np.asarray(truth_freqs.inv_freq, np.float64)
    half = rope.dim // 2
    err_ref = np.empty(seq_len)
    err_ex = np.empty(seq_len)
    for start in range(0, seq_len, chunk):
        stop = min(seq_len, start + chunk)
        p = np.arange(start, stop, dtype=np.float64)[:, None] / truth_freqs.position_divisor
        truth = truth_freqs.attention_scaling * np.cos(p * inv)
        err_ref[start:stop] = np.abs(np.asarray(c_ref[start:stop, :half], np.float64) - truth).max(axis=1)
        err_ex[start:stop] = np.abs(np.asarray(c_ex[start:stop, :half], np.float64) - truth).max(axis=1)
    edges = np.unique(np.geomspace(1, seq_len, bins + 1).astype(np.int64))
    edges[0] = 0
    ref_b = np.maximum.reduceat(err_ref, edges[:-1])
    ex_b = np.maximum.reduceat(err_ex, edges[:-1])
    return edges[1:], ref_b, ex_b


def plot_configs(ropes: Sequence[tuple[str, RotaryEmbedding]], output: str, *, error: bool = False,
                 error_positions: int | None = None, title: str | None = None,
                 progress: Callable[[str], None] | None = None) -> str:
    """Write the spectrum figure of ``ropes`` (label, embedding) to ``output`` and return its path.

    Panels: wavelength per frequency (log scale; dotted lines at each original context), the stretch each
    scaling applies to each wavelength, and with ``error=True`` the error against position of float32 tables
    in reference vs exact precision, up to ``error_positions`` (default: each config's extended context, at
    most 2**18).
    """
    fmt = check_output(output)
    plt = _pyplot()
    panels = 3 if error else 2
    fig, axes = plt.subplots(1, panels, figsize=(5.2 * panels, 4.2), layout="constrained")
    colors = plt.rcParams["axes.prop_cycle"].by_key()["color"]
    for i, (label, rope) in enumerate(ropes):
        color = colors[i % len(colors)]
        wavelength, stretch = spectrum(rope)
        x = np.arange(wavelength.size) * 2 / rope.dim  # 2j / dim: configs of different dims line up
        rope_type = "default" if rope.scaling is None else rope.scaling.rope_type
        axes[0].plot(x, wavelength, color=color, label=f"{label} ({rope_type}, dim {rope.dim})")
        original = _contexts(rope)[0]
        axes[0].axhline(original, color=color, linestyle=":", linewidth=1)
        axes[1].plot(x, stretch, color=color, label=label)
        if error:
            n = error_positions or min(_contexts(rope)[2], 2**18)
            if progress is not None:
                progress(f"error against position for {label}: {n} positions")
            try:
                pos, e_ref, e_ex = precision_error(rope, n)
            except ValueError as exc:  # a config reference precision cannot hold: say which, and what to do
                raise ValueError(f"--error: {label} has no reference-precision tables to compare ({exc}); plot it "
                                 "without --error") from None
            axes[2].loglog(pos, np.maximum(e_ref, 1e-12), color=color, label=f"{label} reference")
            axes[2].loglog(pos, np.maximum(e_ex, 1e-12), color=color, linestyle="--", label=f"{label} exact")
    axes[0].set_yscale("log")
    axes[0].set_xlabel("frequency index 2j / dim")
    axes[0].set_ylabel("wavelength 2π / inv_freq (positions)")
    axes[0].set_title("wavelength per frequency (dotted: original context)")
    axes[0].legend(fontsize=8)
    axes[1].set_yscale("log")
    axes[1].set_xlabel("frequency index 2j / dim")
    axes[1].set_ylabel("scaled / unscaled wavelength")
    axes[1].set_title("how the scaling stretches each wavelength")
    axes[1].legend(fontsize=8)
    if error:
        axes[2].axhline(ULP32, color="gray", linewidth=1, linestyle=":")
        axes[2].annotate("2**-24", (1, ULP32), xytext=(2, 3), textcoords="offset points", fontsize=8,
                         color="gray")
        axes[2].set_xlabel("position")
        axes[2].set_ylabel("max |cos - float64 truth|, float32 tables")
        axes[2].set_title("reference (solid) vs exact (dashed) precision")
        axes[2].legend(fontsize=7)
    if title:
        fig.suptitle(title)
    fig.savefig(output, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)
    return output


def plot_bench(results: dict[str, Any], output: str) -> str:
    """Write a bar chart of ``ropeflow bench`` results (``{"tables": {...}, "apply": {...}}``) to ``output``."""
    fmt = check_output(output, "--plot")
    plt = _pyplot()
    suites = [s for s in ("tables", "apply") if s in results]
    if not suites:
        raise ValueError("results: nothing to plot (no tables or apply results)")
    fig, axes = plt.subplots(1, len(suites), figsize=(6.5 * len(suites), 4.4), layout="constrained", squeeze=False)
    for ax, suite in zip(axes[0], suites, strict=True):
        rows = results[suite]["rows"]
        columns = results[suite]["columns"]
        width = 0.8 / len(columns)
        for k, col in enumerate(columns):
            values = [r["ms"].get(col, math.nan) for r in rows]
            ax.bar(np.arange(len(rows)) + (k - (len(columns) - 1) / 2) * width, values, width, label=col)
        ax.set_xticks(np.arange(len(rows)), [r["case"] for r in rows], rotation=15, fontsize=8)
        ax.set_yscale("log")
        ax.set_ylabel("ms (lower is better)")
        ax.set_title(results[suite]["title"], fontsize=10)
        ax.legend(fontsize=8)
    machine = results.get("machine")
    if machine:
        when = f"{results['when']}, load average {results.get('load_average_before')}, " if "when" in results else ""
        fig.suptitle(f"ropeflow bench: {when}{machine}", fontsize=8)
    fig.savefig(output, format=fmt, dpi=110, metadata={"Date": None} if fmt == "svg" else None)
    plt.close(fig)
    return output
