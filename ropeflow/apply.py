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
from ._interop import from_native, mark_written, to_native, to_native_or_none, writable_native
from .backends import resolve
from .positions import check_offset_unused, integer_array

#: Positions are int64 table rows.
MAX_POSITION = 2**63 - 1

LAYOUTS = ("half", "interleaved", "deepseek")


def check_layout(layout: Any) -> str:
    if not isinstance(layout, str) or layout not in LAYOUTS:
        raise ValueError(f"layout: unknown layout {layout!r}; allowed: {', '.join(map(repr, LAYOUTS))}")
    return layout


def check_seq_axis(seq_axis: Any) -> int:
    if isinstance(seq_axis, (bool, np.bool_)) or not isinstance(seq_axis, (int, np.integer)) \
            or seq_axis not in (-2, -3):
        raise ValueError(
            f"seq_axis: expected -2 (batch, heads, seq, dim) or -3 (batch, seq, heads, dim), got {seq_axis!r}"
        )
    return int(seq_axis)


def check_flag(name: str, value: Any) -> bool:
    """A real bool (``numpy.bool_`` included): a string such as ``'False'`` is not quietly true."""
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name}: expected True or False, got {value!r} ({type(value).__name__})")
    return bool(value)


def check_input(x: Any, name: str) -> Any:
    """``x`` as a NumPy or CuPy array of a supported float dtype in native byte order (a non-native one is
    converted: a copy), or a TypeError naming ``name``."""
    _xp.namespace(x, name)
    _xp.dtype_name(x.dtype, f"{name}.dtype")
    if type(x) is not np.ndarray and isinstance(x, np.ndarray):
        x = x.view(np.ndarray)  # subclasses (np.matrix stays 2-D under reshape, memmap): their plain data
    if not x.dtype.isnative:
        x = x.astype(x.dtype.newbyteorder("="))
    return x


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


