"""The host hot path of :meth:`RotaryEmbedding.apply`: decode-sized calls on NumPy arrays.

A decode step rotates a few thousand numbers; the general path's layers (array-API wrappers, one job per
tensor, sliced table views) cost more than the kernel. :func:`host_apply` does the same work with fewer
Python steps, for the common case only:

* q (and k) plain 4-D NumPy arrays of one supported dtype, native byte order, ``seq_axis`` -2 or -3;
* positions ``offset + arange(seq)`` with ``offset`` an int or a 1-D integer array of shape ``(batch,)``, or
  ``position_ids`` of shape ``(seq,)`` or ``(batch, seq)``;
* a fixed-frequency embedding whose table already holds the rows asked (a cache hit).

Anything else, including every invalid argument, returns None and the general path runs, so errors and
results are the general path's own. The kernel call is the same one, with the same arguments, except that
on the Numba backend the positions go to the kernel unchecked (first positions or ids as 1-D int64): the
kernel checks them against the table before it writes anything and reports a miss, and the general path
then runs. :func:`host_table_hit` is the same idea for ``rope(x)``: the memoized table views, or None.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from ._interop import inference_tensor_outside_inference_mode, mark_torch_written
from ._xp import _dtype_names, overlaps_itself
from .apply import LAYOUTS, MAX_POSITION, positions_apart

#: Offsets arrays up to this size are range-checked as Python ints (faster than two reductions).
_LIST_CHECK = 64
#: Reference precision computes positions in float32 (``rotary.REFERENCE_MAX_POSITIONS``; rotary imports this module).
_REFERENCE_MAX_POSITIONS = 2**24


_INT64 = np.dtype(np.int64)
#: Input dtype -> the dtype name of the tables the kernels read (float64 only for float64 inputs).
_TABLE_DTYPES = {np.dtype(np.float16): "float32", np.dtype(np.float32): "float32", np.dtype(np.float64): "float64"}


def _late_table_dtype(dtype: np.dtype) -> str | None:
    """:data:`_TABLE_DTYPES` for bfloat16, registered once ml_dtypes is in use (a bfloat16 array cannot exist
    before; ``import ropeflow`` does not import it)."""
    ml_dtypes = sys.modules.get("ml_dtypes")
    if ml_dtypes is None or dtype != np.dtype(ml_dtypes.bfloat16):
        return None
    _TABLE_DTYPES[dtype] = "float32"
    return "float32"


def _bounds(a: np.ndarray) -> tuple[int, int]:
    """``(min, max)`` of an integer array as exact Python ints: up to :data:`_LIST_CHECK` values through a
    list (faster than two reductions), more by reductions."""
    if a.size <= _LIST_CHECK:
        values = a.tolist() if a.ndim == 1 else a.ravel().tolist()
        return min(values), max(values)
    return int(a.min()), int(a.max())


def host_positions(offset: Any, n_batch: int, n_seq: int) -> tuple[np.ndarray, int] | None:
    """``(positions, longest)`` for ``offset + arange(n_seq)``: ``(1, n_seq)`` or ``(n_batch, n_seq)`` int64
    rows and the largest position + 1; None when ``offset`` is not a valid int or ``(n_batch,)`` integer
    array (the general path then reports it)."""
    if type(offset) is int:
        if offset < 0 or offset > MAX_POSITION - n_seq:
            return None
        return np.arange(offset, offset + n_seq, dtype=np.int64)[None, :], offset + n_seq
    if type(offset) is not np.ndarray:
        return None
    dtype = offset.dtype
    if offset.shape != (n_batch,) or dtype.kind not in "iu":
        return None
    lo, hi = _bounds(offset)
    if lo < 0 or hi > MAX_POSITION - n_seq:
        return None
    starts = offset if dtype is _INT64 else offset.astype(np.int64)
    positions = starts[:, None] if n_seq == 1 else starts[:, None] + np.arange(n_seq, dtype=np.int64)
    return positions, hi + n_seq


def host_position_ids(ids: Any, n_batch: int, n_seq: int) -> tuple[np.ndarray, int] | None:
    """``(positions, longest)`` for ``position_ids`` of shape ``(seq,)`` or ``(batch, seq)``: ``(1, seq)`` or
    ``(batch, seq)`` int64 rows and the largest position + 1; None when ``ids`` is not such a valid NumPy
    integer array (the general path then reports it)."""
    if type(ids) is not np.ndarray or ids.dtype.kind not in "iu":
        return None
    if ids.shape != ((n_seq,) if ids.ndim == 1 else (n_batch, n_seq)):
        return None
    lo, hi = _bounds(ids)
    if lo < 0 or hi > MAX_POSITION:
        return None
    positions = ids if ids.dtype is _INT64 else ids.astype(np.int64)
    return (positions[None, :] if ids.ndim == 1 else positions), hi + 1


def host_table_hit(rope: Any, x: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """``rope(x)`` for a NumPy ``x`` of at least 2 dimensions when the fixed-frequency table for its dtype
    has already served ``x.shape[-2]`` rows in that dtype (storage dtype, or a memoized cast of the current
    rows): the memoized ``(cos[:n], sin[:n])`` views, the general path's own objects. None otherwise (the
    general path runs)."""
    backend = rope._host_backend
    shape = x.shape
    if backend is None or len(shape) < 2:
        return None
    name = _dtype_names.get(x.dtype)
    table = rope._fixed.get((backend.name, "cpu", name))  # keyed by the dtype asked
    if table is None:
        return None
    snap = table._snapshot
    if table._dtype_name != name:  # a memoized cast (float16/bfloat16 x): current only if made from snap
        cast = table._casts.get(name)
        if cast is None or cast.rows != snap.rows:
            return None
        snap = cast
    return snap.views.get(shape[-2])


def host_starts(offset: Any, n_batch: int) -> np.ndarray | None:
    """``offset`` as 1-D int64 first positions, ``(1,)`` for an int or ``(n_batch,)``, unchecked against any
    table (the kernel does that); None when it is not an int in ``[0, MAX_POSITION]`` or a ``(n_batch,)``
    NumPy integer array (the general path then reports it)."""
    if type(offset) is int:
        return np.array((offset,), dtype=np.int64) if 0 <= offset <= MAX_POSITION else None
    if type(offset) is not np.ndarray or offset.shape != (n_batch,) or offset.dtype.kind not in "iu":
        return None
    # values past int64 wrap to negative ones, which the kernel refuses; a read-only array is copied, so that
    # the kernel compiled for writeable positions serves it
    return offset if offset.dtype is _INT64 and offset.flags.writeable else offset.astype(np.int64)


def host_ids(ids: Any, n_batch: int, n_seq: int) -> np.ndarray | None:
    """``position_ids`` of shape ``(seq,)`` or ``(batch, seq)`` as 1-D int64 ``(seq,)`` or ``(batch * seq,)``
    (row-major), unchecked against any table (the kernel does that); None when ``ids`` is not such a NumPy
    integer array (the general path then reports it)."""
    if type(ids) is not np.ndarray or ids.dtype.kind not in "iu":
        return None
    if ids.shape != ((n_seq,) if ids.ndim == 1 else (n_batch, n_seq)):
        return None
    flags = ids.flags
    if ids.dtype is not _INT64 or not (flags.c_contiguous and flags.writeable):  # read-only: as in host_starts
        ids = np.array(ids, dtype=np.int64, order="C")
    return ids if ids.ndim == 1 else ids.reshape(-1)


def host_kernel_positions(position_ids: Any, offset: Any, n_batch: int, n_seq: int
                          ) -> tuple[np.ndarray, bool] | None:
    """``(positions, starts)`` for a kernel that checks positions itself: :func:`host_starts` of ``offset``
    (``starts`` True) or :func:`host_ids` of ``position_ids``; None where the general path must decide."""
    if position_ids is None:
        positions = host_starts(offset, n_batch)
        return None if positions is None else (positions, True)
    if type(offset) is not int or offset != 0:  # both given: the general path refuses it
        return None
    positions = host_ids(position_ids, n_batch, n_seq)
    return None if positions is None else (positions, False)


def host_table(rope: Any, backend: Any, table_dtype: str) -> Any:
    """The current snapshot (``rows``, ``cos``, ``sin``) of ``rope``'s fixed-frequency table of storage dtype
    ``table_dtype`` on ``backend``, or None (not built yet, or length-dependent frequencies)."""
    table = rope._fixed.get((backend.name, "cpu", table_dtype))
    if table is None or table._dtype_name != table_dtype:
        return None
    snap = table._snapshot
    return None if snap.cos is None else snap


def host_table_dtype(rope: Any, q: Any, k: Any, seq_axis: int) -> str | None:
    """The storage dtype name of the table the kernels read for 4-D NumPy ``q`` (and ``k``) of one supported
    dtype, rotary channels present and batch and seq shared and nonzero; None otherwise."""
    if type(q) is not np.ndarray or q.ndim != 4 or (k is not None and (type(k) is not np.ndarray or k.ndim != 4)):
        return None
    table_dtype = _TABLE_DTYPES.get(q.dtype) or _late_table_dtype(q.dtype)
    if table_dtype is None or (k is not None and k.dtype != q.dtype):
        return None
    dim = rope.dim
    shape = q.shape
    n_batch, n_seq = shape[0], shape[seq_axis]
    if shape[3] < dim or n_batch == 0 or n_seq == 0:
        return None
    if k is not None and (k.shape[3] < dim or k.shape[0] != n_batch or k.shape[seq_axis] != n_seq):
        return None
    return table_dtype


def _new_outputs(q: np.ndarray, k: np.ndarray | None) -> tuple[np.ndarray, np.ndarray | None]:
    return np.empty_like(q), None if k is None else np.empty_like(k)


def _host_outputs(out: Any, q: np.ndarray, k: np.ndarray | None, layout: str, tables: tuple[np.ndarray, np.ndarray]
                  ) -> tuple[np.ndarray, np.ndarray | None] | bool | None:
    """For ``out``: False (None: new arrays); ``(q, k)`` itself (in place: writeable, q and k disjoint, a layout
    that rotates element for element); the caller's ``(q_out, k_out)`` (NumPy arrays of q's and k's shapes and
    dtype, writeable, that cannot share memory with q, k, each other or the ``tables``); or None (any other
    ``out``: the general path checks it, copies what overlaps, or reports it)."""
    if out is None:
        return False
    if type(out) is not tuple or len(out) != 2:
        return None
    q_out, k_out = out
    if q_out is q and k_out is k:
        if layout == "deepseek" or not _own_memory(q) or (k is not None and (not _own_memory(k)
                                                                            or np.shares_memory(q, k))):
            return None
        return out
    if not _free_output(q_out, q) or (k_out is None) != (k is None) or (k is not None and not _free_output(k_out, k)):
        return None
    for o, others in ((q_out, (q, k, k_out, *tables)), (k_out, (q, k, *tables))):
        if o is not None and any(a is not None and np.may_share_memory(o, a) for a in others):
            return None
    return out


def _free_output(o: Any, x: np.ndarray) -> bool:
    """Whether ``o`` is a NumPy array of ``x``'s shape and dtype that can take results: writeable, no two
    elements in one place."""
    return type(o) is np.ndarray and o.shape == x.shape and o.dtype == x.dtype and _own_memory(o)


def _own_memory(x: np.ndarray) -> bool:
    """Whether ``x`` can be written in place: writeable, and no two elements share memory (else the general
    path reports it)."""
    flags = x.flags
    return flags.writeable and (flags.c_contiguous or not overlaps_itself(x))


def _callers_positions(position_ids: Any, offset: Any) -> bool:
    """Whether the positions may be the caller's own array (ids, or offsets), not a row made from an int."""
    return position_ids is not None or type(offset) is not int


