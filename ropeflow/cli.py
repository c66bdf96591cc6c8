"""The ``ropeflow`` command line: demo, inspect, plot, bench, tables, backends.

Every subcommand documents its options with their defaults (``ropeflow <command> --help``). Bad input ends
with one line on stderr, ``ropeflow <command>: error: ...``, and exit status 2; never a traceback.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
import warnings
from collections.abc import Callable, Sequence
from importlib import metadata
from typing import Any, NoReturn

import numpy as np

from . import __version__
from ._errors import BackendUnavailableError
from .backends import BACKEND_NAMES, available_backends
from .rotary import RotaryEmbedding
from .scaling import PRECISIONS

DTYPES = ("float32", "float16", "bfloat16", "float64")
#: Errors that mean "bad input": reported in one line with exit status 2.
INPUT_ERRORS = (ValueError, TypeError, OSError, KeyError, BackendUnavailableError)

DESCRIPTION = """\
Rotary position embeddings (RoPE) on NumPy, Numba and CuPy.
Run 'ropeflow <command> --help' for the options of a command."""

EPILOG = """\
examples:
  ropeflow inspect deepseek-v3
  ropeflow inspect path/to/model/config.json --json
  ropeflow plot deepseek-v3 llama-3.1-8b -o spectrum.png --error
  ropeflow tables --preset kimi-k2 --seq-len 8 --dtype bfloat16
  ropeflow bench --quick
  ropeflow compile --jobs 2"""


class _Formatter(argparse.ArgumentDefaultsHelpFormatter):
    """Defaults shown in every option's help, except for flags and options without a default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        if action.default is None or action.default is False or isinstance(action, argparse._StoreConstAction):
            return action.help or ""
        return super()._get_help_string(action)


class _TopFormatter(_Formatter, argparse.RawDescriptionHelpFormatter):
    """As :class:`_Formatter`, keeping the line breaks of the description and the examples."""


class _Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line: ``prog: error: message (see prog --help)``."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see '{self.prog} --help')\n")


