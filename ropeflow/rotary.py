"""``RotaryEmbedding``: configuration, validation, dynamic policy, cache and slicing, for any backend.

This module imports no array library for the caller's arrays; it goes through :mod:`ropeflow._xp`.
The math lives in :mod:`ropeflow.scaling` (frequencies) and the backends (tables).
"""

from __future__ import annotations

import math
import sys
import threading
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import numpy as np

from . import _xp
from ._cache import Table, live_table_arrays, publish, shared_table
from ._hotpath import host_apply, host_table_hit, torch_host_apply
from ._interop import (
    from_native,
    library_of,
    mark_written,
    to_native,
    to_native_or_none,
    torch_cpu_metadata,
    writable_native,
)
from .apply import (
    LAYOUTS,
    as_4d,
    check_input,
    check_layout,
    check_out,
    check_seq_axis,
    make_job,
    positions_apart,
    positions_of,
    shares_memory,
)
from .backends import BACKEND_NAMES, get_backend, resolve
from .plan import ApplyPlan
from .positions import check_mrope, check_offset_unused, check_position_ids3, compose_mrope, packed_positions
from .scaling import (
    DynamicScaling,
    Frequencies,
    LongRopeScaling,
    ScalingConfig,
    as_inv_freq,
    check_base,
    check_choice,
    check_dim,
    check_float32_range,
    check_max_position_embeddings,
    check_precision,
    compute_frequencies,
    is_length_dependent,
    longrope_factor_and_original,
    parse_scaling,
    validate_scaling,
)

DYNAMIC_POLICIES = ("stateless", "reference", "hf")
#: Reference precision computes positions as float32 integers: exact only below 2**24.
REFERENCE_MAX_POSITIONS = 2**24


def _check_head_dim(x: Any, dim: int, name: str) -> None:
    if int(x.shape[-1]) < dim:
        raise ValueError(f"{name}: head_dim {int(x.shape[-1])} (shape {tuple(x.shape)}) is smaller than the rotary "
                         f"dim {dim} of this embedding")


def _check_seq_len(seq_len: Any) -> int:
    if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
        raise TypeError(f"seq_len: expected a non-negative int, got {seq_len!r} ({type(seq_len).__name__})")
    if seq_len < 0:
        raise ValueError(f"seq_len: must be >= 0, got {seq_len}")
    return int(seq_len)


def _native_outs(out: Any, q: Any, k: Any) -> tuple[Any, Any]:
    """The native (NumPy/CuPy) views ``(q_out, k_out)`` of ``RotaryEmbedding.apply``'s ``out=``, checked against
    the native ``q`` and ``k`` (shape, dtype, library, writeable; ``q_out`` and ``k_out`` disjoint)."""
    if type(out) not in (tuple, list) or len(out) != 2:
        raise TypeError(f"out: expected a pair (q_out, k_out) (k_out None when k is None), got "
                        f"{type(out).__name__}")
    if (out[1] is None) != (k is None):
        raise ValueError("out: k_out must be an array exactly when k is given (out=(q_out, None) for k=None)")
    natives = []
    for name, o, x, x_name in (("out[0] (q_out)", out[0], q, "q"), ("out[1] (k_out)", out[1], k, "k")):
        if o is None:
            natives.append(None)
            continue
        if type(o) is not np.ndarray:
            o = writable_native(o, name)
        check_out(o, x, name=name, x_name=x_name)
        natives.append(o)
    q_out, k_out = natives
    if k_out is not None and shares_memory(q_out, k_out, exact=True):
        raise ValueError("out: q_out and k_out overlap in memory; pass disjoint arrays")
    return q_out, k_out


def _array_library(a: Any) -> str | None:
    """"torch", "jax", "numpy" or "cupy" for an array of those libraries; None for anything else."""
    if a is None:
        return None
    return library_of(a) or ("numpy" if isinstance(a, np.ndarray) else "cupy" if _xp.is_cupy(a) else None)


def _ndim(position_ids: Any) -> int:
    """The number of dimensions of ``position_ids`` (an array, or nested lists/tuples); 0 for None and for
    what is no array at all (ragged lists: the one-axis path then names position_ids in its error)."""
    if not isinstance(position_ids, list | tuple):
        return int(getattr(position_ids, "ndim", 0))
    try:
        return int(np.ndim(position_ids))
    except ValueError:
        return 0


def _mrope_ids_error(shape: tuple[int, ...]) -> ValueError:
    """The error for 3-D ``position_ids`` on an embedding without M-RoPE: ``(3, batch, seq)`` is M-RoPE's
    layout, any other 3-D shape is simply not one of the allowed ones."""
    if shape[0] == 3:
        return ValueError(f"position_ids: shape {shape} (3, batch, seq) is M-RoPE's; this embedding has no "
                          "mrope_section. Pass (seq,) or (batch, seq) ids, or build it with mrope_section=...")
    return ValueError(f"position_ids: expected shape (seq,) or (batch, seq), got {shape}")


