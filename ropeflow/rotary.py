"""``RotaryEmbedding``: configuration, validation, dynamic policy, cache and slicing, for any backend.

This module imports no array library for the caller's arrays; it goes through :mod:`ropeflow._xp`.
The math lives in :mod:`ropeflow.scaling` (frequencies) and the backends (tables).
"""

from __future__ import annotations

import math
import sys
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from . import _xp
from ._cache import Table, publish, shared_table
from ._interop import from_native, library_of, to_native, to_native_or_none, torch_cpu_metadata
from .backends import BACKEND_NAMES, get_backend, resolve
from .scaling import (
    PRECISIONS,
    DynamicScaling,
    Frequencies,
    LongRopeScaling,
    ScalingConfig,
    _check_number,
    compute_frequencies,
    is_length_dependent,
    longrope_factor_and_original,
    parse_scaling,
    validate_scaling,
)

DYNAMIC_POLICIES = ("stateless", "reference", "hf")
#: Reference precision computes positions as float32 integers: exact only below 2**24.
REFERENCE_MAX_POSITIONS = 2**24
#: Bounds of the constructor's integers (beyond them nothing can be allocated or represented).
MAX_DIM = 2**16
MAX_POSITIONS = 2**62


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of the ``allowed`` strings: a TypeError for a non-string, else a ValueError."""
    listed = ", ".join(map(repr, allowed))
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {listed}, got {value!r} ({type(value).__name__})")
    if value not in allowed:
        raise ValueError(f"{name}: unknown {name.replace('_', ' ')} {value!r}; allowed: {listed}")
    return value


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
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"dim: expected a positive even int, got {dim!r} ({type(dim).__name__})")
        if dim <= 0 or dim % 2 or dim > MAX_DIM:
            raise ValueError(f"dim: must be a positive even integer <= {MAX_DIM}, got {dim}")
        if isinstance(max_position_embeddings, bool) or not isinstance(max_position_embeddings, (int, np.integer)):
            raise TypeError(f"max_position_embeddings: expected an int >= 1, got {max_position_embeddings!r}")
        if not 1 <= max_position_embeddings <= MAX_POSITIONS:
            raise ValueError(f"max_position_embeddings: must be >= 1 and <= 2**62, got {max_position_embeddings}")
        base = _check_number("base", base, minimum=1.0, strict=True)
        check_choice("precision", precision, PRECISIONS)
        check_choice("dynamic_policy", dynamic_policy, DYNAMIC_POLICIES)
        if backend != "auto":
            check_choice("backend", backend, ("auto",) + BACKEND_NAMES)
            get_backend(backend)  # raises BackendUnavailableError with an install hint
        cfg: ScalingConfig | None = parse_scaling(scaling)
        if cfg is not None:
            validate_scaling(cfg, int(dim))

        self.dim = int(dim)
        self.max_position_embeddings = int(max_position_embeddings)
        self.base = base
        self.scaling = cfg
        self.precision = precision
        self.dynamic_policy = dynamic_policy
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
        self._base_freqs = self._frequencies(None)
        self._current = self._base_freqs
        # Dynamic-policy state: the length the current frequencies were built for (None: original).
        self._dynamic_len: int | None = None
        self.max_seq_len_cached: int | None = None

    # ----------------------------------------------------------------------------------- constructors
    @classmethod
    def from_hf_config(cls, config: Any, *, backend: str = "auto", precision: str = "reference",
                       dynamic_policy: str = "stateless") -> RotaryEmbedding:
        """The rotary embedding of a Hugging Face model config: a dict, a path to ``config.json`` (or its
        folder), or a config object such as a transformers ``PretrainedConfig``. JSON only, nothing executed.

        Reads ``rope_theta``, ``max_position_embeddings``, the rotary dimension (``qk_rope_head_dim``, else
        ``head_dim * partial_rotary_factor``, else ``hidden_size // num_attention_heads * partial_rotary_factor``)
        and ``rope_scaling`` / ``rope_parameters``.
        """
        from .config import rope_settings

        s = rope_settings(config)
        return cls(s["dim"], s["max_position_embeddings"], s["base"], scaling=s["scaling"], backend=backend,
                   precision=precision, dynamic_policy=dynamic_policy)

    @classmethod
    def from_preset(cls, name: str, *, backend: str = "auto", precision: str = "reference",
                    dynamic_policy: str = "stateless") -> RotaryEmbedding:
        """A shipped model preset (see ``ropeflow.presets.names()``), e.g. ``"deepseek-v3"``."""
        from . import presets

        return cls.from_hf_config(presets.load(name), backend=backend, precision=precision,
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

    def __call__(self, x: Any, seq_len: int | None = None) -> tuple[Any, Any]:
        """``(cos, sin)`` of shape ``(seq_len, dim)`` in ``x.dtype``, same array library and device as ``x``.

        x: any array of shape ``(..., seq, head_dim)`` (e.g. ``(batch, heads, seq, head_dim)``): NumPy, CuPy,
            a torch tensor or a JAX array; only its library, device and dtype are used. ``seq_len=None`` means
            ``x.shape[-2]``. Torch and JAX callers get views of one memoized tensor per (library, device, dtype).
        """
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

    def apply(self, q: Any, k: Any = None, position_ids: Any = None, *, offset: Any = 0, layout: str = "half",
              seq_axis: int = -2) -> tuple[Any, Any]:
        """Rotate ``q`` and ``k`` (``(batch, heads, seq, head_dim)``; head counts and head dims may differ, as in
        grouped-query attention; ``k=None`` rotates ``q`` alone) and return new arrays ``(q_rot, k_rot)``.

        Positions are ``position_ids`` or ``offset + arange(seq)``; the largest one decides the table length,
        which follows this instance's scaling and dynamic policy. Channels past ``dim`` pass through. Every
        argument is checked before any table is built: a call that raises changes nothing.
        """
        from .apply import as_4d, check_input, check_layout, check_seq_axis, make_job, positions_of

        origin = None
        if type(q) is not np.ndarray:
            q, origin = to_native(q, "q")
        if k is not None and type(k) is not np.ndarray:
            k = to_native(k, "k")[0]
        position_ids = to_native_or_none(position_ids, "position_ids")
        if not isinstance(offset, int):
            offset = to_native_or_none(offset, "offset")
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
        backend = resolve(self._requested_backend, q)
        with _xp.device_scope(q):
            positions, longest = positions_of(_xp.array_module(q), position_ids, offset, int(q4.shape[0]),
                                              int(q4.shape[2]), sys.maxsize)
        if longest is None:  # device position_ids: the table length needs their maximum (one device sync)
            longest = int(positions.max()) + 1
            if longest - 1 < 0 or int(positions.min()) < 0:
                raise ValueError("position_ids: positions must be >= 0")
        if self.precision == "reference" and longest > REFERENCE_MAX_POSITIONS:
            name = "offset" if position_ids is None else "position_ids"
            raise ValueError(f"{name}: the largest position is {longest - 1}, but reference precision computes "
                             "positions in float32, exact only below 2**24; use precision='exact'")
        table_dtype = "float64" if _xp.dtype_name(q.dtype) == "float64" else "float32"
        cos, sin = self._serve(backend, _xp.device_key(q), longest, table_dtype, _xp.namespace(q),
                               _xp.numpy_dtype(table_dtype))
        # the (batch, seq) rows computed above serve q and k alike (k has q's batch and seq, any head count)
        job_args = (seq_axis, cos, sin, positions, layout, self.dim, False)
        with _xp.device_scope(q):
            q_job = make_job(backend, q, None, *job_args)
            k_job = None if k is None else make_job(backend, k, None, *job_args)
        q_job.run(k_job)
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
            backend = resolve(self._requested_backend, like)
            xp = _xp.namespace(like, "like")
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
            f"precision={self.precision!r}, dynamic_policy={self.dynamic_policy!r})"
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
               origin: Any = None) -> tuple[Any, Any]:
        """``(cos, sin)`` for ``seq_len`` positions (in the ``origin``'s library when given); a call that raises
        changes no state."""
        fixed_key = (backend.name, device, dtype_name)
        table = self._fixed.get(fixed_key)
        if table is not None and seq_len <= table.limit:
            return table.get(seq_len, dtype_name, xp_dtype, xp, origin)
        if self.precision == "reference" and seq_len > REFERENCE_MAX_POSITIONS:
            raise ValueError(
                f"seq_len: reference precision computes positions in float32, exact only below 2**24; got "
                f"seq_len={seq_len} (positions up to {seq_len - 1}). Use precision='exact'."
            )
        with self._lock:
            freqs, exact_len, row_limit, state = self._plan(seq_len)
            key, table = self._table(backend, device, freqs, exact_len, row_limit, self._storage_dtype(dtype_name))
            result = table.get(seq_len, dtype_name, xp_dtype, xp, origin)  # may raise: nothing committed yet
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