def positions_of(xp: Any, position_ids: Any, offset: Any, n_batch: int, n_seq: int, table_len: int
                 ) -> tuple[Any, int]:
    """``(positions, longest)``: ``(batch, seq)`` int64 table rows (``(1, seq)`` when every batch row reads the
    same positions; CuPy positions are always ``(batch, seq)``, with a zero stride where shared), validated
    against ``table_len``, and the largest position + 1 (0 for no positions). ``xp`` is the input's array module
    (numpy or cupy).

    Device (CuPy) ``position_ids`` are not read back to the host: ``longest`` is then None, and the kernel
    guards every position against the table length instead (see ``CupyBackend.check_errors``)."""
    name = "position_ids" if position_ids is not None else "offset"
    check_offset_unused(position_ids, offset)
    if position_ids is not None:
        ids = integer_array(xp, position_ids, "position_ids")
        if ids.ndim == 1:
            if ids.shape[0] != n_seq:
                raise ValueError(f"position_ids: shape {tuple(ids.shape)} does not match seq length {n_seq}")
        elif ids.ndim == 2:
            if tuple(ids.shape) != (n_batch, n_seq):
                raise ValueError(
                    f"position_ids: shape {tuple(ids.shape)} does not match (batch, seq) = {(n_batch, n_seq)}"
                )
        else:
            raise ValueError(f"position_ids: expected shape (seq,) or (batch, seq), got {tuple(ids.shape)}")
        if ids.size == 0:
            return xp.zeros((n_batch, n_seq), dtype=np.int64), 0
        if xp is not np:  # device positions: guarded in the kernel (CupyBackend.check_errors), no device sync
            pos = ids.astype(np.int64, copy=False)
            return (xp.broadcast_to(pos[None, :], (n_batch, n_seq)) if pos.ndim == 1 else pos), None
        lo, hi = int(ids.min()), int(ids.max())  # exact in the ids' own dtype: no uint64 wrap-around
        if lo < 0:
            raise ValueError(f"{name}: positions must be >= 0, got a smallest position of {lo}")
        if hi >= MAX_POSITION:  # the table length, the largest position + 1, is an int64
            raise ValueError(f"{name}: positions must be below 2**63 - 1, got a largest position of {hi}")
        pos = ids.astype(np.int64, copy=False)
        if pos.ndim == 1:
            pos = pos[None, :]  # (1, seq): every batch row reads row 0 (host kernels broadcast it)
    else:
        if isinstance(offset, (int, np.integer)) and not isinstance(offset, (bool, np.bool_)):
            lo = hi = int(offset)
            if lo < 0:
                raise ValueError(f"offset: positions must be >= 0, got a smallest position of {lo}")
            if hi > MAX_POSITION - n_seq:
                raise ValueError(f"offset: positions offset + arange(seq) must be below 2**63 - 1, got offset={hi} "
                                 f"(largest position {hi + n_seq - 1})")
            pos = None
        else:
            if isinstance(offset, (bool, np.bool_, float, np.floating, str)):
                raise TypeError(f"offset: expected an int or an integer array of shape (batch,), got {offset!r}")
            offsets = integer_array(xp, offset, "offset")
            if offsets.ndim == 0:  # a 0-d integer array (e.g. torch.tensor(5)): one offset for every row
                offsets = xp.broadcast_to(offsets, (n_batch,))
            if offsets.ndim != 1 or offsets.shape[0] != n_batch:
                raise ValueError(f"offset: expected shape (batch,) = ({n_batch},), got {tuple(offsets.shape)}")
            if n_batch == 0:  # no rows, no positions
                return xp.zeros((0, n_seq), dtype=np.int64), 0
            lo, hi = int(offsets.min()), int(offsets.max())
            if lo < 0:
                raise ValueError(f"offset: positions must be >= 0, got a smallest position of {lo}")
            if hi > MAX_POSITION - n_seq:
                raise ValueError(f"offset: positions offset + arange(seq) must be below 2**63 - 1, got offset={hi} "
                                 f"(largest position {hi + n_seq - 1})")
            pos = offsets.astype(np.int64, copy=False)[:, None] + xp.arange(n_seq, dtype=np.int64)[None, :]
        if n_seq == 0 or n_batch == 0:
            return xp.zeros((n_batch, n_seq), dtype=np.int64), 0
        hi += n_seq - 1
        if pos is None:
            pos = xp.arange(lo, hi + 1, dtype=np.int64)[None, :]  # (1, seq), shared by every batch row
    if hi >= table_len:
        raise ValueError(
            f"{name}: the largest position is {hi} but the cos/sin tables have {table_len} rows; build "
            f"them for at least {hi + 1} positions"
        )
    if xp is not np and pos.shape[0] != n_batch:
        pos = xp.broadcast_to(pos, (n_batch, n_seq))  # the CUDA kernel reads (batch, seq) through strides
    return pos, hi + 1


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
    cu_seqlens: Any = None,
) -> Any:
    """Rotate ``x`` by the angles of its positions and return the result (``out`` when given).

    x: ``(batch, heads, seq, head_dim)`` (or ``(batch, seq, heads, head_dim)`` with ``seq_axis=-3``; leading
        dimensions may be dropped), float16, bfloat16 (NumPy + ml_dtypes), float32 or float64; any strides.
    cos, sin: tables ``(table_len, rotary_dim)`` from :class:`~ropeflow.RotaryEmbedding` (the "half" table
        layout: column ``j`` and ``j + rotary_dim // 2`` hold the same frequency).
    position_ids: ``(seq,)`` or ``(batch, seq)`` integer rows of the tables; else ``offset + arange(seq)``
        with ``offset`` an int (or a 0-d integer array) or a ``(batch,)`` integer array (KV-cache decoding).
    cu_seqlens: a packed (varlen) batch: ``x`` of shape ``(total_tokens, heads, head_dim)`` with
        ``seq_axis=-3`` (or ``(total_tokens, head_dim)``), ``cu_seqlens`` the ``(n_seqs + 1,)`` cumulative
        sequence lengths ``[0, len0, len0 + len1, ..., total_tokens]``. Positions restart at every sequence, at
        ``offset`` (an int, or ``(n_seqs,)`` integers): see :func:`ropeflow.positions_from_cu_seqlens`.
    layout: ``"half"``, ``"interleaved"`` or ``"deepseek"`` (see the module docstring).
    rotary_dim: channels to rotate (default ``cos.shape[-1]``); the rest are copied through.
    inverse: rotate by ``-angle``: undoes a forward rotation of the same layout (for ``"deepseek"`` the
        halves go back to the interleaved pairs they came from).
    out: destination of ``x``'s shape and dtype, writeable, no two of its elements sharing memory (a broadcast
        or expanded view is refused); ``out=x`` rotates in place. An ``out`` that partly overlaps ``x`` is
        computed as if ``x`` had been copied first.

    Arrays may be NumPy, CuPy, torch tensors (CPU: zero-copy NumPy views; CUDA: zero-copy CuPy views) or JAX
    arrays (CPU); the result is in ``x``'s library (with ``out``: ``out`` itself, rotated in place).

    The math is done in float64 and rounded once to ``x.dtype``.
    """
    origin = caller_out = None
    if type(x) is not np.ndarray:
        x, origin = to_native(x, "x")
    cos, sin = to_native_or_none(cos, "cos"), to_native_or_none(sin, "sin")
    if position_ids is not None and type(position_ids) is not np.ndarray:
        position_ids = to_native_or_none(position_ids, "position_ids")
    if not isinstance(offset, int):
        offset = to_native_or_none(offset, "offset")
    if cu_seqlens is not None:
        cu_seqlens = to_native_or_none(cu_seqlens, "cu_seqlens")
    if out is not None and type(out) is not np.ndarray:
        caller_out = out
        out = writable_native(out)
    job = prepare(x, cos, sin, position_ids, offset=offset, layout=layout, rotary_dim=rotary_dim, inverse=inverse,
                  out=out, seq_axis=seq_axis, backend=backend, cu_seqlens=cu_seqlens)
    job.run()
    if caller_out is not None:
        mark_written(caller_out)
        return caller_out
    return job.out if out is not None else from_native(job.out, origin)


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
        backend can (numba and cupy: one launch for q and k)."""
        if self.inverse and self.layout == "deepseek":
            self._run_deepseek_inverse()
            if other is not None:
                other.run()
            return
        b = self.backend
        fused = other is not None and other.x4.shape[0] == self.x4.shape[0] \
            and other.x4.shape[2] == self.x4.shape[2] and other.x4.dtype == self.x4.dtype
        if fused:
            b.apply(self.x4, self.out4, self.cos, self.sin, self.positions, self.layout, self.rotary_dim,
                    self.inverse, k=other.x4, k_out=other.out4)
            return
        b.apply(self.x4, self.out4, self.cos, self.sin, self.positions, self.layout, self.rotary_dim, self.inverse)
        if other is not None:
            other.run()


    def _run_deepseek_inverse(self) -> None:
        """The inverse of a "deepseek" rotation, which took pairs ``(2j, 2j + 1)`` to ``(j, j + half)``: the
        "half" inverse rotation of the halves, written back to the pairs they came from. The arithmetic is the
        "half" kernel's (float64, rounded once); the scatter copies values."""
        with _xp.device_scope(self.x4):  # CuPy allocates and copies on the current device: make it x's
            halves = _xp.array_module(self.x4).empty_like(self.x4)
            self.backend.apply(self.x4, halves, self.cos, self.sin, self.positions, "half", self.rotary_dim, True)
            r, h = self.rotary_dim, self.rotary_dim // 2
            self.out4[..., 0:r:2] = halves[..., :h]
            self.out4[..., 1:r:2] = halves[..., h:r]
            if r < self.x4.shape[-1]:
                self.out4[..., r:] = halves[..., r:]