def host_apply(rope: Any, q: Any, k: Any, position_ids: Any, offset: Any, layout: str, seq_axis: Any,
               out: Any = None) -> tuple[Any, Any] | None:
    """``(q_rot, k_rot)`` rotated at ``position_ids`` (when not None) or ``offset + arange(seq)``, or None where
    the general path must run. ``out``: None (new arrays), ``(q, k)`` itself (in place), or NumPy arrays of
    q's and k's shapes and dtype apart from everything else (see :func:`_host_outputs`; any other ``out``
    goes to the general path).

    q, k: ``(batch, heads, seq, head_dim)`` (``seq_axis=-2``) or ``(batch, seq, heads, head_dim)``
    (``seq_axis=-3``) NumPy arrays; ``k`` may be None. ``rope``: the :class:`~ropeflow.RotaryEmbedding`."""
    if type(layout) is not str or layout not in LAYOUTS or type(seq_axis) is not int or seq_axis not in (-2, -3):
        return None
    table_dtype = host_table_dtype(rope, q, k, seq_axis)
    if table_dtype is None:
        return None
    backend = rope._host_backend or rope._resolve_host()
    snap = host_table(rope, backend, table_dtype)
    if snap is None:
        return None
    outs = _host_outputs(out, q, k, layout, (snap.cos, snap.sin))
    if outs is None:
        return None
    dim, n_batch, n_seq = rope.dim, q.shape[0], q.shape[seq_axis]
    hot = getattr(backend, "apply_hot", None)
    if hot is not None:  # the kernel checks the positions against the table itself
        chosen = host_kernel_positions(position_ids, offset, n_batch, n_seq)
        if chosen is None:
            return None
        positions = chosen[0]
        if outs and _callers_positions(position_ids, offset):
            positions = positions_apart(positions, *outs)
        q_out, k_out = outs or _new_outputs(q, k)
        if not hot(q, q_out, k, k_out, snap.cos, snap.sin, positions, chosen[1], layout, dim, seq_axis == -3):
            return None  # nothing written: the general path grows the table or reports the positions
        return outs or (q_out, k_out)  # the caller's own pair where given, as the general path returns it
    if position_ids is None:
        rows = host_positions(offset, n_batch, n_seq)
    elif type(offset) is not int or offset != 0:  # both given: the general path refuses it
        return None
    else:
        rows = host_position_ids(position_ids, n_batch, n_seq)
    if rows is None:
        return None
    positions, longest = rows
    if snap.rows < longest or (rope.precision == "reference" and longest > _REFERENCE_MAX_POSITIONS):
        return None
    if outs and _callers_positions(position_ids, offset):
        positions = positions_apart(positions, *outs)
    q_out, k_out = outs or _new_outputs(q, k)
    if seq_axis == -2:
        backend.apply(q, q_out, snap.cos, snap.sin, positions, layout, dim, False, k=k, k_out=k_out)
    else:
        backend.apply(q.transpose(0, 2, 1, 3), q_out.transpose(0, 2, 1, 3), snap.cos, snap.sin, positions, layout,
                      dim, False, k=None if k is None else k.transpose(0, 2, 1, 3),
                      k_out=None if k is None else k_out.transpose(0, 2, 1, 3))
    return outs or (q_out, k_out)


