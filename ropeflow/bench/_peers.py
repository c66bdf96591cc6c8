"""Other libraries' CPU RoPE kernels for the rotation benchmark: MLX's ``mx.fast.rope`` and ggml's rope.

Each peer is a function taking no arguments that returns ``None`` when the library is not installed (or does
not load here) and otherwise a *preparer*: ``prepare(q, k, offsets, seq_axis, base)`` with numpy q and k as
the benchmark holds them (``(B, H, S, D)`` for ``seq_axis=-2``, ``(B, S, H, D)`` for ``seq_axis=-3``),
per-sequence ``offsets`` of shape ``(B,)`` and the frequency base. It copies the inputs into the library once
and returns a :class:`Prepared` whose ``run`` is the call to time; a preparer raises :class:`Unsupported`
for a dtype or layout the library cannot rotate. Both use the "half" (GPT-NeoX, ``rotate_half``) form over
the whole head dimension, positions ``offset + arange(S)``, no scaling.

Nothing is imported before a peer function is called: ``import ropeflow`` never loads MLX or ggml.
:func:`mismatch` checks a peer's outputs against ropeflow's before anything is timed.
"""

from __future__ import annotations

import ctypes
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np


class Unsupported(Exception):
    """The peer cannot rotate this case (dtype or layout); the benchmark leaves its cell empty."""


@dataclass
class Prepared:
    """One peer set up for one case.

    run: the timed call; rotates q and k and waits for the results.
    outputs: ``(q_rot, k_rot)`` of the last ``run`` as numpy arrays shaped and ordered as the inputs, in their
        dtype.
    close: frees what the peer allocated outside Python's reach (ggml's context).
    note: how the peer was driven, for the report.
    """

    run: Callable[[], object]
    outputs: Callable[[], tuple[np.ndarray, np.ndarray]]
    close: Callable[[], None] = field(default=lambda: None)
    note: str = ""


Preparer = Callable[[np.ndarray, np.ndarray, np.ndarray, int, float], Prepared]


def _dtype_name(a: np.ndarray) -> str:
    return "bfloat16" if a.dtype.name == "bfloat16" else a.dtype.name


def _bfloat16() -> np.dtype:
    import ml_dtypes

    return np.dtype(ml_dtypes.bfloat16)


# ----------------------------------------------------------------------------------------------------- MLX
def mlx() -> Preparer | None:
    """MLX's ``mx.fast.rope`` on its CPU device (``traditional=False``: the half form), or None without MLX."""
    try:
        import mlx.core as mx
    except Exception:  # ImportError, or a build whose native library does not load on this machine
        return None

    dtypes = {"float32": mx.float32, "float16": mx.float16, "bfloat16": mx.bfloat16}

    def prepare(q: np.ndarray, k: np.ndarray, offsets: np.ndarray, seq_axis: int, base: float) -> Prepared:
        name = _dtype_name(q)
        if name not in dtypes:
            raise Unsupported(f"mlx: no {name}")
        token_major = seq_axis == -3
        d = q.shape[-1]
        offsets = np.asarray(offsets)
        # mx.fast.rope takes one offset, or (MLX >= 0.2x) one per batch entry as an array
        offset: Any = int(offsets[0]) if np.all(offsets == offsets[0]) else mx.array(offsets.astype(np.int32))

        def to_mx(a: np.ndarray) -> Any:  # via float32: exact for the half types, whatever numpy dtype holds them
            return mx.array(a.astype(np.float32)).astype(dtypes[name])

        with mx.stream(mx.cpu):
            mq, mk = to_mx(q), to_mx(k)
            mx.eval(mq, mk)
        last: list[Any] = []

        def rope(x: Any) -> Any:
            if token_major:  # (B, S, H, D) -> (B, H, S, D): a view, as mlx-lm hands attention inputs to rope
                x = x.swapaxes(1, 2)
            return mx.fast.rope(x, d, traditional=False, base=base, scale=1.0, offset=offset, stream=mx.cpu)

        def run() -> None:
            out = (rope(mq), rope(mk))
            mx.eval(*out)
            last[:] = out

        def outputs() -> tuple[np.ndarray, np.ndarray]:
            res = []
            for o in last:
                a = np.array(o.astype(mx.float32), copy=True).astype(q.dtype)
                res.append(np.ascontiguousarray(a.swapaxes(1, 2)) if token_major else a)
            return res[0], res[1]

        return Prepared(run, outputs, note=f"mlx {mx.__version__} mx.fast.rope (cpu stream)"
                                           + (", swapaxes view of token-major input" if token_major else ""))

    return prepare


