"""Prepared calls of :meth:`RotaryEmbedding.apply` for a decode loop: :meth:`RotaryEmbedding.plan`.

A decode step calls ``apply`` with q and k of the same shape, strides and dtype at every step; only the
positions change. An :class:`ApplyPlan` decides once what the hot path decides on every call (the layout,
the sequence axis, the kernel's flags, its walk over memory) and keeps the embedding's table. A call then
checks that its arrays match the plan and hands the positions to the kernel, which checks them against the
table before writing anything.

Every call that does not match, or misses the table (a position past its rows, which grows it), or is made
on another backend or array library, is the same ``rope.apply(...)`` call: results and errors never depend
on the plan.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ._hotpath import _new_outputs, host_kernel_positions, host_table, host_table_dtype
from .apply import as_4d, check_layout, check_seq_axis


class ApplyPlan:
    """``plan(q, k, position_ids, offset=...)`` is ``rope.apply(q, k, position_ids, offset=..., layout=...,
    seq_axis=...)`` with the layout and sequence axis given to :meth:`RotaryEmbedding.plan`; faster for NumPy
    arrays of the planned shapes, strides and dtype on the Numba backend. Returns new arrays ``(q_rot,
    k_rot)``. Thread-safe; the plan holds a reference to the embedding and its current table."""

    __slots__ = ("rope", "layout", "seq_axis", "_prepared", "_backend", "_table_dtype", "_tables")

    def __init__(self, rope: Any, q: Any, k: Any, layout: str | None, seq_axis: int) -> None:
        self.rope = rope
        self.layout = check_layout(rope.layout if layout is None else layout)
        self.seq_axis = check_seq_axis(seq_axis)
        self._prepared: Any = None
        self._backend: Any = None
        self._table_dtype: str | None = None
        self._tables: tuple[np.ndarray, np.ndarray] | None = None
        if type(q) is not np.ndarray or (k is not None and type(k) is not np.ndarray):
            return  # other libraries: every call is rope.apply
        for name, x in (("q", q), ("k", k)):
            if x is not None:
                as_4d(x, self.seq_axis, name)  # the same errors as apply for a q or k it cannot take
        table_dtype = host_table_dtype(rope, q, k, self.seq_axis)  # what the hot path takes
        backend = rope._host_backend or rope._resolve_host()
        prepare = getattr(backend, "prepare_apply", None)
        if prepare is None or table_dtype is None:
            return
        self._prepared = prepare(q, k, self.layout, rope.dim, self.seq_axis == -3)
        self._backend, self._table_dtype = backend, table_dtype

    def __call__(self, q: Any, k: Any = None, position_ids: Any = None, *, offset: Any = 0) -> tuple[Any, Any]:
        prepared = self._prepared
        if prepared is not None and prepared.matches(q, k):
            tables = self._tables or self._current_tables()
            chosen = None if tables is None else \
                host_kernel_positions(position_ids, offset, q.shape[0], q.shape[self.seq_axis])
            if chosen is not None:
                q_out, k_out = _new_outputs(q, k)
                if prepared(q, q_out, k, k_out, tables[0], tables[1], chosen[0], chosen[1]):
                    return q_out, k_out
        result = self.rope.apply(q, k, position_ids, offset=offset, layout=self.layout, seq_axis=self.seq_axis)
        self._tables = None  # the call may have grown the table: read it again next time
        return result

    def _current_tables(self) -> tuple[np.ndarray, np.ndarray] | None:
        """The fixed-frequency table the kernel reads, as ``(cos, sin)``, or None (not built yet, or the
        frequencies depend on the length: then every call is ``rope.apply``)."""
        snap = host_table(self.rope, self._backend, self._table_dtype)
        if snap is None:
            return None
        self._tables = (snap.cos, snap.sin)
        return self._tables