# ------------------------------------------------------------------------------------------ argument types
def _int_at_least(minimum: int, maximum: int | None = None, why: str = "") -> Callable[[str], int]:
    """An argparse type: an integer >= ``minimum`` (and <= ``maximum``, for the reason ``why``)."""
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected an integer >= {minimum}, got {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be >= {minimum}, got {value}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be <= {maximum}{why}, got {value}")
        return value

    parse.__name__ = f"integer >= {minimum}"
    return parse


def _even_dim(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive even integer, got {text!r}") from None
    if value <= 0 or value % 2:
        raise argparse.ArgumentTypeError(f"must be a positive even integer, got {value}")
    return value


def _base(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number > 1, got {text!r}") from None
    if not value > 1 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number > 1, got {text}")
    return value


# ------------------------------------------------------------------------------------------------ commands
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
    """Build the DeepSeek-V3-sized standard table on every available backend; print agreement, time and
    the accuracy of both precisions against the float64 truth, with what the figures mean."""
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
    worst = max(np.abs(results[n][1] - ref_cos).max() for n in results)
    ok = worst <= 4 * 2.0**-24
    print(f"backends agree within 4 float32 ulps of 1.0 (4 x 2**-24 = {4 * 2.0**-24:.2e}): {'yes' if ok else 'NO'}")
    print("  (|cos-ref| compares each backend with the numpy backend: same float32 angles, different sin/cos\n"
          "   routines, so they differ by a few ulps at most)\n")

    p = np.arange(seq_len, dtype=np.float64)[:, None]
    truth = np.cos(p * base ** (-np.arange(0, dim, 2, dtype=np.float64) / dim))
    err_ref = np.abs(ref_cos[:, : dim // 2] - truth)
    exact = RotaryEmbedding(dim, seq_len, base, precision="exact")
    err_e64 = np.abs(exact.cos_sin(seq_len, "float64")[0][:, : dim // 2] - truth).max()
    err_e32 = np.abs(np.asarray(exact.cos_sin(seq_len, "float32")[0], np.float64)[:, : dim // 2] - truth).max()
    at = int(np.argmax(err_ref.max(axis=1)))
    print("accuracy against the true value cos(p * base ** (-2j / dim)), computed in float64:")
    print(f"  reference precision, float32 table: max error {err_ref.max():.2e} (at position {at})")
    print(f"  exact precision,     float32 table: max error {err_e32:.2e} (bound 2**-24 = {2.0**-24:.2e})")
    print(f"  exact precision,     float64 table: differs by {err_e64:.2e} (the float64 truth's own rounding "
          "at large p)")
    print("  The reference error is the float32 reference's own drift, not a backend error: like the PyTorch\n"
          "  code it reproduces, it computes the angle p * inv_freq as a float32 product (24 significant bits),\n"
          "  so the angle's rounding error, and with it the table's, grows with the position. Every backend\n"
          "  reproduces it on purpose (precision='reference', for bit-compatibility with checkpoints trained that\n"
          "  way). precision='exact' computes angles and sin/cos in float64 and rounds once: the drift is gone.")
    return 0 if ok else 1


def _config_source(args: argparse.Namespace) -> tuple[str, dict[str, Any]] | None:
    from . import presets
    from ._inspect import resolve_target

    if args.preset is not None:
        return args.preset, presets.load(args.preset)
    if args.config is not None:
        return resolve_target(args.config)
    return None


def _layer_type_of(source: tuple[str, dict[str, Any]], chosen: str | None) -> str | None:
    """The layer type to build for a preset or config: ``chosen`` (checked by ``from_hf_config``), or None
    where the config has one rotary configuration; several and none chosen is a ValueError naming
    ``--layer-type`` and the choices."""
    from .config import layer_types

    if chosen is not None:
        return chosen
    types = layer_types(source[1])
    if len(types) > 1:
        raise ValueError(f"--layer-type: {source[0]} has a rotary configuration per layer type; pass one of "
                         f"{', '.join(types)}")
    return None


def tables(args: argparse.Namespace) -> int:
    """Print the first ``--rows`` x ``--cols`` of the cos and sin tables."""
    source = _config_source(args)
    common = dict(precision=args.precision, backend=args.backend)
    if source is not None:
        for flag, value in (("--dim", args.dim), ("--base", args.base)):
            if value is not None:
                raise ValueError(f"{flag}: cannot be combined with --preset/--config (the config sets it); "
                                 f"got {flag} {value:g}")
        layer_type = _layer_type_of(source, args.layer_type)
        rope = RotaryEmbedding.from_hf_config(source[1], layer_type=layer_type, **common)
        what = f"{source[0]}{'' if layer_type is None else f' ({layer_type})'}: " \
               f"{rope.scaling.rope_type if rope.scaling else 'default'} rope"
    elif args.layer_type is not None:
        raise ValueError(f"--layer-type: needs --preset or --config; got --layer-type {args.layer_type}")
    else:
        # the standard table does not depend on max_position_embeddings: the default, whatever --seq-len asks
        rope = RotaryEmbedding(args.dim or 64, base=args.base or 10000.0, **common)
        what = "standard rope"
    cos, sin = rope.cos_sin(args.seq_len, args.dtype)
    rows, cols = min(args.rows, args.seq_len), min(args.cols, rope.dim)

    def host(a: Any) -> np.ndarray:
        a = a[:rows, :cols]
        a = a.get() if hasattr(a, "get") else a
        return np.asarray(a).astype(np.float64)

    np.set_printoptions(precision=6, suppress=True, linewidth=120)
    print(f"{what}, dim {rope.dim}, base {rope.base:g}, {args.seq_len} positions, {args.dtype}, "
          f"{args.precision} precision, {rope.backend} backend, attention scaling {rope.attention_scaling:.6g}")
    print(f"cos[:{rows}, :{cols}] =\n{host(cos)}\nsin[:{rows}, :{cols}] =\n{host(sin)}")
    return 0


def inspect_cmd(args: argparse.Namespace) -> int:
    """Print (or emit as JSON) what a preset or config.json implies for the rotary embedding."""
    from ._inspect import format_report, reports, resolve_target

    label, config = resolve_target(args.target)
    reps = reports(label, config)
    if args.json:
        print(json.dumps([r.as_dict() for r in reps], indent=1))
    else:
        print("\n\n".join(format_report(r) for r in reps))
    return 0


def plot_cmd(args: argparse.Namespace) -> int:
    """Write the spectrum figure of the given configs."""
    from ._inspect import resolve_target
    from ._plot import check_output, plot_configs
    from .config import layer_types

    check_output(args.output)  # before any work: a wrong extension or folder fails fast
    _check_folder(args.output, "-o/--output")
    ropes = []
    for target in args.targets:
        label, config = resolve_target(target)
        types = (args.layer_type,) if args.layer_type is not None else layer_types(config)
        named = args.layer_type is not None or len(types) > 1  # one curve per layer type (Gemma 3)
        for layer_type in types:
            # exact: the spectrum is computed in float64 anyway, and --error builds both precisions itself
            rope = RotaryEmbedding.from_hf_config(config, backend="numpy", precision="exact",
                                                  layer_type=layer_type if named else None)
            ropes.append((f"{label} ({layer_type})" if named else label, rope))
    path = plot_configs(ropes, args.output, error=args.error, error_positions=args.error_positions,
                        title=args.title, progress=lambda msg: print(msg, file=sys.stderr))
    print(f"wrote {path}")
    return 0


def _check_folder(path: str, flag: str) -> None:
    """Before a long run: the folder of output ``path`` must exist and be writeable (ValueError naming
    ``flag``)."""
    import os

    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise ValueError(f"{flag}: no folder {folder!r} to write {path!r} into")
    if not os.access(folder, os.W_OK):
        raise ValueError(f"{flag}: the folder {folder!r} is not writeable")


def bench_cmd(args: argparse.Namespace) -> int:
    """Run the benchmarks; optionally save them as JSON and as a figure."""
    from . import bench

    if args.json:
        _check_folder(args.json, "--json")
    if args.plot:
        _check_folder(args.plot, "--plot")
        from ._plot import _pyplot, check_output

        check_output(args.plot, "--plot")
        _pyplot()  # fail before a long run when matplotlib is missing
    suites = list(bench.SUITES) if args.suite == "all" else [args.suite]
    results = bench.run(suites, args.backend, quick=args.quick, repeats=args.repeats, progress=args.progress)
    if args.json:
        with open(args.json, "w", encoding="utf-8") as fh:
            json.dump(results, fh, indent=1)
        print(f"\nwrote {args.json}")
    if args.plot:
        from ._plot import plot_bench

        print(f"wrote {plot_bench(results, args.plot)}")
    return 0


# ------------------------------------------------------------------------------------------------- parser
def _version() -> str:
    def v(dist: str) -> str:
        try:
            return metadata.version(dist)
        except metadata.PackageNotFoundError:
            return "absent"

    return (f"ropeflow {__version__} (Python {platform.python_version()}, numpy {np.__version__}, "
            f"numba {v('numba')})")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ropeflow`` command."""
    from . import presets

    parser = _Parser(prog="ropeflow", description=DESCRIPTION, epilog=EPILOG, formatter_class=_TopFormatter)
    parser.add_argument("--version", action="version", version=_version())
    sub = parser.add_subparsers(dest="command", required=True, metavar="command", title="commands")

    def add(name: str, help_: str, description: str) -> argparse.ArgumentParser:
        return sub.add_parser(name, help=help_, description=description, formatter_class=_Formatter)

    p = add("demo", "build a DeepSeek-V3-sized table on every backend; compare and time",
            "Build a standard RoPE table on every backend that runs here, time it, check that the backends "
            "agree, and compare reference and exact precision with the float64 truth (the figures are "
            "explained in the output).")
    p.add_argument("--seq-len", type=_int_at_least(1, 2**24, " (2**24: the demo times reference precision, whose "
                                                     "float32 positions are exact up to there)"),
                   default=163840, help="positions (rows of the table)")
    p.add_argument("--dim", type=_even_dim, default=64, help="rotary dimension (positive, even)")
    p.add_argument("--base", type=_base, default=10000.0, help="rope_theta (> 1)")

    p = add("inspect", "what a preset or config.json implies for the rotary embedding",
            "Print the rotary facts of a model config: rope type and scaling, rotary dim, base, original and "
            "extended context, attention scaling (folded into the tables), softmax-scale multiplier (applied "
            "by attention), layout, wavelengths (shortest, longest, how many exceed the original context) "
            f"and layer types. Presets: {', '.join(presets.names())}.")
    p.add_argument("target", help="a preset name, a config.json file, or a folder holding config.json")
    p.add_argument("--json", action="store_true", help="print JSON (a list of one report per layer type)")

    p = add("plot", "wavelength spectrum of configs (and error against position) to an image",
            "Draw, on one figure, the wavelength of every frequency of each config and how its scaling "
            "stretches it; with --error also the error against position of float32 tables in reference vs "
            "exact precision. Needs matplotlib: pip install 'ropeflow[plot]'.")
    p.add_argument("targets", nargs="+", metavar="target", help="preset names, config.json files or folders")
    p.add_argument("-o", "--output", required=True, help="image file: .png, .svg or .pdf")
    p.add_argument("--error", action="store_true", help="add the error-against-position panel")
    p.add_argument("--error-positions", type=_int_at_least(2, 2**24, " (2**24: the panel compares reference "
                                                                   "precision, whose float32 positions are exact "
                                                                   "up to there)"), default=None,
                   help="positions for --error (default: each config's extended context, at most 262144)")
    p.add_argument("--title", default=None, help="figure title")
    p.add_argument("--layer-type", default=None,
                   help="the layer type to draw for configs with one per layer type (default: every one)")

    p = add("bench", "table and rotation benchmarks from the installed package",
            "Time table builds and q/k rotation on this machine, against the seed's PyTorch code when torch "
            "is installed, the memory floor and a plain copy; ratios come from one run. A progress bar is "
            "drawn on stderr (on a terminal) once a run passes one second. Nothing asserts a timing.")
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (about 25 s on 2 cores)")
    p.add_argument("--backend", choices=("cpu", "cupy"), default="cpu",
                   help="cpu: numpy and numba backends (+ torch, memory floor); cupy: the CUDA kernels")
    p.add_argument("--suite", choices=("tables", "apply", "all"), default="all", help="which benchmark")
    p.add_argument("--repeats", type=_int_at_least(1), default=None,
                   help="timings per measurement (default: 7 on the CPU, 30 on the GPU; 3 and 10 with --quick)")
    p.add_argument("--json", metavar="FILE", default=None, help="also write the results as JSON")
    p.add_argument("--plot", metavar="FILE", default=None, help="also draw the results (.png, .svg or .pdf)")
    p.add_argument("--progress", action=argparse.BooleanOptionalAction, default=None,
                   help="force the progress bar on or off (default: on when stderr is a terminal)")

    p = add("tables", "print the first rows and columns of a cos/sin table",
            "Print the top-left corner of the cos and sin tables of a standard RoPE, or of a preset or "
            "config.json (which then sets the rotary dim, base and scaling).")
    p.add_argument("--seq-len", type=_int_at_least(1), default=16, help="positions to build")
    p.add_argument("--dim", type=_even_dim, default=None, help="rotary dimension (default: 64, or the config's)")
    p.add_argument("--base", type=_base, default=None, help="rope_theta (default: 10000, or the config's)")
    p.add_argument("--rows", type=_int_at_least(1), default=4, help="rows to print")
    p.add_argument("--cols", type=_int_at_least(1), default=8, help="columns to print")
    p.add_argument("--precision", choices=PRECISIONS, default="reference",
                   help="reference: the PyTorch code's float32 arithmetic; exact: float64 angles, rounded once")
    p.add_argument("--dtype", choices=DTYPES, default="float32", help="table dtype (bfloat16 needs ml_dtypes)")
    p.add_argument("--backend", choices=("auto",) + BACKEND_NAMES, default="auto", help="backend to build with")
    group = p.add_mutually_exclusive_group()
    group.add_argument("--preset", choices=presets.names(), default=None, help="a shipped model preset")
    group.add_argument("--config", default=None, help="a config.json file or a folder holding one")
    p.add_argument("--layer-type", default=None,
                   help="with --preset/--config: the layer type, for configs with one rotary setup per layer "
                        "type (e.g. gemma-3-4b-it: sliding_attention or full_attention)")

    p = add("compile", "compile the Numba kernels ahead of the first call",
            "Compile the Numba kernels that ropeflow.warmup lists (every input dtype with each table dtype it "
            "reads: serial kernels for contiguous, strided and read-only inputs, parallel ones for contiguous "
            "inputs) into Numba's on-disk cache, spread over --jobs processes, so that "
            "later processes load them instead of compiling on their first call. Run it once per install "
            "(e.g. in a container build).")
    p.add_argument("--dtype", action="append", choices=DTYPES, default=None, dest="dtypes",
                   help="an input dtype to compile for (repeat it; default: all)")
    p.add_argument("--jobs", type=_int_at_least(1), default=None,
                   help="processes compiling side by side (default: the CPUs this process may use)")

    add("backends", "list the backends that run here", "List the backends that can run on this machine.")
    return parser


def compile_cmd(args: argparse.Namespace) -> int:
    """``ropeflow compile``: :func:`ropeflow.warmup.warmup`, one line per kernel, then the wall time."""
    import os

    from .warmup import processes, warmup

    usable = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    jobs = args.jobs or usable
    start = time.perf_counter()
    results = warmup(None if args.dtypes is None else tuple(args.dtypes), jobs=jobs)
    for r in results:
        print(f"{r.seconds:7.1f} s  {r.case}")
    print(f"{len(results)} kernels ready in {time.perf_counter() - start:.1f} s "
          f"({processes(jobs, len(results))} processes)")
    return 0


def _run(args: argparse.Namespace) -> int:
    if args.command == "demo":
        return demo(args.seq_len, args.dim, args.base)
    if args.command == "backends":
        print("\n".join(available_backends()))
        return 0
    commands = {"tables": tables, "inspect": inspect_cmd, "plot": plot_cmd, "bench": bench_cmd,
                "compile": compile_cmd}
    return commands[args.command](args)


def _one_line(exc: BaseException, has_precision: bool = True) -> str:
    """The message of an input error on one line, with the command-line spelling of a suggested fix where the
    command has that option (``has_precision``: it takes ``--precision``)."""
    if isinstance(exc, OSError) and exc.filename is not None:
        text = f"{exc.strerror or exc}: {exc.filename!r}"
    elif isinstance(exc, KeyError):
        text = f"missing key {exc}"
    else:
        text = str(exc)
    text = " ".join(text.split()) or ("out of memory" if isinstance(exc, MemoryError) else type(exc).__name__)
    if "precision='exact'" in text and has_precision:
        text += " (on the command line: --precision exact)"
    return text


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line on ``argv`` (default ``sys.argv[1:]``) and return the exit status."""
    from ._plot import PlotUnavailableError

    parser = build_parser()
    args = parser.parse_args(argv)

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int, file: Any = None,
             line: str | None = None) -> None:
        print(f"ropeflow {args.command}: warning: {' '.join(str(message).split())}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show  # one line per warning, without the source line
            return _run(args)
    except BrokenPipeError:  # e.g. piped into head: stop quietly
        import os

        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 141
    except (PlotUnavailableError, MemoryError, *INPUT_ERRORS) as exc:
        print(f"ropeflow {args.command}: error: {_one_line(exc, hasattr(args, 'precision'))}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"ropeflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