def torch_host_apply(rope: Any, q: Any, k: Any, position_ids: Any, offset: Any, layout: str, seq_axis: Any,
                     out: Any = None) -> tuple[Any, Any] | None:
    """:func:`host_apply` for torch CPU tensors (float16, float32, float64; an int, NumPy or torch
    ``offset``): zero-copy NumPy views in, ``torch.from_numpy`` views of the results out; None where the
    general path must run.

    ``Tensor.numpy()`` itself refuses every tensor this path must not take (another device, autograd,
    bfloat16, conjugate or negative-bit views) with a TypeError or RuntimeError, so no attribute is read
    before it: each read costs a fraction of a microsecond, and a decode call has five conversions."""
    torch = sys.modules["torch"]
    if type(q) is not torch.Tensor or (k is not None and type(k) is not torch.Tensor):
        return None
    try:
        q_np = q.numpy()
        k_np = None if k is None else k.numpy()
        if type(position_ids) is torch.Tensor:
            position_ids = position_ids.numpy()
        elif type(offset) is torch.Tensor:
            offset = offset.numpy()
    except (TypeError, RuntimeError):
        return None
    if out is not None:  # in place, on the tensors' own memory: the caller's tensors are the results
        if type(out) is not tuple or len(out) != 2 or out[0] is not q or out[1] is not k:
            return None
        if inference_tensor_outside_inference_mode(q) or (k is not None and inference_tensor_outside_inference_mode(k)):
            return None  # the general path names it
        done = host_apply(rope, q_np, k_np, position_ids, offset, layout, seq_axis, (q_np, k_np))
        if done is None:
            return None
        mark_torch_written((q,) if k is None else (q, k))  # written through NumPy views: autograd must know
        return out
    done = host_apply(rope, q_np, k_np, position_ids, offset, layout, seq_axis)
    if done is None:
        return None
    return torch.from_numpy(done[0]), None if k is None else torch.from_numpy(done[1])
