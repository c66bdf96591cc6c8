"""Reading rotary settings from Hugging Face model configs (dicts, ``config.json`` files, config objects).

JSON only: nothing is executed and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

_MISSING = object()


def _field(config: Any, name: str, default: Any = _MISSING) -> Any:
    if isinstance(config, Mapping):
        value = config.get(name, _MISSING)
    else:
        value = getattr(config, name, _MISSING)
    if value is _MISSING or value is None:
        if default is _MISSING:
            raise ValueError(f"config: missing required field {name!r}")
        return default
    return value


def load_config(config: Any) -> Any:
    """A dict from a path to ``config.json``; dicts and config objects pass through."""
    if isinstance(config, (str, os.PathLike)):
        path = os.fspath(config)
        if os.path.isdir(path):
            path = os.path.join(path, "config.json")
        with open(path, encoding="utf-8") as fh:
            loaded = json.load(fh)
        if not isinstance(loaded, dict):
            raise ValueError(f"config: {path} does not hold a JSON object")
        return loaded
    if config is None or isinstance(config, (int, float, bytes, list, tuple)):
        raise TypeError(
            f"config: expected a dict, a path to config.json or a config object, got {type(config).__name__}"
        )
    return config


def rope_settings(config: Any) -> dict[str, Any]:
    """``dim``, ``max_position_embeddings``, ``base`` and ``scaling`` of a model config.

    The rotary dimension is ``qk_rope_head_dim`` (DeepSeek-V3, Kimi-K2), else ``head_dim`` times
    ``partial_rotary_factor``, else ``hidden_size // num_attention_heads`` times ``partial_rotary_factor``.
    Scaling comes from ``rope_parameters`` (newer transformers) or ``rope_scaling``; ``rope_theta`` may sit
    at the top level or inside ``rope_parameters``.
    """
    config = load_config(config)
    params = _field(config, "rope_parameters", None)
    if params is not None and not isinstance(params, Mapping):
        raise TypeError(f"config: rope_parameters must be a dict, got {type(params).__name__}")
    scaling = params if params is not None else _field(config, "rope_scaling", None)
    base = _field(config, "rope_theta", None)
    if base is None and params is not None:
        base = params.get("rope_theta")
    base = 10000.0 if base is None else base
    partial = _field(config, "partial_rotary_factor", None)
    if partial is None and params is not None:
        partial = params.get("partial_rotary_factor")
    partial = 1.0 if partial is None else float(partial)
    rope_dim = _field(config, "qk_rope_head_dim", None)
    if rope_dim is None:
        head_dim = _field(config, "head_dim", None)
        if head_dim is None:
            hidden, heads = _field(config, "hidden_size"), _field(config, "num_attention_heads")
            head_dim = int(hidden) // int(heads)
        rope_dim = int(int(head_dim) * partial)
    if scaling is not None and scaling.get("rope_type", scaling.get("type")) in (None, "default"):
        scaling = None if set(scaling) <= {"rope_type", "type", "rope_theta", "partial_rotary_factor"} else scaling
    return {
        "dim": int(rope_dim),
        "max_position_embeddings": int(_field(config, "max_position_embeddings")),
        "base": float(base),
        "scaling": dict(scaling) if scaling is not None else None,
    }


def softmax_scale(config: Any) -> float:
    """The attention softmax scale a config implies: ``q_head_dim ** -0.5``, times ``get_mscale(factor,
    mscale_all_dim) ** 2`` for YaRN configs with ``mscale_all_dim`` (DeepSeek-V3's convention).

    ``q_head_dim`` is ``qk_nope_head_dim + qk_rope_head_dim`` when both are given, else ``head_dim``, else
    ``hidden_size // num_attention_heads``.
    """
    from .scaling import yarn_softmax_scale

    config = load_config(config)
    nope, rope = _field(config, "qk_nope_head_dim", None), _field(config, "qk_rope_head_dim", None)
    if nope is not None and rope is not None:
        head_dim = int(nope) + int(rope)
    else:
        head_dim = _field(config, "head_dim", None)
        if head_dim is None:
            head_dim = int(_field(config, "hidden_size")) // int(_field(config, "num_attention_heads"))
    settings = rope_settings(config)
    scaling = settings["scaling"] or {}
    if scaling.get("rope_type", scaling.get("type")) == "yarn" and scaling.get("mscale_all_dim"):
        return yarn_softmax_scale(int(head_dim), float(scaling["factor"]), float(scaling["mscale_all_dim"]))
    return float(head_dim) ** -0.5
