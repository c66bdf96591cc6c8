"""What a model config implies for its rotary embedding: the numbers behind ``ropeflow inspect`` and ``ropeflow plot``.

Pure functions over the public API; nothing here builds a table. A config is a preset name, a path to a
``config.json`` (or its folder), or a dict. Layout and layer types come from ``RotaryEmbedding.layout``,
``ropeflow.layer_types`` and ``RotaryEmbedding.from_hf_config(config, layer_type=...)``.
"""

from __future__ import annotations

import math
import os
from collections import Counter
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np

from . import presets
from .config import language_config, layer_types, load_config, softmax_scale, softmax_scale_multiplier
from .rotary import RotaryEmbedding
from .scaling import (
    DynamicScaling,
    LongRopeScaling,
    compute_frequencies,
    longrope_factor_and_original,
    standard_inv_freq,
)


def resolve_target(target: str) -> tuple[str, dict[str, Any]]:
    """``(label, config dict)`` of a preset name, a ``config.json`` path or a folder holding one.

    Raises ``ValueError`` naming the target and the allowed presets when it is neither.
    """
    if target in presets.names():
        return target, presets.load(target)
    if os.path.isdir(target) and not os.path.isfile(os.path.join(target, "config.json")):
        raise ValueError(f"target: folder {target!r} holds no config.json")
    if os.path.exists(target):
        try:
            return target, load_config(target)
        except UnicodeDecodeError as exc:
            raise ValueError(f"target: {target!r} is not a JSON text file ({exc.reason})") from None
        except ValueError as exc:  # json.JSONDecodeError is a ValueError
            msg = str(exc)
            raise ValueError(msg if msg.startswith("config:") else f"target: {target!r} is not valid JSON: {msg}"
                             ) from None
    raise ValueError(
        f"target: {target!r} is neither a preset ({', '.join(presets.names())}) nor an existing config.json "
        "file or folder"
    )


@dataclass(frozen=True)
class RopeReport:
    """The rotary facts of one config (one layer type), as ``ropeflow inspect`` prints them.

    Contexts are in positions; for dynamic NTK, which has no upper length, ``extended_context`` is the
    nominal ``factor * max_position_embeddings``. Wavelengths are ``2 pi * position_divisor / inv_freq`` in
    positions, from exact-precision frequencies at the extended context.
    """

    label: str
    rope_type: str
    dim: int
    base: float
    original_context: int
    original_context_stated: bool
    extended_context: int
    extended_note: str
    attention_scaling: float
    softmax_scale_multiplier: float
    softmax_scale: float | None
    layout: str
    wavelength_shortest: float
    wavelength_longest: float
    wavelengths_beyond_original: int
    n_frequencies: int
    layer_type: str | None = None
    layer_types: list[str] | None = None
    rope_layer_types: list[str] = field(default_factory=list)
    scaling: dict[str, Any] = field(default_factory=dict)

    def as_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        return asdict(self)


def _contexts(rope: RotaryEmbedding) -> tuple[int, bool, int, str]:
    """``(original, original_stated, extended, note)`` for the rotary embedding of a config."""
    cfg, L = rope.scaling, rope.max_position_embeddings
    if isinstance(cfg, LongRopeScaling):
        _, original = longrope_factor_and_original(cfg, L)
        return original, cfg.original_max_position_embeddings is not None, L, "max_position_embeddings"
    if isinstance(cfg, DynamicScaling):
        note = "nominal: factor x max_position_embeddings; the base grows with any length served"
        return L, True, int(round(cfg.factor * L)), note
    original = getattr(cfg, "original_max_position_embeddings", None)
    if original is not None:
        return int(original), True, L, "max_position_embeddings"
    return L, False, L, "max_position_embeddings"


