"""``RotaryEmbedding``: configuration, validation, dynamic policy, cache and slicing, for any backend.

This module imports no array library for the caller's arrays; it goes through :mod:`ropeflow._xp`.
The math lives in :mod:`ropeflow.scaling` (frequencies) and the backends (tables).
"""

from __future__ import annotations

import sys
import threading
from collections import OrderedDict
from typing import Any

import numpy as np

from . import _xp
from ._cache import Table, shared_table
from .apply import LAYOUTS
from .backends import BACKEND_NAMES, get_backend, resolve
from .scaling import (
    PRECISIONS,
    DynamicScaling,
    Frequencies,
    LongRopeScaling,
    ScalingConfig,
    _check_number,
    as_inv_freq,
    compute_frequencies,
    is_length_dependent,
    longrope_factor_and_original,
    parse_scaling,
    validate_scaling,
)

DYNAMIC_POLICIES = ("stateless", "reference", "hf")
#: Reference precision computes positions as float32 integers: exact only below 2**24.
REFERENCE_MAX_POSITIONS = 2**24
_RECENT_DYNAMIC_TABLES = 4


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
    layout: the rotation layout of the model, ``"half"`` (LLaMA / GPT-NeoX), ``"interleaved"`` (GPT-J, ChatGLM,
        Cohere, Llama 4) or ``"deepseek"`` (DeepSeek-V3); the default of :meth:`apply`. ``from_hf_config`` sets it.
    inv_freq: use these frequencies instead of computing them, shape ``(dim // 2,)`` (a checkpoint's
        ``inv_freq`` buffer, a torch tensor, a NumPy array): tables then equal a PyTorch build from the same
        buffer (docs/math.md, "reference precision"). Stored as float32 (float64 in exact precision);
        ``attention_scaling`` still comes from ``scaling``. Not allowed with length-dependent scaling (dynamic
        NTK, LongRoPE), whose frequencies change with the length served.
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
    ) -> None:
        if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
            raise TypeError(f"dim: expected a positive even int, got {dim!r} ({type(dim).__name__})")
        if dim <= 0 or dim % 2:
            raise ValueError(f"dim: must be a positive even integer, got {dim}")
        if isinstance(max_position_embeddings, bool) or not isinstance(max_position_embeddings, (int, np.integer)):
            raise TypeError(f"max_position_embeddings: expected an int >= 1, got {max_position_embeddings!r}")
        if max_position_embeddings < 1:
            raise ValueError(f"max_position_embeddings: must be >= 1, got {max_position_embeddings}")
        base = _check_number("base", base, minimum=1.0, strict=True)
        if precision not in PRECISIONS:
            raise ValueError(f"precision: unknown precision {precision!r}; allowed: {', '.join(map(repr, PRECISIONS))}")
        if dynamic_policy not in DYNAMIC_POLICIES:
            raise ValueError(
                f"dynamic_policy: unknown policy {dynamic_policy!r}; allowed: {', '.join(map(repr, DYNAMIC_POLICIES))}"
            )
        if backend != "auto":
            if not isinstance(backend, str) or backend not in BACKEND_NAMES:
                raise ValueError(
                    f"backend: unknown backend {backend!r}; allowed: 'auto', {', '.join(map(repr, BACKEND_NAMES))}"
                )
            get_backend(backend)  # raises BackendUnavailableError with an install hint
        cfg: ScalingConfig | None = parse_scaling(scaling)
        if cfg is not None:
            validate_scaling(cfg, int(dim))
        if not isinstance(layout, str) or layout not in LAYOUTS:
            raise ValueError(f"layout: unknown layout {layout!r}; allowed: {', '.join(map(repr, LAYOUTS))}")
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
        self._requested_backend = backend
        self._backend_name = backend if backend != "auto" else None
        self._lock = threading.Lock()
        self._held: dict[tuple, Table] = {}
        # (backend, device, dtype) -> table, for configurations whose frequencies never change: a cache hit
        # then costs two dict lookups and a slice.
        self._fixed: dict[tuple, Table] = {}
        self._recent: OrderedDict[tuple, Table] = OrderedDict()
        self._freqs_by_len: dict[int | None, Frequencies] = {}
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
        embedding's ``layout`` is the model's (interleaved for GPT-J, ChatGLM, Cohere, Llama 4).
        """
        from .config import rope_settings

        s = rope_settings(config, layer_type)
        return cls(s["dim"], s["max_position_embeddings"], s["base"], scaling=s["scaling"], backend=backend,
                   precision=precision, dynamic_policy=dynamic_policy, layout=s["layout"], inv_freq=inv_freq)

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

    def __call__(self, x: Any, seq_len: int | None = None) -> tuple[Any, Any]:
        """``(cos, sin)`` of shape ``(seq_len, dim)`` in ``x.dtype``, same array library and device as ``x``.

        x: any array of shape ``(..., seq, head_dim)`` (e.g. ``(batch, heads, seq, head_dim)``); only its
            library, device and dtype are used. ``seq_len=None`` means ``x.shape[-2]``.
        """
        xp = _xp.namespace(x)
        if x.ndim < 2:
            raise ValueError(f"x: needs at least 2 dimensions (..., seq, head_dim), got shape {tuple(x.shape)}")
        dtype_name = _xp.dtype_name(x.dtype, "x.dtype")
        seq_len = int(x.shape[-2]) if seq_len is None else _check_seq_len(seq_len)
        backend = resolve(self._requested_backend, x)
        return self._serve(backend, _xp.device_key(x), seq_len, dtype_name, xp, x.dtype)

    forward = __call__

    def apply(self, q: Any, k: Any = None, position_ids: Any = None, *, offset: Any = 0, layout: str | None = None,
              seq_axis: int = -2) -> tuple[Any, Any]:
        """Rotate ``q`` and ``k`` (``(batch, heads, seq, head_dim)``; head counts may differ, as in grouped-query
        attention; ``k=None`` rotates ``q`` alone) and return ``(q_rot, k_rot)``.

        Positions are ``position_ids`` or ``offset + arange(seq)``; the largest one decides the table length,
        which follows this instance's scaling and dynamic policy. Channels past ``dim`` pass through.
        ``layout=None`` means this embedding's ``layout``.
        """
        if layout is None:
            layout = self.layout
        from .apply import as_4d, positions_of, prepare

        xp = _xp.namespace(q)
        q4 = as_4d(q, seq_axis, "q")
        # validate the positions before any table is built: a failed call caches nothing
        positions = positions_of(xp, position_ids, offset, int(q4.shape[0]), int(q4.shape[2]), sys.maxsize)
        longest = int(xp.max(positions)) + 1 if positions.size else 0
        table_dtype = "float64" if _xp.dtype_name(q.dtype, "q.dtype") == "float64" else "float32"
        backend = resolve(self._requested_backend, q)
        cos, sin = self._serve(backend, _xp.device_key(q), longest, table_dtype, xp,
                               _xp.numpy_dtype(table_dtype))
        # the (batch, seq) rows computed above serve q and k alike (k has q's batch and seq, any head count)
        kwargs = dict(layout=layout, rotary_dim=self.dim, seq_axis=seq_axis, backend=backend.name)
        q_job = prepare(q, cos, sin, positions, **kwargs)
        k_job = None if k is None else prepare(k, cos, sin, positions, **kwargs)
        q_job.run(k_job)
        return q_job.out, None if k_job is None else k_job.out

    def cos_sin(self, seq_len: int, dtype: Any = "float32") -> tuple[Any, Any]:
        """The tables for ``seq_len`` positions without an input array: NumPy arrays on host backends, CuPy
        arrays on the current device with ``backend="cupy"``."""
        seq_len = _check_seq_len(seq_len)
        dtype_name = _xp.dtype_name(dtype)
        backend = resolve(self._requested_backend)
        if backend.is_host:
            xp, xp_dtype, device = _xp.numpy_namespace(), _xp.numpy_dtype(dtype_name), "cpu"
        else:
            xp, xp_dtype, device = backend.namespace_for_current_device(dtype_name)
        return self._serve(backend, device, seq_len, dtype_name, xp, xp_dtype)

    def cache_info(self) -> dict[str, int]:
        """Totals over the tables this instance holds: ``builds``, ``rows_computed``, ``casts``, ``tables``."""
        tables = {id(t): t for t in list(self._held.values()) + list(self._recent.values())}.values()
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
            f"precision={self.precision!r}, dynamic_policy={self.dynamic_policy!r}, layout={self.layout!r})"
        )

    # ------------------------------------------------------------------------------------ internals
    def _frequencies(self, length: int | None) -> Frequencies:
        """Frequencies of this configuration when serving ``length`` positions (memoized)."""
        freqs = self._freqs_by_len.get(length)
        if freqs is None:
            freqs = compute_frequencies(self.scaling, self.dim, self.base, self.max_position_embeddings,
                                        self.precision, length)
            if length is None or len(self._freqs_by_len) < 64:
                self._freqs_by_len[length] = freqs
        return freqs

    def _storage_dtype(self, dtype_name: str) -> np.dtype:
        """float32 in reference precision; in exact mode float32 tables for float32 requests (rounded once
        from float64 by the kernel) and float64 tables for everything else."""
        if self.precision == "reference" or dtype_name == "float32":
            return np.dtype(np.float32)
        return np.dtype(np.float64)

    def _choose(self, seq_len: int) -> tuple[Frequencies, int | None]:
        """The frequencies for this call and, for exact-length tables, their length; updates policy state.

        Returns ``(freqs, exact_len)``: ``exact_len`` is None for the growable tables of fixed frequencies.
        """
        cfg = self.scaling
        L = self.max_position_embeddings
        if isinstance(cfg, LongRopeScaling):
            _, original = longrope_factor_and_original(cfg, L)
            key = seq_len if seq_len > original else None
            self.max_seq_len_cached = seq_len if self.max_seq_len_cached is None else max(
                seq_len, self.max_seq_len_cached)
            return self._frequencies(key), None
        if not isinstance(cfg, DynamicScaling):
            return self._base_freqs, None
        policy = self.dynamic_policy
        if policy == "stateless":
            self.max_seq_len_cached = seq_len
            if seq_len <= L:
                return self._base_freqs, None
            return self._frequencies(seq_len), seq_len
        if policy == "reference":
            # DeepSeek-V3: rebuild when longer than the cache; inv_freq is replaced above L and never restored.
            if self.max_seq_len_cached is None or seq_len > self.max_seq_len_cached:
                self.max_seq_len_cached = seq_len
                if seq_len > L:
                    self._dynamic_len = seq_len
        else:  # "hf": transformers' dynamic_rope_update
            if self.max_seq_len_cached is None:
                self.max_seq_len_cached = L
            if seq_len > self.max_seq_len_cached:
                self._dynamic_len = seq_len
                self.max_seq_len_cached = seq_len
            if seq_len < L and self.max_seq_len_cached > L:
                self._dynamic_len = None
                self.max_seq_len_cached = L
        if self._dynamic_len is None:
            return self._base_freqs, None
        return self._frequencies(self._dynamic_len), self._dynamic_len

    def _table(self, backend: Any, device: Any, freqs: Frequencies, exact_len: int | None, dtype_name: str
               ) -> Table:
        storage = self._storage_dtype(dtype_name)
        limit = REFERENCE_MAX_POSITIONS if self.precision == "reference" else sys.maxsize
        key = (backend.name, device, freqs.key(), storage.str, exact_len)
        table = self._held.get(key) or self._recent.get(key)
        if table is None:
            table = shared_table(backend, device, freqs, storage, limit, grow=exact_len is None)
            if exact_len is None:
                self._held[key] = table
            else:
                self._recent[key] = table
                while len(self._recent) > _RECENT_DYNAMIC_TABLES:
                    self._recent.popitem(last=False)
        return table

    def _serve(self, backend: Any, device: Any, seq_len: int, dtype_name: str, xp: Any, xp_dtype: Any
               ) -> tuple[Any, Any]:
        if self.precision == "reference" and seq_len > REFERENCE_MAX_POSITIONS:
            raise ValueError(
                f"seq_len: reference precision computes positions in float32, exact only below 2**24; got "
                f"seq_len={seq_len} (positions up to {seq_len - 1}). Use precision='exact'."
            )
        if dtype_name == "bfloat16" and not backend.is_host:
            raise TypeError("dtype: bfloat16 is not supported on the cupy backend; use float16, float32 or float64")
        fixed_key = (backend.name, device, dtype_name)
        table = self._fixed.get(fixed_key)
        if table is not None:
            result = table.get(seq_len, dtype_name, xp_dtype, xp)
            self.max_seq_len_cached = table.capacity
            return result
        with self._lock:
            freqs, exact_len = self._choose(seq_len)
            table = self._table(backend, device, freqs, exact_len, dtype_name)
            self._current = freqs
            self._backend_name = backend.name
        result = table.get(seq_len, dtype_name, xp_dtype, xp)
        if not is_length_dependent(self.scaling):
            self.max_seq_len_cached = table.capacity
            self._fixed[fixed_key] = table
        return result