class RotaryEmbedding:
    """Rotary position embedding tables (cos, sin), cached and shared, on NumPy, Numba or CuPy.

    Parameters
    ----------
    dim: rotary dimension (even, > 0). Tables have shape ``(seq_len, dim)``; columns ``j`` and
        ``j + dim // 2`` hold the same frequency (the "half" layout of LLaMA / GPT-NeoX / DeepSeek-V3).
    max_position_embeddings: ``L``, the trained context; dynamic NTK rescales beyond it.
    base: ``rope_theta`` (> 1).
    scaling: ``None`` (standard RoPE), a Hugging Face ``rope_scaling`` dict (``{"rope_type": "yarn", ...}``,
        ``"type"`` accepted) or a config dataclass from :mod:`ropeflow.scaling`.
    backend: ``"auto"`` (CuPy for CuPy inputs, else numba when installed, else numpy), ``"numpy"``,
        ``"numba"`` or ``"cupy"``.
    precision: ``"reference"`` (the PyTorch reference's float32 arithmetic, correctly rounded; positions
        < 2**24) or ``"exact"`` (float64 angles and sin/cos, rounded once: error <= 2**-24 absolute).
    dynamic_policy: for dynamic NTK, ``"stateless"`` (result depends on ``seq_len`` only), ``"reference"``
        (DeepSeek-V3's code call for call, history-dependent) or ``"hf"`` (transformers: grow, and reset
        below ``L``).
    layout: the rotation layout of the model, ``"half"`` (LLaMA / GPT-NeoX), ``"interleaved"`` (GPT-J, ChatGLM,
        Cohere, Llama 4) or ``"deepseek"`` (DeepSeek-V3); the default of :meth:`apply`. ``from_hf_config`` sets it.
    inv_freq: use these frequencies instead of computing them, shape ``(dim // 2,)`` (a checkpoint's
        ``inv_freq`` buffer, a torch tensor, a NumPy array): tables then equal a PyTorch build from the same
        buffer (docs/math.md, "reference precision"). Stored as float32 (float64 in exact precision);
        ``attention_scaling`` still comes from ``scaling``. Not allowed with length-dependent scaling (dynamic
        NTK, LongRoPE), whose frequencies change with the length served.
    mrope_section: multimodal RoPE (Qwen2-VL, Qwen2.5-VL, Qwen3-VL): three ints ``(temporal, height, width)``
        summing to ``dim // 2``: how many frequencies take their angle from each axis of ``(3, batch, seq)``
        position ids (see :mod:`ropeflow.positions`). None: one position axis.
    mrope_interleaved: Qwen3-VL's interleaved split (frequency ``j`` reads height for ``j % 3 == 1``, width for
        ``j % 3 == 2``, within ``3 * section``) instead of Qwen2-VL's contiguous blocks.
    """

    def __init__(
        self,
        dim: int,
        max_position_embeddings: int = 2048,
        base: float = 10000.0,
        *,
        scaling: Any = None,
        backend: str = "auto",
        precision: str = "reference",
        dynamic_policy: str = "stateless",
        layout: str = "half",
        inv_freq: Any = None,
        mrope_section: Sequence[int] | None = None,
        mrope_interleaved: bool = False,
    ) -> None:
        dim = check_dim(dim)
        max_position_embeddings = check_max_position_embeddings(max_position_embeddings)
        base = check_base(base)
        check_precision(precision)
        check_choice("dynamic_policy", dynamic_policy, DYNAMIC_POLICIES)
        if backend != "auto":
            check_choice("backend", backend, ("auto",) + BACKEND_NAMES)
            get_backend(backend)  # raises BackendUnavailableError with an install hint
        cfg: ScalingConfig | None = parse_scaling(scaling)
        if cfg is not None:
            validate_scaling(cfg, int(dim))
        if precision == "reference":  # with an inv_freq override the base is not used
            check_float32_range(None if inv_freq is not None else base, cfg, int(dim))
        check_choice("layout", layout, LAYOUTS)
        mrope = check_mrope(mrope_section, mrope_interleaved, int(dim))
        override = None
        if inv_freq is not None:
            if is_length_dependent(cfg):
                raise ValueError(f"inv_freq: an override cannot serve {cfg.rope_type} scaling, whose frequencies "
                                 "change with the length served; pass scaling without inv_freq")
            override = as_inv_freq(inv_freq, int(dim), precision)

        self.dim = int(dim)
        self.max_position_embeddings = int(max_position_embeddings)
        self.base = base
        self.scaling = cfg
        self.precision = precision
        self.dynamic_policy = dynamic_policy
        self.layout = layout
        self._mrope = mrope
        self.mrope_section: tuple[int, int, int] | None = None if mrope is None else mrope.section
        self.mrope_interleaved = False if mrope is None else mrope.interleaved
        self._requested_backend = backend
        self._backend_name = backend if backend != "auto" else None
        self._host_backend: Any = None  # the backend that serves host arrays, resolved on first use
        self._lock = threading.Lock()
        # (backend, device, storage dtype, frequencies, exact length) -> table, least recently used first
        self._tables: OrderedDict[tuple, Table] = OrderedDict()
        # (backend, device, storage dtype) -> the longest length asked: the group holds at most twice its rows
        self._longest: dict[tuple, int] = {}
        # (backend, device, dtype) -> table, for configurations whose frequencies never change: a cache hit
        # then costs two dict lookups and a slice.
        self._fixed: dict[tuple, Table] = {}
        self._freqs_by_len: dict[int | None, Frequencies] = {}
        if override is None:
            self._base_freqs = self._frequencies(None)
        else:  # only the attention scaling is used: a base past float32 may overflow on the way
            with np.errstate(all="ignore"):
                self._base_freqs = self._frequencies(None)
        if override is not None:
            self._base_freqs = Frequencies(override, self._base_freqs.attention_scaling)
            self._freqs_by_len[None] = self._base_freqs
        self._current = self._base_freqs
        # Dynamic-policy state: the length the current frequencies were built for (None: original).
        self._dynamic_len: int | None = None
        self.max_seq_len_cached: int | None = None

    # ----------------------------------------------------------------------------------- constructors
    @classmethod
    def from_hf_config(cls, config: Any, *, layer_type: str | None = None, backend: str = "auto",
                       precision: str = "reference", dynamic_policy: str = "stateless", inv_freq: Any = None
                       ) -> RotaryEmbedding:
        """The rotary embedding of a Hugging Face model config: a dict, a path to ``config.json`` (or its
        folder), or a config object such as a transformers ``PretrainedConfig``. JSON only, nothing executed.

        Reads the language model's fields (``text_config`` when present): ``rope_theta``,
        ``max_position_embeddings``, the rotary dimension, ``rope_scaling`` / ``rope_parameters``, the legacy
        GPT-J / GPT-NeoX / Falcon / ChatGLM names, and per-model defaults for missing fields
        (:mod:`ropeflow.config`). ``layer_type`` picks one layer type's RoPE where they differ (Gemma 3:
        ``"sliding_attention"`` or ``"full_attention"``; ``ropeflow.layer_types(config)`` lists them). The
        embedding's ``layout`` is the model's (interleaved for GPT-J, ChatGLM, Cohere, Llama 4). M-RoPE models
        (Qwen2-VL, Qwen2.5-VL, Qwen3-VL) get their ``mrope_section`` and ``mrope_interleaved``.
        """
        from .config import rope_settings

        s = rope_settings(config, layer_type)
        return cls(s["dim"], s["max_position_embeddings"], s["base"], scaling=s["scaling"], backend=backend,
                   precision=precision, dynamic_policy=dynamic_policy, layout=s["layout"], inv_freq=inv_freq,
                   mrope_section=s.get("mrope_section"), mrope_interleaved=s.get("mrope_interleaved", False))

    @classmethod
    def from_preset(cls, name: str, *, layer_type: str | None = None, backend: str = "auto",
                    precision: str = "reference", dynamic_policy: str = "stateless") -> RotaryEmbedding:
        """A shipped model preset (see ``ropeflow.presets.names()``), e.g. ``"deepseek-v3"``."""
        from . import presets

        return cls.from_hf_config(presets.load(name), layer_type=layer_type, backend=backend, precision=precision,
                                  dynamic_policy=dynamic_policy)

    # ----------------------------------------------------------------------------------- public API
    @property
    def backend(self) -> str:
        """Name of the backend in use (for ``"auto"``: the one that served the last call)."""
        if self._backend_name is None:
            self._backend_name = resolve("auto").name
        return self._backend_name

    @property
    def inv_freq(self) -> np.ndarray:
        """The frequencies in use, shape ``(dim // 2,)``: float32 (reference) or float64 (exact)."""
        return self._current.inv_freq

    @property
    def attention_scaling(self) -> float:
        """The multiplier folded into cos and sin (1.0 unless YaRN or LongRoPE)."""
        return self._current.attention_scaling

    def __call__(self, x: Any, seq_len: int | None = None, *, position_ids: Any = None) -> tuple[Any, Any]:
        """``(cos, sin)`` of shape ``(seq_len, dim)`` in ``x.dtype``, same array library and device as ``x``.

        x: any array of shape ``(..., seq, head_dim)`` (e.g. ``(batch, heads, seq, head_dim)``): NumPy, CuPy,
            a torch tensor or a JAX array; only its library, device and dtype are used. ``seq_len=None`` means
            ``x.shape[-2]``. Torch and JAX callers get views of one memoized tensor per (library, device, dtype).
        position_ids: per-position tables instead (transformers' ``rotary_emb(x, position_ids)``): integer ids
            of shape ``(seq,)`` or ``(batch, seq)`` give tables of shape ``ids.shape + (dim,)``, the rows
            ``cos[ids]`` of the shared cache; on an M-RoPE embedding, ids of shape ``(3, batch, seq)`` give the
            composed ``(batch, seq, dim)`` tables of Qwen2-VL / Qwen3-VL (2-D ids are text positions, the same
            on all three axes). New arrays in ``x``'s dtype, library and device; x's shape is not used.
        """
        if position_ids is not None:
            return self._tables_at(x, seq_len, position_ids)
        if seq_len is None and type(x) is np.ndarray:  # a table hit on a host array: the hot path, else None
            pair = host_table_hit(self, x)
            if pair is not None:
                return pair
        origin = None
        if type(x) is not np.ndarray:
            meta = torch_cpu_metadata(x) if library_of(x) == "torch" else None
            if meta is not None:  # only the dtype and shape are needed: no conversion
                dtype, _, n_seq, origin = meta
                return self._serve_host(n_seq, dtype, seq_len, origin)
            x, origin = to_native(x, "x")
        xp = _xp.namespace(x)
        if x.ndim < 2:
            raise ValueError(f"x: needs at least 2 dimensions (..., seq, head_dim), got shape {tuple(x.shape)}")
        if type(x) is np.ndarray:
            return self._serve_host(x.shape[-2], x.dtype, seq_len, origin)
        dtype_name = _xp.dtype_name(x.dtype, "x.dtype")
        seq_len = int(x.shape[-2]) if seq_len is None else _check_seq_len(seq_len)
        backend = resolve(self._requested_backend, x)
        return self._serve(backend, _xp.device_key(x), seq_len, dtype_name, xp, x.dtype, origin)

    def _serve_host(self, n_seq: int, dtype: np.dtype, seq_len: Any, origin: Any) -> tuple[Any, Any]:
        """:meth:`__call__` for a host array of ``n_seq`` positions along its sequence axis and ``dtype``."""
        dtype_name = _xp.dtype_name(dtype, "x.dtype")
        seq_len = int(n_seq) if seq_len is None else _check_seq_len(seq_len)
        backend = self._host_backend or self._resolve_host()
        if not dtype.isnative:
            dtype = dtype.newbyteorder("=")
        return self._serve(backend, "cpu", seq_len, dtype_name, _xp.numpy_namespace(), dtype, origin)

    def _resolve_host(self) -> Any:
        self._host_backend = resolve(self._requested_backend, np.empty(0))  # a TypeError for backend="cupy"
        return self._host_backend

    forward = __call__

    def _tables_at(self, x: Any, seq_len: Any, position_ids: Any) -> tuple[Any, Any]:
        """:meth:`__call__` with ``position_ids``: gathered (or M-RoPE composed) tables."""
        from .positions import compose_mrope, gather_rows, ids_and_longest, integer_ids

        if seq_len is not None:
            raise ValueError("seq_len: pass either seq_len (tables for positions 0 .. seq_len - 1) or position_ids "
                             "(per-position tables), not both")
        origin = None
        if type(x) is not np.ndarray:
            if library_of(x) == "torch" and x.requires_grad:
                x = x.detach()  # only x's dtype and device are used: hidden states that require grad are fine
            x, origin = to_native(x, "x")
        xp_ns = _xp.namespace(x)
        dtype_name = _xp.dtype_name(x.dtype, "x.dtype")
        position_ids = to_native_or_none(position_ids, "position_ids")
        backend = resolve(self._requested_backend, x)
        xp = _xp.array_module(x)
        with _xp.device_scope(x):
            ids = integer_ids(xp, position_ids)
            if ids.ndim == 3 and self._mrope is None:
                raise _mrope_ids_error(tuple(ids.shape))
            if ids.ndim not in (1, 2) and not (ids.ndim == 3 and ids.shape[0] == 3):
                allowed = "(seq,), (batch, seq) or (3, batch, seq)" if self._mrope else "(seq,) or (batch, seq)"
                raise ValueError(f"position_ids: expected shape {allowed}, got {tuple(ids.shape)}")
            dtype = x.dtype if x.dtype.isnative else x.dtype.newbyteorder("=")
            # the results first: an allocation that fails then changes nothing (not even a table's length)
            rows = (int(ids.shape[1]) * int(ids.shape[2]),) if ids.ndim == 3 else tuple(int(n) for n in ids.shape)
            try:
                outs = xp.empty(rows + (self.dim,), dtype=dtype), xp.empty(rows + (self.dim,), dtype=dtype)
            except (MemoryError, ValueError):  # ValueError: NumPy's "array is too big", past the address space
                raise MemoryError(f"position_ids: per-position tables of shape {(*tuple(ids.shape[-2:]), self.dim)} "
                                  f"need two {math.prod(rows) * self.dim * dtype.itemsize / 2**30:.3g} GiB arrays, "
                                  "more than this machine can allocate") from None
            ids, longest = ids_and_longest(ids)
        self._check_reference_positions(longest, "position_ids")

        def per_position(cos: Any, sin: Any) -> tuple[Any, Any]:
            with _xp.device_scope(x):
                if ids.ndim == 3:
                    n_batch, n_seq = int(ids.shape[1]), int(ids.shape[2])
                    return (compose_mrope(xp, cos, ids, self._mrope, outs[0]).reshape(n_batch, n_seq, self.dim),
                            compose_mrope(xp, sin, ids, self._mrope, outs[1]).reshape(n_batch, n_seq, self.dim))
                return gather_rows(xp, cos, ids, outs[0]), gather_rows(xp, sin, ids, outs[1])

        cos, sin = self._serve(backend, _xp.device_key(x), longest, dtype_name, xp_ns, dtype, name="position_ids",
                               finish=per_position)
        return from_native(cos, origin), from_native(sin, origin)

    def _check_reference_positions(self, longest: int, name: str) -> None:
        if self.precision == "reference" and longest > REFERENCE_MAX_POSITIONS:
            raise ValueError(f"{name}: the largest position is {longest - 1}, but reference precision computes "
                             "positions in float32, exact only below 2**24; use precision='exact'")

    def plan(self, q: Any, k: Any = None, *, layout: str | None = None, seq_axis: int = -2) -> ApplyPlan:
        """A prepared :meth:`apply` for repeated calls on arrays like ``q`` and ``k`` (a decode loop):
        ``step = rope.plan(q, k)``, then ``q_rot, k_rot = step(q, k, offset=offsets)`` (or ``step(q, k,
        position_ids)``) at every step. The result is exactly ``apply``'s with this ``layout`` and
        ``seq_axis``. For NumPy arrays of the planned shapes, strides and dtype on the Numba backend the call
        skips the checks and decisions ``apply`` makes each time: 0.86x ``apply``'s time for a decode step
        of 8 sequences (about 2 us) in an interleaved A/B on a 2-core machine. Any other call (another
        shape, a table miss, another library) runs ``apply`` itself, with its errors. ``layout``,
        ``seq_axis`` and q's number of dimensions are checked here (and the backend resolved for NumPy q)."""
        return ApplyPlan(self, q, k, layout, seq_axis)

    def apply(self, q: Any, k: Any = None, position_ids: Any = None, *, offset: Any = 0, layout: str | None = None,
              seq_axis: int = -2, cu_seqlens: Any = None, out: Any = None) -> tuple[Any, Any]:
        """Rotate ``q`` and ``k`` (``(batch, heads, seq, head_dim)``; head counts and head dims may differ, as in
        grouped-query attention; ``k=None`` rotates ``q`` alone) and return new arrays ``(q_rot, k_rot)``.

        ``out=(q_out, k_out)`` (``k_out`` None when ``k`` is): write the results there instead and return them;
        ``out=(q, k)`` rotates in place (no allocation: a large prefill then runs at copy speed). Each must have
        its input's shape, dtype and library and be writeable, with no two of its elements sharing memory (a
        broadcast or expanded view is refused); outputs that overlap the inputs are computed as
        if the inputs had been copied first, and ``q_out`` and ``k_out`` must not overlap each other.

        Positions are ``position_ids`` or ``offset + arange(seq)``; the largest one decides the table length,
        which follows this instance's scaling and dynamic policy. Channels past ``dim`` pass through.
        ``layout=None`` means this embedding's ``layout``. Every argument is checked before any table is built:
        a call that raises changes nothing.

        Packed batches: ``cu_seqlens`` (``(n_seqs + 1,)``) with q, k of shape ``(total_tokens, heads, head_dim)``
        and ``seq_axis=-3`` (or ``(total_tokens, head_dim)``); positions restart per sequence at ``offset`` (an
        int or ``(n_seqs,)``). M-RoPE (an embedding with ``mrope_section``): ``position_ids`` of shape ``(3,
        batch, seq)``; the per-token tables are composed once and q and k rotated by them in one kernel call.
        """
        if layout is None:
            layout = self.layout
        if cu_seqlens is None:  # a table hit on host arrays: the hot path, else None
            if type(q) is np.ndarray:
                done = host_apply(self, q, k, position_ids, offset, layout, seq_axis, out)
            elif library_of(q) == "torch":
                done = torch_host_apply(self, q, k, position_ids, offset, layout, seq_axis, out)
            else:
                done = None
            if done is not None:
                return done

        origin = None
        lib_q, lib_k = _array_library(q), _array_library(k)
        if lib_q and lib_k and lib_q != lib_k:  # once converted, both would pass as NumPy arrays
            raise TypeError(f"k: a {lib_k} array with a {lib_q} q; use one library")
        if type(q) is not np.ndarray:
            q, origin = to_native(q, "q")
        if k is not None and type(k) is not np.ndarray:
            k = to_native(k, "k")[0]
        position_ids = to_native_or_none(position_ids, "position_ids")
        if not isinstance(offset, int):
            offset = to_native_or_none(offset, "offset")
        cu_seqlens = to_native_or_none(cu_seqlens, "cu_seqlens")
        q = check_input(q, "q")
        layout = check_layout(layout)
        seq_axis = check_seq_axis(seq_axis)
        q4 = as_4d(q, seq_axis, "q")
        _check_head_dim(q, self.dim, "q")
        if k is not None:
            k = check_input(k, "k")
            if type(k) is not type(q):
                raise TypeError(f"k: a {type(k).__module__} array with a {type(q).__module__} q; use one library")
            if k.dtype != q.dtype:
                raise TypeError(f"k: dtype {k.dtype} differs from q's {q.dtype}; rotate q and k in one dtype")
            k4 = as_4d(k, seq_axis, "k")
            if (k4.shape[0], k4.shape[2]) != (q4.shape[0], q4.shape[2]):
                raise ValueError(f"k: shape {tuple(k.shape)} has (batch, seq) = {(k4.shape[0], k4.shape[2])}, q "
                                 f"shape {tuple(q.shape)} has {(q4.shape[0], q4.shape[2])}; they must be equal")
            _check_head_dim(k, self.dim, "k")
        q_out = k_out = None
        if out is not None:
            q_out, k_out = _native_outs(out, q, k)
            with _xp.device_scope(q):  # CuPy copies on the current device: make it q's
                if k is not None and shares_memory(k, q_out, exact=True):
                    k = k.copy()  # q's results would overwrite k before k is read
                if k is not None and shares_memory(q, k_out, exact=True):
                    q = q.copy()
        backend = resolve(self._requested_backend, q)
        xp = _xp.array_module(q)
        n_batch, n_seq = int(q4.shape[0]), int(q4.shape[2])
        ids3 = None
        with _xp.device_scope(q):
            if cu_seqlens is not None:
                positions, longest = packed_positions(xp, cu_seqlens, offset, n_batch, n_seq, position_ids)
                name = "cu_seqlens and offset"
            elif _ndim(position_ids) == 3:
                if self._mrope is None:
                    raise _mrope_ids_error(tuple(np.shape(position_ids)))
                check_offset_unused(position_ids, offset)
                ids3, longest = check_position_ids3(xp, position_ids, n_batch, n_seq)
                name = "position_ids"
            else:
                positions, longest = positions_of(xp, position_ids, offset, n_batch, n_seq, sys.maxsize)
                name = "offset" if position_ids is None else "position_ids"
        if longest is None:  # device position_ids: the table length needs their maximum (one device sync)
            with _xp.device_scope(q):
                longest = int(positions.max()) + 1
                if longest - 1 < 0 or int(positions.min()) < 0:
                    raise ValueError("position_ids: positions must be >= 0")
        self._check_reference_positions(longest, name)
        table_dtype = "float64" if _xp.dtype_name(q.dtype) == "float64" else "float32"
        def checked(cos: Any, sin: Any) -> tuple[Any, Any]:
            if out is not None:  # torch (and CuPy) views of cached tables are writeable: not into them
                tables = [cos, sin]
                if any(o is not None and type(o) is not np.ndarray for o in out):  # the caller's own arrays
                    # NumPy views of the (read-only) tables cannot be writeable outputs: only other libraries'
                    # outputs are compared with every shared table
                    tables += [a for a in live_table_arrays() if _xp.is_cupy(a) == _xp.is_cupy(q)]
                for out_name, o in (("out[0] (q_out)", q_out), ("out[1] (k_out)", k_out)):
                    if o is not None and any(shares_memory(o, t) for t in tables):
                        raise ValueError(f"{out_name}: shares memory with the cached cos/sin tables (a view of "
                                         "rope(...) or cos_sin(...), of this or another embedding); pass a "
                                         "separate array")
            if ids3 is None:
                return cos, sin
            with _xp.device_scope(q):  # M-RoPE: per-token tables, row b * seq + s for token (b, s)
                return compose_mrope(xp, cos, ids3, self._mrope), compose_mrope(xp, sin, ids3, self._mrope)

        cos, sin = self._serve(backend, _xp.device_key(q), longest, table_dtype, _xp.namespace(q),
                               _xp.numpy_dtype(table_dtype), name=name, finish=checked)
        if ids3 is not None:
            with _xp.device_scope(q):
                positions = xp.arange(n_batch * n_seq, dtype=np.int64).reshape(n_batch, n_seq)
        if out is not None:
            with _xp.device_scope(q):
                positions = positions_apart(positions, q_out, k_out)
        # the (batch, seq) rows computed above serve q and k alike (k has q's batch and seq, any head count)
        job_args = (seq_axis, cos, sin, positions, layout, self.dim, False)
        with _xp.device_scope(q):
            q_job = make_job(backend, q, q_out, *job_args)
            k_job = None if k is None else make_job(backend, k, k_out, *job_args)
        q_job.run(k_job)
        if out is not None:
            mark_written(*out)
            return tuple(out)
        return from_native(q_job.out, origin), None if k_job is None else from_native(k_job.out, origin)

    def cos_sin(self, seq_len: int, dtype: Any = "float32", *, like: Any = None) -> tuple[Any, Any]:
        """The tables for ``seq_len`` positions, shape ``(seq_len, dim)``, in ``dtype``.

        Without ``like``: NumPy arrays on host backends, CuPy arrays on the current device with
        ``backend="cupy"``. With ``like`` (any array: NumPy, CuPy, torch, JAX): in its library and on its
        device (its dtype is not used).
        """
        seq_len = _check_seq_len(seq_len)
        dtype_name = _xp.dtype_name(dtype)
        if like is not None:
            origin = None
            if type(like) is not np.ndarray:
                like, origin = to_native(like, "like")
            if origin is not None and origin.library == "jax" and dtype_name == "float64" \
                    and not sys.modules["jax"].config.jax_enable_x64:
                raise TypeError("dtype: float64 tables as JAX arrays need JAX's 64-bit mode "
                                "(jax.config.update('jax_enable_x64', True)); without it JAX makes them float32")
            xp = _xp.namespace(like, "like")  # first: its error names like and what it is
            backend = resolve(self._requested_backend, like)
            return self._serve(backend, _xp.device_key(like), seq_len, dtype_name, xp,
                               _xp.numpy_dtype(dtype_name), origin)
        backend = resolve(self._requested_backend)
        if backend.is_host:
            xp, xp_dtype, device = _xp.numpy_namespace(), _xp.numpy_dtype(dtype_name), "cpu"
        else:
            xp, xp_dtype, device = backend.namespace_for_current_device(dtype_name)
        return self._serve(backend, device, seq_len, dtype_name, xp, xp_dtype)

    def cache_info(self) -> dict[str, int]:
        """Totals over the tables this instance holds: ``builds``, ``rows_computed``, ``casts``, ``tables``."""
        tables = {id(t): t for t in self._tables.values()}.values()
        return {
            "tables": len(tables),
            "builds": sum(t.stats.builds for t in tables),
            "rows_computed": sum(t.stats.rows_computed for t in tables),
            "casts": sum(t.stats.casts for t in tables),
        }

    def __repr__(self) -> str:
        scaling = "None" if self.scaling is None else repr(self.scaling)
        return (
            f"RotaryEmbedding(dim={self.dim}, max_position_embeddings={self.max_position_embeddings}, "
            f"base={self.base}, scaling={scaling}, backend={self._requested_backend!r}, "
            f"precision={self.precision!r}, dynamic_policy={self.dynamic_policy!r}, layout={self.layout!r}"
            + ("" if self._mrope is None else f", mrope_section={list(self.mrope_section)!r}, "
               f"mrope_interleaved={self.mrope_interleaved!r}") + ")"
        )

    # ------------------------------------------------------------------------------------ internals
    def _frequencies(self, length: int | None) -> Frequencies:
        """Frequencies of this configuration when serving ``length`` positions (memoized)."""
        freqs = self._freqs_by_len.get(length)
        if freqs is None:
            try:
                freqs = compute_frequencies(self.scaling, self.dim, self.base, self.max_position_embeddings,
                                            self.precision, length)
            except OverflowError as exc:
                raise ValueError(f"seq_len: the frequencies for {length} positions overflow ({exc})") from None
            if not (np.all(np.isfinite(freqs.inv_freq)) and math.isfinite(freqs.attention_scaling)):
                if length is None:  # the constructor's frequencies: the configuration itself
                    raise ValueError(f"scaling: the frequencies of {self.scaling!r} are not finite in "
                                     f"{freqs.inv_freq.dtype} (a factor too small or too large?)")
                raise ValueError(f"seq_len: the frequencies for {length} positions are not finite")
            if length is None or len(self._freqs_by_len) < 64:
                self._freqs_by_len[length] = freqs
        return freqs

    def _storage_dtype(self, dtype_name: str) -> np.dtype:
        """float32 in reference precision; in exact mode float32 tables for float32 requests (rounded once
        from float64 by the kernel) and float64 tables for everything else."""
        if self.precision == "reference" or dtype_name == "float32":
            return np.dtype(np.float32)
        return np.dtype(np.float64)

    def _plan(self, seq_len: int) -> tuple[Frequencies, int | None, int | None, dict[str, Any]]:
        """What serving ``seq_len`` positions needs, without changing anything.

        Returns ``(freqs, exact_len, row_limit, state)``: ``exact_len`` is the length of an exact-length table
        (None: a growable table of fixed frequencies), ``row_limit`` caps the growth of a growable table that
        only ever serves lengths up to it (None: no cap), and ``state`` the policy attributes to commit once
        the table is in hand.
        """
        cfg = self.scaling
        L = self.max_position_embeddings
        cached = self.max_seq_len_cached
        if isinstance(cfg, LongRopeScaling):
            _, original = longrope_factor_and_original(cfg, L)
            state = {"max_seq_len_cached": seq_len if cached is None else max(seq_len, cached)}
            if seq_len > original:
                return self._frequencies(seq_len), None, None, state
            return self._frequencies(None), None, original, state
        if not isinstance(cfg, DynamicScaling):
            return self._base_freqs, None, None, {}
        policy = self.dynamic_policy
        dynamic_len = self._dynamic_len
        if policy == "stateless":
            cached, dynamic_len = seq_len, (seq_len if seq_len > L else None)
        elif policy == "reference":
            # DeepSeek-V3: rebuild when longer than the cache; inv_freq is replaced above L and never restored.
            if cached is None or seq_len > cached:
                cached = seq_len
                if seq_len > L:
                    dynamic_len = seq_len
        else:  # "hf": transformers' dynamic_rope_update
            if cached is None:
                cached = L
            if seq_len > cached:
                dynamic_len = cached = seq_len
            if seq_len < L and cached > L:
                dynamic_len, cached = None, L
        state = {"max_seq_len_cached": cached, "_dynamic_len": dynamic_len}
        if dynamic_len is None:
            return self._base_freqs, None, L, state
        return self._frequencies(dynamic_len), dynamic_len, None, state

    def _table(self, backend: Any, device: Any, freqs: Frequencies, exact_len: int | None, row_limit: int | None,
               storage: np.dtype) -> tuple[tuple, Table]:
        """This instance's table for a plan (looked up, or made and not yet kept) and its key."""
        limit = REFERENCE_MAX_POSITIONS if self.precision == "reference" else sys.maxsize
        if row_limit is not None:
            limit = min(limit, row_limit)
        key = (backend.name, device, storage.str, freqs.key(), exact_len)
        table = self._tables.get(key)
        if table is None:
            table = shared_table(backend, device, freqs, storage, limit, grow=exact_len is None)
        return key, table

    def _keep(self, key: tuple, table: Table, seq_len: int) -> None:
        """Hold ``table`` (most recently used last) and drop the least recently used others of its group
        while the group holds more than twice the rows of the longest length asked."""
        self._tables[key] = table
        self._tables.move_to_end(key)
        self._longest[key[:3]] = longest = max(seq_len, self._longest.get(key[:3], 0))
        group = [k for k in self._tables if k[:3] == key[:3]]
        rows = sum(self._tables[k].capacity for k in group)
        for k in group[:-1]:
            if rows <= 2 * longest:
                break
            rows -= self._tables.pop(k).capacity

    def _serve(self, backend: Any, device: Any, seq_len: int, dtype_name: str, xp: Any, xp_dtype: Any,
               origin: Any = None, name: str = "seq_len", finish: Any = None) -> Any:
        """``(cos, sin)`` for ``seq_len`` positions (in the ``origin``'s library when given), or what
        ``finish(cos, sin)`` makes of them (per-position gathers, checks against the tables): it runs before
        anything is committed, so that a call that raises, there or here, changes no state. ``name``: the
        argument that asked for ``seq_len`` positions, named by the MemoryError of a table too large to
        allocate."""
        try:
            return self._serve_or_raise(backend, device, seq_len, dtype_name, xp, xp_dtype, origin, finish)
        except MemoryError as exc:
            raise MemoryError(f"{name}: {exc}") from None

    def _serve_or_raise(self, backend: Any, device: Any, seq_len: int, dtype_name: str, xp: Any, xp_dtype: Any,
                        origin: Any, finish: Any) -> Any:
        """:meth:`_serve` without the name on its MemoryError."""
        fixed_key = (backend.name, device, dtype_name)
        table = self._fixed.get(fixed_key)
        if table is not None and seq_len <= table.limit:
            result = table.get(seq_len, dtype_name, xp_dtype, xp, origin)
            return result if finish is None else finish(*result)
        if self.precision == "reference" and seq_len > REFERENCE_MAX_POSITIONS:
            raise ValueError(
                f"seq_len: reference precision computes positions in float32, exact only below 2**24; got "
                f"seq_len={seq_len} (positions up to {seq_len - 1}). Use precision='exact'."
            )
        with self._lock:
            freqs, exact_len, row_limit, state = self._plan(seq_len)
            key, table = self._table(backend, device, freqs, exact_len, row_limit, self._storage_dtype(dtype_name))
            result = table.get(seq_len, dtype_name, xp_dtype, xp, origin)  # may raise: nothing committed yet
            if finish is not None:
                result = finish(*result)  # may raise too
            publish(table)
            self._keep(key, table, seq_len)
            for name, value in state.items():
                setattr(self, name, value)
            self._current = freqs
            self._backend_name = backend.name
            if not is_length_dependent(self.scaling):
                self._fixed[fixed_key] = table
        return result

    @property
    def max_seq_len_cached(self) -> int | None:
        """The seed's attribute: for fixed frequencies the rows of the largest table held; for dynamic NTK and
        LongRoPE the policy's own record. None before the first call."""
        if not is_length_dependent(self.scaling):
            return max((t.capacity for t in self._tables.values()), default=None)
        return self._max_seq_len_cached

    @max_seq_len_cached.setter
    def max_seq_len_cached(self, value: int | None) -> None:
        self._max_seq_len_cached = value
