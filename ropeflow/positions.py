"""Positions beyond a contiguous range (DESIGN 2, "Positions"): packed batches, M-RoPE, per-position tables.

Every form is normalized once per call into the one form the kernels read: ``(batch, seq)`` int64 rows of a
``(table_len, dim)`` cos/sin table.

* **Packed batches** (flash-attention's varlen form): ``x`` holds ``total_tokens`` tokens of several sequences
  back to back, and ``cu_seqlens`` (``(n_seqs + 1,)``, ``cu_seqlens[0] == 0``, non-decreasing, last entry
  ``total_tokens``) says where each starts. Token ``t`` of sequence ``i`` sits at position ``offset[i] + t -
  cu_seqlens[i]``: one ``(1, total_tokens)`` row, computed with ``searchsorted`` (no loop over sequences) by
  the array library of the input (NumPy or CuPy).
* **M-RoPE** (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): position ids of shape ``(3, batch, seq)`` (temporal, height,
  width). Frequency ``j`` (of ``dim // 2``) takes its angle from one of the three axes, chosen by
  ``mrope_section``; the per-token tables are gathered from the shared one-axis table, ``(batch * seq,
  dim)``, and the rotation then reads row ``b * seq + s`` for token ``(b, s)``.
* **Per-position tables**: ``table[position_ids]``, ``(..., dim)``.

The M-RoPE composition is transformers' (``Qwen2VLRotaryEmbedding.recomposition_frequencies`` and
``Qwen3VLTextRotaryEmbedding``'s), applied to ``dim // 2`` columns and repeated for the second half:

* contiguous (Qwen2-VL, Qwen2.5-VL): columns ``[0, s0)`` from axis 0, ``[s0, s0 + s1)`` from axis 1,
  ``[s0 + s1, dim // 2)`` from axis 2;
* interleaved (Qwen3-VL): every column from axis 0, then columns ``1, 4, 7, ... < 3 * s1`` from axis 1 and
  ``2, 5, 8, ... < 3 * s2`` from axis 2.
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from . import _xp
from ._interop import from_native, to_native

#: Positions are int64 table rows (as in :mod:`ropeflow.apply`).
MAX_POSITION = 2**63 - 1


def _is_int(value: Any) -> bool:
    return isinstance(value, (int, np.integer)) and not isinstance(value, (bool, np.bool_))


def check_offset_unused(position_ids: Any, offset: Any) -> None:
    """A ValueError naming ``offset`` when both ``position_ids`` and an ``offset`` other than the default 0 are
    given: the ids are the positions, so an offset would be dropped silently."""
    if position_ids is None:
        return
    integer_scalar = _is_int(offset) or (getattr(offset, "shape", None) == ()
                                         and getattr(getattr(offset, "dtype", None), "kind", None) in ("i", "u"))
    if integer_scalar and int(offset) == 0:  # the default, however spelled (0, np.int64(0), a 0-d array)
        return
    if integer_scalar:
        given = repr(int(offset))
    else:
        given = f"an array of shape {tuple(offset.shape)}" if hasattr(offset, "shape") else repr(offset)
    raise ValueError(f"offset: pass either position_ids or offset (positions offset + arange(seq)), not both; "
                     f"got offset {given} with position_ids")


# --------------------------------------------------------------------------------------------- packed
def _host_integers(value: Any, name: str) -> np.ndarray:
    """``value`` (a list, NumPy or CuPy array) as a host int64 array, or a TypeError naming ``name``."""
    if _xp.is_cupy(value):
        value = integer_array(_xp.cupy_module(), value, name).get()
    value = integer_array(np, value, name)
    if value.dtype == np.uint64 and value.size and int(value.max()) > MAX_POSITION:
        raise ValueError(f"{name}: values must be below 2**63, got {int(value.max())}")
    return value.astype(np.int64)


def check_cu_seqlens(cu_seqlens: Any, n_tokens: int | None = None) -> np.ndarray:
    """``cu_seqlens`` as a host int64 array ``(n_seqs + 1,)``, checked: integers, one dimension, at least one
    entry, first entry 0, non-decreasing (empty sequences allowed), last entry ``n_tokens`` when given.
    A ValueError or TypeError naming ``cu_seqlens`` otherwise. (CuPy input is read back: one small copy.)"""
    cu = _host_integers(cu_seqlens, "cu_seqlens")
    if cu.ndim != 1 or cu.shape[0] < 1:
        raise ValueError(f"cu_seqlens: expected shape (n_seqs + 1,), the cumulative sequence lengths "
                         f"[0, len0, len0 + len1, ...], got shape {cu.shape}")
    if cu[0] != 0:
        raise ValueError(f"cu_seqlens: the first entry must be 0, got {int(cu[0])}")
    steps = np.diff(cu)
    if steps.size and steps.min() < 0:
        i = int(np.argmax(steps < 0))
        raise ValueError(f"cu_seqlens: must be non-decreasing, but entry {i + 1} ({int(cu[i + 1])}) is below entry "
                         f"{i} ({int(cu[i])})")
    if n_tokens is not None and int(cu[-1]) != n_tokens:
        raise ValueError(f"cu_seqlens: the last entry is {int(cu[-1])}, but the input holds {n_tokens} tokens along "
                         "its sequence axis; it must equal the token count (for x of shape (total_tokens, heads, "
                         "head_dim) pass seq_axis=-3)")
    return cu


def check_seq_offsets(offset: Any, n_seqs: int) -> np.ndarray:
    """Per-sequence offsets for a packed batch as a host int64 array ``(n_seqs,)``: an int (the same for every
    sequence; a 0-d integer array too) or an integer array of shape ``(n_seqs,)``, each >= 0. A
    ValueError/TypeError naming ``offset``."""
    if _is_int(offset):
        if offset < 0:
            raise ValueError(f"offset: positions must be >= 0, got offset={int(offset)}")
        if offset > MAX_POSITION:
            raise ValueError(f"offset: must be below 2**63, got {int(offset)}")
        return np.full(n_seqs, int(offset), np.int64)
    if isinstance(offset, (bool, np.bool_, float, np.floating, str)) or offset is None:
        raise TypeError(f"offset: expected an int or an integer array of shape (n_seqs,) = ({n_seqs},), got "
                        f"{offset!r}")
    offsets = _host_integers(offset, "offset")
    if offsets.ndim == 0:  # a 0-d integer array (e.g. torch.tensor(5)): one offset for every sequence
        offsets = np.full(n_seqs, offsets, np.int64)
    if offsets.shape != (n_seqs,):
        raise ValueError(f"offset: with cu_seqlens expected an int or shape (n_seqs,) = ({n_seqs},), got shape "
                         f"{offsets.shape}")
    if offsets.size and offsets.min() < 0:
        raise ValueError(f"offset: positions must be >= 0, got a smallest offset of {int(offsets.min())}")
    return offsets


def _packed_rows(xp: Any, cu: np.ndarray, offsets: np.ndarray) -> Any:
    """Positions ``(total,)`` int64 in ``xp``'s library: ``offsets[i] + t - cu[i]`` for token ``t`` of
    sequence ``i``; the sequence of each token by ``searchsorted`` over the sequence ends."""
    total = int(cu[-1])
    tokens = xp.arange(total, dtype=np.int64)
    cu_x, off_x = xp.asarray(cu), xp.asarray(offsets)
    seq = xp.searchsorted(cu_x[1:], tokens, side="right")
    return tokens - cu_x[seq] + off_x[seq]


def _longest(cu: np.ndarray, offsets: np.ndarray) -> int:
    """Largest position + 1 over the non-empty sequences (0 for none), with the int64 bound checked."""
    lengths = np.diff(cu)
    nonempty = lengths > 0
    if not nonempty.any():
        return 0
    offsets, lengths = offsets[nonempty], lengths[nonempty]
    # the largest position offset + length - 1 must stay below 2**63 - 1 (the table length, one more, is an
    # int64): offset > MAX_POSITION - length, without overflow
    too_far = offsets > (MAX_POSITION - lengths)
    if too_far.any():
        i = int(np.argmax(too_far))
        raise ValueError(f"offset: positions offset + token index must be below 2**63 - 1, got offset "
                         f"{int(offsets[i])} for a sequence of {int(lengths[i])} tokens (largest position "
                         f"{int(offsets[i]) + int(lengths[i]) - 1})")
    return int((offsets + lengths).max())


def packed_positions(xp: Any, cu_seqlens: Any, offset: Any, n_batch: int, n_seq: int,
                     position_ids: Any = None) -> tuple[Any, int]:
    """``(positions, longest)`` for a packed batch: ``(1, n_seq)`` int64 table rows in ``xp``'s library (numpy
    or cupy) and the largest position + 1. Every argument is checked first (errors name ``cu_seqlens``,
    ``offset`` or ``position_ids``)."""
    if position_ids is not None:
        raise ValueError("cu_seqlens: pass either position_ids or cu_seqlens (packed positions come from "
                         "cu_seqlens and offset), not both")
    if n_batch != 1:
        raise ValueError(f"cu_seqlens: a packed input holds its tokens in one row (batch 1): shape (total_tokens, "
                         f"heads, head_dim) with seq_axis=-3, or (total_tokens, head_dim); got batch {n_batch}")
    cu = check_cu_seqlens(cu_seqlens, n_seq)
    offsets = check_seq_offsets(offset, cu.shape[0] - 1)
    longest = _longest(cu, offsets)
    return _packed_rows(xp, cu, offsets).reshape(1, n_seq), longest


def positions_from_cu_seqlens(cu_seqlens: Any, offset: Any = 0) -> Any:
    """The position of every token of a packed batch: ``(total_tokens,)`` int64.

    cu_seqlens: ``(n_seqs + 1,)`` integers, the cumulative sequence lengths ``[0, len0, len0 + len1, ...]``
        (flash-attention's ``cu_seqlens``): non-decreasing, first entry 0, last entry the token count. A list,
        a NumPy, CuPy or torch array (CPU, or CUDA through CuPy).
    offset: where each sequence's positions start (KV-cache decoding, chunked prefill): an int for all, or an
        integer array ``(n_seqs,)`` (a 0-d integer array counts as the int).

    Token ``t`` of sequence ``i`` gets ``offset[i] + t - cu_seqlens[i]``. The result is in the library and on
    the device of ``cu_seqlens`` (NumPy for a list). Computed without a Python loop over sequences.

        >>> positions_from_cu_seqlens([0, 3, 5], offset=[0, 10]).tolist()
        [0, 1, 2, 10, 11]
    """
    native, origin = to_native(cu_seqlens, "cu_seqlens")
    if not isinstance(offset, int):
        offset = to_native(offset, "offset")[0]
    cu = check_cu_seqlens(native)
    offsets = check_seq_offsets(offset, cu.shape[0] - 1)
    _longest(cu, offsets)
    total = int(cu[-1])
    too_large = MemoryError(f"cu_seqlens: {total} tokens (its last entry) need a ({total},) int64 array "
                            f"({total * 8 / 2**30:.3g} GiB), more than this machine can allocate")
    if total > sys.maxsize // 8:  # past the address space: NumPy's arange would even return an empty array
        raise too_large
    try:
        if _xp.is_cupy(native):
            with _xp.device_scope(native):
                return from_native(_packed_rows(_xp.cupy_module(), cu, offsets), origin)
        return from_native(_packed_rows(np, cu, offsets), origin)
    except MemoryError:
        raise too_large from None


# --------------------------------------------------------------------------------------------- M-RoPE
@dataclass(frozen=True)
class MropeSections:
    """How M-RoPE splits the ``dim // 2`` frequencies over the (temporal, height, width) position axes.

    section: ``(s0, s1, s2)``, summing to ``dim // 2``. interleaved: Qwen3-VL's interleaved layout (else the
    contiguous one of Qwen2-VL / Qwen2.5-VL); see the module docstring.
    """

    section: tuple[int, int, int]
    interleaved: bool

    def writes(self, half: int) -> tuple[tuple[int, slice], ...]:
        """``(axis, columns)`` pairs, applied in order, that compose the first ``half`` columns (transformers'
        order: for the interleaved form, axis 0 everywhere first, then the strided overwrites)."""
        s0, s1, s2 = self.section
        if self.interleaved:
            return ((0, slice(0, half)), (1, slice(1, min(3 * s1, half), 3)), (2, slice(2, min(3 * s2, half), 3)))
        return ((0, slice(0, s0)), (1, slice(s0, s0 + s1)), (2, slice(s0 + s1, half)))

    def axis_of_column(self, half: int) -> np.ndarray:
        """``(half,)`` int64: the position axis (0 temporal, 1 height, 2 width) that frequency ``j`` reads."""
        axes = np.zeros(half, np.int64)
        for axis, cols in self.writes(half):
            axes[cols] = axis
        return axes


def check_mrope(mrope_section: Any, mrope_interleaved: Any, dim: int) -> MropeSections | None:
    """The M-RoPE sections of a :class:`~ropeflow.RotaryEmbedding`, or None (``mrope_section=None``).

    mrope_section: three non-negative ints (temporal, height, width) summing to ``dim // 2``; a list, tuple or
    1-D integer array. mrope_interleaved: a bool. Errors name the parameter, the value and what is allowed."""
    if not isinstance(mrope_interleaved, (bool, np.bool_)):
        raise TypeError(f"mrope_interleaved: expected True or False, got {mrope_interleaved!r} "
                        f"({type(mrope_interleaved).__name__})")
    if mrope_section is None:
        if mrope_interleaved:
            raise ValueError("mrope_interleaved: True needs mrope_section (the (temporal, height, width) split of "
                             "the frequencies, e.g. [24, 20, 20] for Qwen3-VL)")
        return None
    if isinstance(mrope_section, np.ndarray):
        if mrope_section.ndim != 1:
            raise ValueError(f"mrope_section: expected three ints, got an array of shape {mrope_section.shape}")
        mrope_section = mrope_section.tolist()
    if not isinstance(mrope_section, (list, tuple)):
        raise TypeError(f"mrope_section: expected a list of three ints (temporal, height, width), got "
                        f"{mrope_section!r} ({type(mrope_section).__name__})")
    if len(mrope_section) != 3:
        raise ValueError(f"mrope_section: expected three ints (temporal, height, width), got {len(mrope_section)}: "
                         f"{list(mrope_section)!r}")
    for v in mrope_section:
        if not _is_int(v):
            raise TypeError(f"mrope_section: expected ints, got {v!r} ({type(v).__name__}) in {list(mrope_section)!r}")
        if v < 0:
            raise ValueError(f"mrope_section: entries must be >= 0, got {list(mrope_section)!r}")
    section = tuple(int(v) for v in mrope_section)
    if sum(section) != dim // 2:
        raise ValueError(f"mrope_section: {list(section)!r} sums to {sum(section)}, but it must split the dim // 2 = "
                         f"{dim // 2} frequencies of this embedding (dim={dim})")
    return MropeSections(section, bool(mrope_interleaved))  # type: ignore[arg-type]


def check_position_ids3(xp: Any, position_ids: Any, n_batch: int | None = None, n_seq: int | None = None
                        ) -> tuple[Any, int]:
    """M-RoPE ids ``(3, batch, seq)`` as int64 of ``xp``'s library, and the largest position + 1 (a CuPy array
    is reduced on the device and its maximum read back). Shape checked against ``(batch, seq)`` when given."""
    ids = integer_ids(xp, position_ids)
    if ids.ndim != 3 or ids.shape[0] != 3:
        raise ValueError(f"position_ids: M-RoPE ids must have shape (3, batch, seq), got {tuple(ids.shape)}")
    if n_batch is not None and tuple(ids.shape[1:]) != (n_batch, n_seq):
        raise ValueError(f"position_ids: shape {tuple(ids.shape)} does not match (3, batch, seq) = "
                         f"{(3, n_batch, n_seq)}")
    return ids_and_longest(ids)


def integer_ids(xp: Any, position_ids: Any) -> Any:
    """``position_ids`` as an integer array of ``xp``'s library (lists converted), or a TypeError."""
    return integer_array(xp, position_ids, "position_ids")