# ---------------------------------------------------------------------------------------------------- ggml
def ggml() -> Preparer | None:
    """ggml's rope (llama.cpp's CPU kernel, ``GGML_ROPE_TYPE_NEOX``) through ggml-python, or None without it."""
    try:
        import ggml as g
    except Exception:  # ImportError, or the shared library failed to load
        return None

    types = {"float32": (g.GGML_TYPE_F32, np.float32), "float16": (g.GGML_TYPE_F16, np.float16)}

    def prepare(q: np.ndarray, k: np.ndarray, offsets: np.ndarray, seq_axis: int, base: float,
                n_threads: int = 2) -> Prepared:
        name = _dtype_name(q)
        if name not in types:  # ggml's CPU rope aborts the process on other types: never hand it one
            raise Unsupported(f"ggml: rope on the CPU takes float32 and float16, not {name}")
        gtype, store = types[name]
        token_major = seq_axis == -3
        b, s = (q.shape[0], q.shape[1]) if token_major else (q.shape[0], q.shape[2])
        if not token_major and b > 1 and s > 1:
            # ggml reads one position per row of dimension 2 (tokens), shared by every batch entry (dim 3)
            raise Unsupported("ggml: head-major input with several sequences of several tokens")
        d = q.shape[-1]
        offsets = np.asarray(offsets, dtype=np.int64)
        positions = (offsets[:, None] + np.arange(s)[None, :]).reshape(-1).astype(np.int32)
        n_tok = positions.size

        payload = 2 * (q.nbytes + k.nbytes) // q.itemsize * np.dtype(store).itemsize + positions.nbytes
        mem = payload + 16 * g.ggml_tensor_overhead() + g.ggml_graph_overhead() + (1 << 16)
        ctx = g.ggml_init(g.ggml_init_params(mem_size=int(mem), mem_buffer=None, no_alloc=False))
        if not ctx:
            raise Unsupported(f"ggml: ggml_init could not allocate {mem} bytes")

        def view(t: Any, dtype: Any) -> np.ndarray:
            buf = (ctypes.c_char * g.ggml_nbytes(t)).from_address(g.ggml_get_data(t))
            return np.frombuffer(buf, dtype=dtype)

        def tensor(x: np.ndarray) -> Any:
            heads = x.shape[2] if token_major else x.shape[1]
            if token_major or s == 1:  # (B, S, H, D) memory = ggml ne (D, H, tokens)
                t = g.ggml_new_tensor_3d(ctx, gtype, d, heads, n_tok)
                src = t
            else:  # (1, H, S, D) memory = ne (D, S, H); rope reads it through a permuted view ne (D, H, S)
                t = g.ggml_new_tensor_3d(ctx, gtype, d, s, heads)
                src = g.ggml_permute(ctx, t, 0, 2, 1, 3)
            view(t, store)[:] = x.astype(store).reshape(-1)
            return src, heads

        tq, hq = tensor(q)
        tk, hk = tensor(k)
        tp = g.ggml_new_tensor_1d(ctx, g.GGML_TYPE_I32, n_tok)
        view(tp, np.int32)[:] = positions
        # n_dims, mode, n_ctx_orig, freq_base, freq_scale, ext_factor (0: no YaRN), attn_factor, beta_fast/slow
        args = (d, g.GGML_ROPE_TYPE_NEOX, 0, float(base), 1.0, 0.0, 1.0, 32.0, 1.0)
        oq = g.ggml_rope_ext(ctx, tq, tp, None, *args)
        ok = g.ggml_rope_ext(ctx, tk, tp, None, *args)
        graph = g.ggml_new_graph(ctx)
        g.ggml_build_forward_expand(graph, oq)
        g.ggml_build_forward_expand(graph, ok)
        # plan once and keep the work buffer, as ggml's CPU backend does; ggml_graph_compute_with_ctx would
        # carve a new work buffer out of the context on every call
        plan = g.ggml_graph_plan(graph, n_threads, None)
        work = (ctypes.c_uint8 * max(int(plan.work_size), 1))()
        plan.work_data = ctypes.cast(work, ctypes.POINTER(ctypes.c_uint8))
        plan_ref = ctypes.byref(plan)
        compute = g.ggml_graph_compute

        def run() -> None:
            if compute(graph, plan_ref) != 0:
                raise RuntimeError("ggml_graph_compute failed")

        def outputs() -> tuple[np.ndarray, np.ndarray]:
            res = []
            for o, heads in ((oq, hq), (ok, hk)):
                a = view(o, store).reshape(b, s, heads, d).astype(q.dtype)  # contiguous ne (D, H, tokens)
                res.append(a if token_major else np.ascontiguousarray(a.swapaxes(1, 2)))
            return res[0], res[1]

        state = {"ctx": ctx, "work": work}

        def close() -> None:
            if state.get("ctx"):
                g.ggml_free(state.pop("ctx"))

        return Prepared(run, outputs, close,
                        note=f"ggml-python {getattr(g, '__version__', '?')} ggml_rope_ext NEOX, {n_threads} threads")

    return prepare


