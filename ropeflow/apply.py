"""``apply_rotary``: rotate queries/keys by their positions (DESIGN 1.4). Shapes, layouts, positions and
validation live here, once; the backends only run the kernel.

Layouts (never a boolean whose meaning flips between libraries):

* ``"half"``: GPT-NeoX / LLaMA: channel ``j`` pairs with ``j + rotary_dim // 2``.
* ``"interleaved"``: GPT-J: channels ``(2j, 2j + 1)`` pair, and the output stays interleaved.
* ``"deepseek"``: DeepSeek-V3's ``apply_rotary_pos_emb``: interleaved input is permuted to halves, then
  rotated; the output stays permuted (channel pair ``(2j, 2j + 1)`` lands in ``(j, j + rotary_dim // 2)``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _xp
from .backends import resolve

LAYOUTS = ("half", "interleaved", "deepseek")


def as_4d(a: Any, seq_axis: int, name: str) -> Any:
    """A ``(batch, heads, seq, head_dim)`` view of ``a`` (no copy)."""
    if seq_axis == -2:
        if a.ndim < 2 or a.ndim > 4:
            raise ValueError(f"{name}: expected 2 to 4 dimensions (..., seq, head_dim), got shape {tuple(a.shape)}")
        return a.reshape((1,) * (4 - a.ndim) + tuple(a.shape)) if a.ndim < 4 else a
    if a.ndim < 3 or a.ndim > 4:
        raise ValueError(
            f"{name}: with seq_axis=-3 expected 3 or 4 dimensions (..., seq, heads, head_dim), got shape "
            f"{tuple(a.shape)}"
        )
    a = a.reshape((1,) * (4 - a.ndim) + tuple(a.shape)) if a.ndim < 4 else a
    return a.transpose(0, 2, 1, 3)


def positions_of(xp: Any, position_ids: Any, offset: Any, n_batch: int, n_seq: int, table_len: int) -> Any:
    """``(batch, seq)`` int64 table rows, validated against the table length."""
    if position_ids is not None:
        if not hasattr(position_ids, "dtype"):
            position_ids = xp.asarray(position_ids)
        if not xp.isdtype(position_ids.dtype, "integral"):
            raise TypeError(f"position_ids: expected an integer array, got dtype {position_ids.dtype}")
        if position_ids.ndim == 1:
            if position_ids.shape[0] != n_seq:
                raise ValueError(f"position_ids: shape {tuple(position_ids.shape)} does not match seq length {n_seq}")
            pos = xp.broadcast_to(xp.astype(position_ids, xp.int64)[None, :], (n_batch, n_seq))
        elif position_ids.ndim == 2:
            if tuple(position_ids.shape) != (n_batch, n_seq):
                raise ValueError(
                    f"position_ids: shape {tuple(position_ids.shape)} does not match (batch, seq) = {(n_batch, n_seq)}"
                )
            pos = xp.astype(position_ids, xp.int64)
        else:
            raise ValueError(f"position_ids: expected shape (seq,) or (batch, seq), got {tuple(position_ids.shape)}")
    else:
        if isinstance(offset, bool):
            raise TypeError(f"offset: expected an int or an integer array of shape (batch,), got {offset!r}")
        if isinstance(offset, (int, np.integer)):
            base = xp.full((n_batch, 1), int(offset), dtype=xp.int64)
        else:
            if not hasattr(offset, "dtype"):
                offset = xp.asarray(offset)
            if not xp.isdtype(offset.dtype, "integral"):
                raise TypeError(f"offset: expected an int or an integer array, got dtype {offset.dtype}")
            if offset.ndim != 1 or offset.shape[0] != n_batch:
                raise ValueError(f"offset: expected shape (batch,) = ({n_batch},), got {tuple(offset.shape)}")
            base = xp.astype(offset, xp.int64)[:, None]
        pos = base + xp.arange(n_seq, dtype=xp.int64)[None, :]
    if pos.size:
        if position_ids is None and isinstance(offset, (int, np.integer)):
            lo, hi = int(offset), int(offset) + n_seq - 1  # known on the host: no reduction, no device sync
        elif _xp.is_cupy(pos):
            return pos  # device positions: guarded in the kernel (CupyBackend.check_errors), no device sync
        else:
            lo, hi = int(xp.min(pos)), int(xp.max(pos))
        if lo < 0:
            raise ValueError(f"positions: must be >= 0, got a smallest position of {lo}")
        if hi >= table_len:
            raise ValueError(
                f"positions: the largest position is {hi} but the cos/sin tables have {table_len} rows; build "
                f"them for at least {hi + 1} positions"
            )
    return pos


def apply_rotary(
    x: Any,
    cos: Any,
    sin: Any,
    position_ids: Any = None,
    *,
    offset: Any = 0,
    layout: str = "half",
    rotary_dim: int | None = None,
    inverse: bool = False,
    out: Any = None,
    seq_axis: int = -2,
    backend: str = "auto",
) -> Any:
    """Rotate ``x`` by the angles of its positions and return the result (``out`` when given).

    x: ``(batch, heads, seq, head_dim)`` (or ``(batch, seq, heads, head_dim)`` with ``seq_axis=-3``; leading
        dimensions may be dropped), float16, bfloat16 (NumPy + ml_dtypes), float32 or float64; any strides.
    cos, sin: tables ``(table_len, rotary_dim)`` from :class:`~ropeflow.RotaryEmbedding` (the "half" table
        layout: column ``j`` and ``j + rotary_dim // 2`` hold the same frequency).
    position_ids: ``(seq,)`` or ``(batch, seq)`` integer rows of the tables; else ``offset + arange(seq)``
        with ``offset`` an int or a ``(batch,)`` integer array (KV-cache decoding).
    layout: ``"half"``, ``"interleaved"`` or ``"deepseek"`` (see the module docstring).
    rotary_dim: channels to rotate (default ``cos.shape[-1]``); the rest are copied through.
    inverse: rotate by ``-angle`` (undoes a forward rotation).
    out: destination of ``x``'s shape and dtype; ``out=x`` rotates in place.

    The math is done in float64 and rounded once to ``x.dtype``.
    """
    job = prepare(x, cos, sin, position_ids, offset=offset, layout=layout, rotary_dim=rotary_dim, inverse=inverse,
                  out=out, seq_axis=seq_axis, backend=backend)
    job.run()
    return job.out


@dataclass
class RotaryJob:
    """A validated rotation: (B, H, S, D) views, table rows and the backend that will run it."""

    backend: Any
    x4: Any
    out: Any
    out4: Any
    cos: Any
    sin: Any
    positions: Any
    layout: str
    rotary_dim: int
    inverse: bool

    def run(self, other: RotaryJob | None = None) -> None:
        """Run this job, and ``other`` (same tables, positions and layout) in the same launch where the
        backend can (cupy: one launch for q and k)."""
        b = self.backend
        fused = other is not None and not b.is_host and other.x4.shape[0] == self.x4.shape[0] \
            and other.x4.shape[2] == self.x4.shape[2] and other.x4.dtype == self.x4.dtype
        if fused:
            b.apply(self.x4, self.out4, self.cos, self.sin, self.positions, self.layout, self.rotary_dim,
                    self.inverse, k=other.x4, k_out=other.out4)
            return
        b.apply(self.x4, self.out4, self.cos, self.sin, self.positions, self.layout, self.rotary_dim, self.inverse)
        if other is not None:
            other.run()


def prepare(
    x: Any,
    cos: Any,
    sin: Any,
    position_ids: Any = None,
    *,
    offset: Any = 0,
    layout: str = "half",
    rotary_dim: int | None = None,
    inverse: bool = False,
    out: Any = None,
    seq_axis: int = -2,
    backend: str = "auto",
) -> RotaryJob:
    """Validate the arguments of :func:`apply_rotary` and return the job, not yet run."""
    xp = _xp.namespace(x)
    _xp.dtype_name(x.dtype, "x.dtype")
    for name, table in (("cos", cos), ("sin", sin)):
        _xp.namespace(table)
        if _xp.is_cupy(table) != _xp.is_cupy(x):
            raise TypeError(f"{name}: a {type(table).__module__} array with a {type(x).__module__} x; use one library "
                            "(cupy.asarray / cupy.asnumpy)")
        if table.ndim != 2:
            raise ValueError(f"{name}: expected a (table_len, rotary_dim) table, got shape {tuple(table.shape)}")
    if tuple(cos.shape) != tuple(sin.shape):
        raise ValueError(f"cos and sin: shapes differ: {tuple(cos.shape)} vs {tuple(sin.shape)}")
    if layout not in LAYOUTS:
        raise ValueError(f"layout: unknown layout {layout!r}; allowed: {', '.join(map(repr, LAYOUTS))}")
    if seq_axis not in (-2, -3):
        raise ValueError(
            f"seq_axis: expected -2 (batch, heads, seq, dim) or -3 (batch, seq, heads, dim), got {seq_axis}"
        )
    head_dim = int(x.shape[-1])
    table_dim = int(cos.shape[-1])
    rotary_dim = table_dim if rotary_dim is None else rotary_dim
    if isinstance(rotary_dim, bool) or not isinstance(rotary_dim, (int, np.integer)):
        raise TypeError(f"rotary_dim: expected an int, got {rotary_dim!r}")
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim: must be a positive even integer, got {rotary_dim}")
    if rotary_dim > head_dim:
        raise ValueError(f"rotary_dim: {rotary_dim} is larger than head_dim {head_dim} (x shape {tuple(x.shape)})")
    if rotary_dim != table_dim:
        raise ValueError(f"rotary_dim: {rotary_dim} does not match the tables' width {table_dim} (cos shape "
                         f"{tuple(cos.shape)}); build the tables with dim={rotary_dim}")
    if out is not None:
        if _xp.is_cupy(out) != _xp.is_cupy(x) or not (_xp.is_numpy(out) or _xp.is_cupy(out)):
            raise TypeError(f"out: a {type(out).__module__} array for a {type(x).__module__} x")
        if tuple(out.shape) != tuple(x.shape) or out.dtype != x.dtype:
            raise ValueError(f"out: shape {tuple(out.shape)} dtype {out.dtype} must equal x's shape "
                             f"{tuple(x.shape)} dtype {x.dtype}")
    impl = resolve(backend, x)
    x4 = as_4d(x, seq_axis, "x")
    n_batch, _, n_seq, _ = x4.shape
    with _xp.device_scope(x):  # CuPy allocates on the current device: make it x's
        positions = positions_of(xp, position_ids, offset, int(n_batch), int(n_seq), int(cos.shape[0]))
        if out is None:
            out = xp.empty_like(x)
    out4 = as_4d(out, seq_axis, "out")
    cos, sin = _table_dtype(xp, cos, x.dtype), _table_dtype(xp, sin, x.dtype)
    return RotaryJob(impl, x4, out, out4, cos, sin, positions, layout, int(rotary_dim), bool(inverse))


def _table_dtype(xp: Any, table: Any, x_dtype: Any) -> Any:
    """Tables as float32 (float64 for float64 inputs): the kernels read float32/float64 tables."""
    want = xp.float64 if _xp.dtype_name(x_dtype) == "float64" else xp.float32
    if table.dtype == want or (table.dtype == xp.float64 and want == xp.float32):
        return table
    return xp.astype(table, want)