def integer_array(xp: Any, value: Any, name: str) -> Any:
    """``value`` as an integer array of ``xp``'s library (numpy or cupy; lists converted), or a TypeError
    naming ``name``."""
    if isinstance(value, np.generic):  # a NumPy scalar: a 0-d array (its shape is then judged by the caller)
        value = np.asarray(value)
    if not hasattr(value, "dtype"):
        if isinstance(value, (str, bytes)) or value is None:
            raise TypeError(f"{name}: expected an integer array, got {value!r}")
        try:
            value = xp.asarray(value)
        except (TypeError, ValueError, OverflowError) as exc:
            raise TypeError(f"{name}: expected an integer array, got {value!r} ({exc})") from None
        if value.size == 0 and value.dtype.kind == "f":  # [] or [[]]: no values, so no dtype of their own
            value = value.astype(np.int64)
    elif _xp.is_numpy(value) != (xp is np):
        raise TypeError(f"{name}: a {type(value).__module__} array with {xp.__name__} inputs; use one library")
    if value.dtype.kind not in "iu":
        raise TypeError(f"{name}: expected an integer array, got dtype {value.dtype}")
    return value


def ids_and_longest(ids: Any) -> tuple[Any, int]:
    """``(ids as int64, largest + 1)`` with the range checked (>= 0, below 2**63); 0 for no ids."""
    if ids.size == 0:
        return ids.astype(np.int64), 0
    lo, hi = int(ids.min()), int(ids.max())
    if lo < 0:
        raise ValueError(f"position_ids: positions must be >= 0, got a smallest position of {lo}")
    if hi > MAX_POSITION - 1:
        raise ValueError(f"position_ids: positions must be below 2**63 - 1, got a largest position of {hi}")
    return ids.astype(np.int64, copy=False), hi + 1