def check_tables(x: Any, cos: Any, sin: Any) -> tuple[Any, Any]:
    """``(cos, sin)`` checked against ``x`` and in the dtype the kernels read (float32; float64 for float64 x)."""
    for name, table in (("cos", cos), ("sin", sin)):
        _xp.namespace(table, name)
        if _xp.is_cupy(table) != _xp.is_cupy(x):
            raise TypeError(f"{name}: a {type(table).__module__} array with a {type(x).__module__} x; use one library "
                            "(cupy.asarray / cupy.asnumpy)")
        _xp.dtype_name(table.dtype, f"{name}.dtype")
        if table.ndim != 2:
            raise ValueError(f"{name}: expected a (table_len, rotary_dim) table, got shape {tuple(table.shape)}")
    if tuple(cos.shape) != tuple(sin.shape):
        raise ValueError(f"cos and sin: shapes differ: {tuple(cos.shape)} vs {tuple(sin.shape)}")
    return _table_dtype(cos, x.dtype), _table_dtype(sin, x.dtype)


def check_rotary_dim(rotary_dim: Any, x: Any, table_dim: int, name: str = "x") -> int:
    head_dim = int(x.shape[-1])
    rotary_dim = table_dim if rotary_dim is None else rotary_dim
    if isinstance(rotary_dim, (bool, np.bool_)) or not isinstance(rotary_dim, (int, np.integer)):
        raise TypeError(f"rotary_dim: expected an int, got {rotary_dim!r}")
    if rotary_dim <= 0 or rotary_dim % 2:
        raise ValueError(f"rotary_dim: must be a positive even integer, got {rotary_dim}")
    if rotary_dim > head_dim:
        raise ValueError(f"rotary_dim: {rotary_dim} is larger than head_dim {head_dim} ({name} shape "
                         f"{tuple(x.shape)})")
    if rotary_dim != table_dim:
        raise ValueError(f"rotary_dim: {rotary_dim} does not match the tables' width {table_dim}; build the "
                         f"tables with dim={rotary_dim}")
    return int(rotary_dim)