PEERS: dict[str, Callable[[], Preparer | None]] = {"mlx": mlx, "ggml": ggml}


# ------------------------------------------------------------------------------------------------- checking
def tolerance(x: np.ndarray, positions: np.ndarray, base: float, seq_axis: int) -> np.ndarray:
    """How far another library's RoPE of ``x`` may stray from ropeflow's, element by element.

    Both sides evaluate the angle ``position * inv_freq`` in float32: its error grows with the angle, and a
    frequency built by repeated multiplication (ggml's ``theta *= theta_scale``) carries one rounding per
    pair index ``i``. The float32 bound is ``|pair| * eps32 * ((i + 4) * angle + 16)``, ``|pair|`` the
    length of the rotated pair ``(x[i], x[i + D/2])``. For float16 / bfloat16 add 3 units in the last place
    of the half type at ``|pair|``: a peer that computes in the half type itself (MLX; the seed's PyTorch
    code) rounds cos, sin, both products and the sum (up to 2.5 such units with ropeflow's own rounding).
    Either way the bound stays far below what a wrong base, pair order or position gives (of order
    ``|pair|``). ``x``: as rotated (``(B, H, S, D)``, or ``(B, S, H, D)`` for ``seq_axis=-3``); ``positions``:
    ``(B, S)``.
    """
    xf = x.astype(np.float64)
    if seq_axis == -3:
        xf = xf.swapaxes(1, 2)
    d = xf.shape[-1]
    half = d // 2
    i = np.arange(half)
    angle = positions[:, None, :, None].astype(np.float64) * base ** (-2.0 * i / d)
    eps = float(np.finfo(np.float32).eps)
    mag = np.hypot(xf[..., :half], xf[..., half:])
    bound = mag * eps * ((i + 4) * angle + 16)
    if x.dtype != np.float32:
        bound = bound + 3 * _ulp(mag, x.dtype)
    bound = np.concatenate([bound, bound], axis=-1)
    return bound.swapaxes(1, 2) if seq_axis == -3 else bound


def _ulp(a: np.ndarray, dtype: np.dtype) -> np.ndarray:
    """The spacing of ``dtype`` at ``|a|`` (float64 in, float64 out)."""
    if dtype.name == "bfloat16":
        mant, tiny = 7, 2.0 ** -126
    else:
        info = np.finfo(dtype)
        mant, tiny = int(info.nmant), float(info.smallest_normal)
    mag = np.maximum(np.abs(a), tiny)
    return 2.0 ** (np.floor(np.log2(mag)) - mant)


def mismatch(got: tuple[np.ndarray, np.ndarray], want: tuple[np.ndarray, np.ndarray],
             inputs: tuple[np.ndarray, np.ndarray], offsets: np.ndarray, base: float, seq_axis: int) -> str | None:
    """None when a peer's ``(q_rot, k_rot)`` agrees with ropeflow's, else why not.

    Within :func:`tolerance` everywhere, and finite.
    """
    for label, g_, w, x in zip("qk", got, want, inputs, strict=True):
        if g_.shape != w.shape:
            return f"{label}: shape {g_.shape}, expected {w.shape}"
        s = x.shape[-3] if seq_axis == -3 else x.shape[-2]
        positions = np.asarray(offsets, dtype=np.int64)[:, None] + np.arange(s)[None, :]
        gf, wf = g_.astype(np.float64), w.astype(np.float64)
        tol = tolerance(x, positions, base, seq_axis)
        err = np.abs(gf - wf)
        if not np.all(np.isfinite(gf)):
            return f"{label}: non-finite values"
        bad = err > tol
        if bad.any():
            at = np.unravel_index(int(np.argmax(err - tol)), err.shape)
            return (f"{label}: {int(bad.sum())} of {err.size} elements off, worst at {tuple(int(v) for v in at)}: "
                    f"{float(gf[at]):.6g} vs ropeflow {float(wf[at]):.6g} (|diff| {err[at]:.3g} > {tol[at]:.3g})")
    return None


__all__ = ["PEERS", "Prepared", "Unsupported", "ggml", "mismatch", "mlx", "tolerance"]