def compose_mrope(xp: Any, table: Any, ids3: Any, sections: MropeSections, out: Any = None) -> Any:
    """Per-token M-RoPE table ``(batch * seq, dim)`` in ``table``'s dtype: column ``j`` (and ``j + dim // 2``) of
    token ``(b, s)`` is ``table[ids3[axis(j), b, s], j]``. ``table``: ``(table_len, dim)``, every id < table_len.
    ``out``: where to write it (a new array when None)."""
    dim = int(table.shape[-1])
    half = dim // 2
    n_tokens = int(ids3.shape[1]) * int(ids3.shape[2])
    if out is None:
        out = xp.empty((n_tokens, dim), dtype=table.dtype)
    raw = _raw_view(table)
    out_raw = _raw_view(out)
    rows = ids3.reshape(3, n_tokens)
    for axis, cols in sections.writes(half):
        if cols.start >= cols.stop:
            continue
        out_raw[:, cols] = raw[rows[axis], cols]
    out_raw[:, half:] = out_raw[:, :half]
    return out


def gather_rows(xp: Any, table: Any, ids: Any, out: Any = None) -> Any:
    """``table[ids]``: shape ``ids.shape + (dim,)`` in ``table``'s dtype, written to ``out`` (a new array when
    None)."""
    if out is None:
        return _raw_view(table)[ids].view(table.dtype)
    xp.take(_raw_view(table), ids, axis=0, out=_raw_view(out))
    return out


def _raw_view(a: Any) -> Any:
    """16-bit float arrays as int16 views (CuPy has no bfloat16 indexing); others as they are."""
    return a.view(np.int16) if a.dtype.itemsize == 2 else a


def mrope_axes(mrope_section: Sequence[int], dim: int, interleaved: bool = False) -> np.ndarray:
    """``(dim // 2,)`` int64: which position axis (0 temporal, 1 height, 2 width) each frequency of an M-RoPE
    embedding reads, e.g. ``mrope_axes([1, 1, 1], 6)`` is ``[0, 1, 2]``."""
    sections = check_mrope(mrope_section, interleaved, dim)
    assert sections is not None
    return sections.axis_of_column(dim // 2)


__all__ = ["MropeSections", "check_cu_seqlens", "check_mrope", "mrope_axes", "positions_from_cu_seqlens"]