def check_out(out: Any, x: Any, tables: tuple[Any, ...] = (), name: str = "out", x_name: str = "x") -> None:
    """``out`` must be a writeable, native-order array of ``x``'s library, shape and dtype, sharing no memory
    with the tables (``name``, ``x_name``: the parameters, for the messages)."""
    if _xp.is_cupy(out) != _xp.is_cupy(x) or not (_xp.is_numpy(out) or _xp.is_cupy(out)):
        raise TypeError(f"{name}: a {type(out).__module__} array for a {type(x).__module__} {x_name}")
    if tuple(out.shape) != tuple(x.shape) or out.dtype.newbyteorder("=") != x.dtype.newbyteorder("="):
        raise ValueError(f"{name}: shape {tuple(out.shape)} dtype {out.dtype} must equal {x_name}'s shape "
                         f"{tuple(x.shape)} dtype {x.dtype}")
    if not out.dtype.isnative:
        raise ValueError(f"{name}: non-native byte order ({out.dtype.str}); pass a native-order array "
                         f"({out.dtype.newbyteorder('=').str}) and convert afterwards")
    if _xp.overlaps_itself(out):
        raise ValueError(f"{name}: its elements overlap in memory (shape {tuple(out.shape)}, strides "
                         f"{tuple(out.strides)} bytes: a broadcast or expanded view?), so results would overwrite "
                         "each other; pass an array with memory of its own for every element")
    if _xp.is_numpy(out):
        if not out.flags.writeable:
            raise ValueError(f"{name}: the array is read-only (a shared cos/sin table, or writeable=False); pass a "
                             f"writeable array, or {name}=None for a new one")
        for table in tables:
            if np.may_share_memory(out, table):
                raise ValueError(f"{name}: shares memory with the cos/sin tables; pass a separate array")