def spectrum(rope: RotaryEmbedding, seq_len: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """``(wavelength, interpolation)`` per frequency ``j``, both shape ``(dim // 2,)``, in float64.

    wavelength: ``2 pi * position_divisor / inv_freq[j]`` in positions, for ``seq_len`` positions served
        (``None``: the extended context).
    interpolation: how much the scaling stretched that wavelength: scaled over unscaled (1 means
        unchanged, ``factor`` means fully interpolated).
    """
    extended = seq_len is None
    if seq_len is None:
        seq_len = _contexts(rope)[2]
    try:
        freqs = compute_frequencies(rope.scaling, rope.dim, rope.base, rope.max_position_embeddings, "exact",
                                    seq_len)
    except ValueError:
        if not extended:
            raise
        # the extended context comes from the config: name the field that made it overflow
        factor = getattr(rope.scaling, "factor", None)
        raise ValueError(f"scaling['factor']: the frequencies overflow at the extended context ({float(seq_len):.3g} "
                         f"positions, max_position_embeddings times factor {factor!r})") from None
    wavelength = 2 * math.pi * freqs.position_divisor / np.asarray(freqs.inv_freq, np.float64)
    plain = 2 * math.pi / standard_inv_freq(rope.dim, rope.base, "exact")
    return wavelength, wavelength / plain


def _per_layer_types(config: dict[str, Any]) -> list[str] | None:
    """The config's per-layer ``layer_types`` list (under ``text_config`` for multimodal configs), if stated."""
    raw = language_config(config).get("layer_types")
    return [str(t) for t in raw] if isinstance(raw, list) and raw else None


def _from_config(config: dict[str, Any], layer_type: str | None) -> RotaryEmbedding:
    # exact: the report's figures are float64 (the same for every shipped preset in either precision), and a
    # config past float32's range is still described
    return RotaryEmbedding.from_hf_config(config, layer_type=layer_type, backend="numpy", precision="exact")


def report(label: str, config: dict[str, Any], layer_type: str | None = None) -> RopeReport:
    """The :class:`RopeReport` of ``config`` (for ``layer_type`` when given and supported)."""
    rope = _from_config(config, layer_type)
    cfg = rope.scaling
    original, stated, extended, note = _contexts(rope)
    wavelength, _ = spectrum(rope)
    multiplier = softmax_scale_multiplier(config, cfg)
    try:
        scale: float | None = softmax_scale(config, layer_type)
    except (ValueError, TypeError, KeyError):  # the config does not state its query head dimension
        scale = None
    scaling = {} if cfg is None else {k: v for k, v in asdict(cfg).items() if v is not None}
    return RopeReport(
        label=label,
        rope_type="default" if cfg is None else cfg.rope_type,
        dim=rope.dim,
        base=rope.base,
        original_context=original,
        original_context_stated=stated,
        extended_context=extended,
        extended_note=note,
        attention_scaling=float(rope.attention_scaling),
        softmax_scale_multiplier=float(multiplier),
        softmax_scale=scale,
        layout=rope.layout,
        wavelength_shortest=float(wavelength.min()),
        wavelength_longest=float(wavelength.max()),
        wavelengths_beyond_original=int((wavelength > original).sum()),
        n_frequencies=int(wavelength.size),
        layer_type=layer_type,
        layer_types=_per_layer_types(config),
        rope_layer_types=list(layer_types(config)),
        scaling=scaling,
    )


def reports(label: str, config: dict[str, Any]) -> list[RopeReport]:
    """One report when every layer type shares one rotary configuration, else one per layer type
    (Gemma 3's sliding and full attention, transformers 5's per-type ``rope_parameters``)."""
    try:
        return [report(label, config)]
    except ValueError:
        types = layer_types(config)
        if len(types) < 2:
            raise
        return [report(label, config, t) for t in types]


def _count_summary(types: list[str]) -> str:
    counts = Counter(types)
    return ", ".join(f"{name} x {n}" for name, n in counts.items()) + f" ({len(types)} layers)"


def format_report(rep: RopeReport) -> str:
    """The human-readable lines of one report."""
    title = rep.label + (f" [layer type {rep.layer_type}]" if rep.layer_type else "")
    original = f"{rep.original_context}" + ("" if rep.original_context_stated else
                                             " (not stated: taken as max_position_embeddings)")
    if rep.softmax_scale is not None:
        softmax = f"x {rep.softmax_scale_multiplier:.6g} (softmax scale {rep.softmax_scale:.6g})"
    else:
        softmax = f"x {rep.softmax_scale_multiplier:.6g} (query head dim not stated)"
    if rep.layer_types:
        layers = _count_summary(rep.layer_types)
    elif len(rep.rope_layer_types) > 1:
        layers = ", ".join(rep.rope_layer_types) + " (the per-layer list is not stated)"
    else:
        layers = "not stated (one rotary config for every layer)"
    scaling = ", ".join(f"{k}={v}" for k, v in rep.scaling.items() if k != "rope_type") or "none"
    rows = [
        ("rope type", rep.rope_type),
        ("scaling (resolved)", scaling),
        ("rotary dim", f"{rep.dim} ({rep.n_frequencies} frequencies)"),
        ("base (rope_theta)", f"{rep.base:g}"),
        ("original context", original),
        ("extended context", f"{rep.extended_context} ({rep.extended_note})"),
        ("attention scaling", f"{rep.attention_scaling:.6g} (folded into cos and sin)"),
        ("softmax-scale multiplier", softmax),
        ("layout", rep.layout),
        ("shortest wavelength", f"{rep.wavelength_shortest:.6g} positions"),
        ("longest wavelength", f"{rep.wavelength_longest:.6g} positions"),
        ("beyond original context", f"{rep.wavelengths_beyond_original} of {rep.n_frequencies} wavelengths"),
        ("layer types", layers),
    ]
    width = max(len(k) for k, _ in rows)
    return "\n".join([title] + [f"  {k:<{width}}  {v}" for k, v in rows])