def shares_memory(a: Any, b: Any, exact: bool = False) -> bool:
    """Whether arrays ``a`` and ``b`` (one library) overlap in memory: by their bounds (cheap; interleaved
    views of one buffer count as overlapping), or ``exact`` (element for element: q and k as disjoint views of
    one qkv buffer do not overlap)."""
    lib = np if _xp.is_numpy(a) else _xp.cupy_module()
    return bool((lib.shares_memory if exact else lib.may_share_memory)(a, b))


def unaliased(x: Any, out: Any) -> Any:
    """``x``, or a copy of it when ``out`` overlaps it without being the very same view (a partial overlap):
    the kernels rotate in place only element for element."""
    if out is x or _xp.same_view(x, out):
        return x
    return x.copy() if shares_memory(x, out) else x


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
    cu_seqlens: Any = None,
) -> RotaryJob:
    """Validate the arguments of :func:`apply_rotary` and return the job, not yet run."""
    x_in = x
    x = check_input(x, "x")
    cos, sin = check_tables(x, cos, sin)
    layout = check_layout(layout)
    seq_axis = check_seq_axis(seq_axis)
    inverse = check_flag("inverse", inverse)
    rotary_dim = check_rotary_dim(rotary_dim, x, int(cos.shape[-1]))
    if out is not None:
        check_out(out, x_in, (cos, sin))
    impl = resolve(backend, x)
    x4 = as_4d(x, seq_axis, "x")
    n_batch, _, n_seq, _ = x4.shape
    with _xp.device_scope(x):  # CuPy allocates on the current device: make it x's
        if cu_seqlens is not None:
            positions = packed_positions_within(_xp.array_module(x), cu_seqlens, offset, int(n_batch), int(n_seq),
                                                int(cos.shape[0]), position_ids)
        else:
            positions, _ = positions_of(_xp.array_module(x), position_ids, offset, int(n_batch), int(n_seq),
                                        int(cos.shape[0]))
        return make_job(impl, x, out, seq_axis, cos, sin, positions_apart(positions, out), layout, rotary_dim,
                        inverse)


def positions_apart(positions: Any, *outs: Any) -> Any:
    """``positions``, or a copy of them where an output (None: none) may share memory with them: the kernels
    read positions while they write (the Numba one checks them all first and reads them again tile by tile, so
    an output over them would send it outside the tables)."""
    for out in outs:
        if out is not None and shares_memory(positions, out):
            return positions.copy()
    return positions


def packed_positions_within(xp: Any, cu_seqlens: Any, offset: Any, n_batch: int, n_seq: int, table_len: int,
                            position_ids: Any = None) -> Any:
    """The ``(1, n_seq)`` positions of a packed batch (:func:`ropeflow.positions.packed_positions`), checked
    against ``table_len``."""
    from .positions import packed_positions

    positions, longest = packed_positions(xp, cu_seqlens, offset, n_batch, n_seq, position_ids)
    if longest > table_len:
        raise ValueError(f"cu_seqlens and offset: the largest position is {longest - 1} but the cos/sin tables have "
                         f"{table_len} rows; build them for at least {longest} positions")
    return positions


def make_job(impl: Any, x: Any, out: Any, seq_axis: int, cos: Any, sin: Any, positions: Any, layout: str,
             rotary_dim: int, inverse: bool) -> RotaryJob:
    """The job for already validated arguments (``out`` None: a new array)."""
    if out is None:
        out = _xp.array_module(x).empty_like(x)
    else:
        x = unaliased(x, out)
    return RotaryJob(impl, as_4d(x, seq_axis, "x"), out, as_4d(out, seq_axis, "out"), cos, sin, positions, layout,
                     rotary_dim, inverse)


def _table_dtype(table: Any, x_dtype: Any) -> Any:
    """Tables as float32 (float64 for float64 inputs): the kernels read float32/float64 tables."""
    want = np.dtype(np.float64 if x_dtype.kind == "f" and x_dtype.itemsize == 8 else np.float32)
    if table.dtype == want or (table.dtype == np.float64 and want == np.float32):
        return table
    return table.astype(want)
