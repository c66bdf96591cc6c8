"""Reading rotary settings from Hugging Face model configs (dicts, ``config.json`` files, config objects).

A config resolves here, and only here, to plain :class:`~ropeflow.RotaryEmbedding` constructor arguments
(``dim``, ``max_position_embeddings``, ``base``, ``scaling``, ``layout``). What is read:

* the language model's fields: ``text_config`` when present (Qwen2.5-VL, Gemma 3, Llama 4, Mistral 3 ...);
* the rotary dimension: ``qk_rope_head_dim`` (DeepSeek), ``rotary_dim`` (GPT-J), else ``head_dim`` (or
  ChatGLM's ``kv_channels``, or ``hidden_size // num_attention_heads``; ``n_embd`` / ``n_head`` / ``num_heads``
  accepted) times ``partial_rotary_factor`` (``rotary_pct`` in GPT-NeoX);
* the base: ``rope_theta`` (top level or in ``rope_parameters``; ``rotary_emb_base`` in GPT-NeoX; ChatGLM's
  ``10000 * rope_ratio``);
* the context: ``max_position_embeddings`` (``n_positions`` in GPT-J, ``seq_length`` in ChatGLM);
* M-RoPE: ``mrope_section`` and ``mrope_interleaved`` from the same rope dict (Qwen2-VL ships ``{"type":
  "mrope", "mrope_section": [16, 24, 24]}``; Qwen3-VL adds ``"mrope_interleaved": true``), else the model's
  transformers default (Qwen2-VL / Qwen2.5-VL ``[16, 24, 24]``; Qwen3-VL ``[24, 20, 20]`` and Qwen3.5
  ``[11, 11, 10]``, interleaved, as their rotary modules always are);
* scaling: ``rope_parameters`` (transformers 5) or ``rope_scaling``, with a top-level
  ``original_max_position_embeddings`` taking priority for llama3 / yarn / longrope, as transformers does
  (Phi-3 keeps it there);
* per-layer-type RoPE: ``rope_parameters`` nested by layer type (``{"full_attention": {...},
  "sliding_attention": {...}}``), Gemma 3's ``rope_local_base_freq`` and ModernBERT's
  ``global_rope_theta`` / ``local_rope_theta``;
* fields a file omits take the defaults of the model's transformers config class (``_model_defaults``).

JSON only: nothing is executed and nothing is downloaded.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from typing import Any

from ._model_defaults import TEXT_MODEL_TYPES, model_defaults
from .scaling import _check_number, check_dim

_MISSING = object()
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_SCALED_TYPES = ("llama3", "yarn", "longrope")
#: Keys of a rope dict that are not scaling fields.
_NON_SCALING_KEYS = ("rope_theta", "partial_rotary_factor")
DEFAULT_LAYER_TYPE = "full_attention"
#: Model types whose transformers config class lists layer types a file may leave out, all of them reading the
#: file's one rotary configuration (other models' sliding layers may have their own base: MiMo's swa_rope_theta)
_UNIFORM_LAYER_TYPES = {"gemma2": ("sliding_attention", "full_attention")}


# ------------------------------------------------------------------------------------------- loading
def load_config(config: Any) -> dict[str, Any]:
    """The config as a dict: from a path to ``config.json`` (or its folder), a dict, or a config object
    (a transformers ``PretrainedConfig`` through ``to_dict()``, any other object through its attributes).

    Errors name the path and the problem (missing file, bad JSON, bad UTF-8, not a JSON object); a string that
    looks like a Hugging Face Hub id gets a message on how to download its ``config.json``.
    """
    if isinstance(config, (str, os.PathLike)):
        return _load_path(os.fspath(config))
    if isinstance(config, Mapping):
        return dict(config)
    if config is None or isinstance(config, (bool, int, float, bytes, list, tuple, set)):
        raise TypeError(
            f"config: expected a dict, a path to config.json or a config object, got {type(config).__name__}"
        )
    to_dict = getattr(config, "to_dict", None)
    if callable(to_dict):
        loaded = to_dict()
        if not isinstance(loaded, Mapping):
            raise TypeError(f"config: {type(config).__name__}.to_dict() returned {type(loaded).__name__}, not a dict")
        return dict(loaded)
    try:
        return dict(vars(config))
    except TypeError:
        raise TypeError(
            f"config: expected a dict, a path to config.json or a config object, got {type(config).__name__}"
        ) from None


#: A config.json is a few kilobytes; reading stops past this.
_MAX_CONFIG_BYTES = 64 << 20


def _load_path(path: str) -> dict[str, Any]:
    if os.path.isdir(path):
        path = os.path.join(path, "config.json")
    elif not os.path.exists(path) and _HUB_ID.match(path) and not path.endswith(".json"):
        raise ValueError(
            f"config: {path!r} is not a local file or folder; it looks like a Hugging Face Hub id. ropeflow reads "
            "only local paths, dicts and config objects, and downloads nothing. Fetch the file first, e.g. "
            f"`huggingface-cli download {path} config.json` or `huggingface_hub.hf_hub_download({path!r}, "
            "'config.json')`, and pass the path it returns."
        )
    if os.path.exists(path) and not os.path.isfile(path):  # a FIFO would block, /dev/zero never end
        raise ValueError(f"config: {path!r} is not a regular file")
    try:
        with open(path, "rb") as fh:
            raw = fh.read(_MAX_CONFIG_BYTES + 1)
    except FileNotFoundError:
        raise FileNotFoundError(f"config: no such file {path!r}") from None
    except OSError as exc:
        raise OSError(f"config: cannot read {path!r}: {exc.strerror or exc}") from None
    if len(raw) > _MAX_CONFIG_BYTES:
        raise ValueError(f"config: {path!r} is larger than {_MAX_CONFIG_BYTES >> 20} MiB; a config.json is a few "
                         "kilobytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"config: {path!r} is not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    try:
        loaded = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"config: {path!r} is not valid JSON: {exc.msg} at line {exc.lineno}, column {exc.colno}"
                         ) from None
    except RecursionError:
        raise ValueError(f"config: {path!r} nests its JSON too deeply to read") from None
    if not isinstance(loaded, dict):
        raise ValueError(f"config: {path!r} does not hold a JSON object (got a JSON {type(loaded).__name__})")
    return loaded


def language_config(config: Any) -> dict[str, Any]:
    """The part of a config that holds the language model's fields: ``text_config`` when it is a dict, else the
    config itself. ``model_type`` falls back to the language model type of the outer config."""
    outer = load_config(config)
    inner = outer.get("text_config")
    if inner is None:
        return outer
    if not isinstance(inner, Mapping) and not hasattr(inner, "to_dict"):  # a path or a number is no text config
        raise TypeError(f"config['text_config']: expected a dict or a config object, got {inner!r} "
                        f"({type(inner).__name__})")
    inner = load_config(inner) if not isinstance(inner, Mapping) else dict(inner)
    if inner.get("model_type") is None and isinstance(outer.get("model_type"), str):
        inner["model_type"] = TEXT_MODEL_TYPES.get(outer["model_type"], outer["model_type"])
    return inner


# -------------------------------------------------------------------------------------------- fields
class _Fields:
    """Field lookup over one config dict with the model type's defaults behind it."""

    def __init__(self, cfg: Mapping[str, Any]) -> None:
        self.cfg = cfg
        self.model_type = cfg.get("model_type")
        self.defaults = model_defaults(self.model_type)

    def get(self, *names: str, default: Any = None, use_defaults: bool = True) -> Any:
        for name in names:
            value = self.cfg.get(name)
            if value is not None:
                return value
        if use_defaults:
            for name in names:
                value = self.defaults.get(name)
                if value is not None:
                    return value
        return default

    def name_of(self, *names: str) -> str:
        """The first of ``names`` the config (or its defaults) holds, for messages."""
        for name in names:
            if self.cfg.get(name) is not None or self.defaults.get(name) is not None:
                return name
        return names[0]


def _int_field(name: str, value: Any, minimum: int = 1) -> int:
    """An integer config field (an integral float such as 4096.0 is accepted; 4096.7 and bools are not)."""
    return int(_check_number(f"config['{name}']", value, minimum=minimum, integer=True))


def _partial_factor(name: str, value: Any) -> float:
    factor = _check_number(f"config['{name}']", value, minimum=0, strict=True)
    if factor > 1:
        raise ValueError(f"config['{name}']: the rotary fraction of the head must be in (0, 1], got {value!r}")
    return factor


# --------------------------------------------------------------------------------------- layer types
def _is_nested(params: Mapping[str, Any]) -> bool:
    """transformers 5 nests ``rope_parameters`` by layer type: every value a dict (or None), no rope_type."""
    return bool(params) and "rope_type" not in params and "type" not in params and all(
        v is None or isinstance(v, Mapping) for v in params.values())


def _check_agreement(params: Mapping[str, Any], scaling: Mapping[str, Any]) -> None:
    """A config with both ``rope_parameters`` (transformers 5) and ``rope_scaling`` (transformers 4) must say the
    same in both: every ``rope_scaling`` key (``type`` read as ``rope_type``) with the same value in a flat
    ``rope_parameters``. Otherwise it is ambiguous which one the model was trained with (transformers 5 takes
    ``rope_scaling`` and drops ``rope_parameters``, its ``rope_theta`` included): a ValueError naming both."""
    if _is_nested(params):
        differ = ["the layout (rope_parameters is nested by layer type)"]
    else:
        from .scaling import canonical_rope_type

        def same(key: str, a: Any, b: Any) -> bool:  # rope types by their canonical names ("su" is "longrope")
            return canonical_rope_type(a) == canonical_rope_type(b) if key == "rope_type" else a == b

        canonical = {("rope_type" if key == "type" else key): value for key, value in scaling.items()}
        params_canonical = {("rope_type" if key == "type" and "rope_type" not in params else key): value
                            for key, value in params.items()}
        differ = [repr(key) for key, value in canonical.items() if not same(key, params_canonical.get(key), value)]
    if differ:
        raise ValueError(f"config: 'rope_scaling' {dict(scaling)!r} and 'rope_parameters' {dict(params)!r} disagree "
                         f"({', '.join(differ)}); keep the one that describes the model and remove the other")


def _rope_sections(f: _Fields) -> dict[str, dict[str, Any] | None]:
    """``{layer_type: rope dict}``: the rope dict holds ``rope_type`` and scaling fields, and ``rope_theta`` /
    ``partial_rotary_factor`` where the config gives them per layer type. ``None`` marks a layer type
    without RoPE."""
    cfg = f.cfg
    params = cfg.get("rope_parameters")
    scaling = cfg.get("rope_scaling")
    for name, value in (("rope_parameters", params), ("rope_scaling", scaling)):
        if value is not None and not isinstance(value, Mapping):
            raise TypeError(f"config['{name}']: expected a dict (or null), got {value!r} ({type(value).__name__})")
    if params and scaling:
        _check_agreement(params, scaling)
    listed = cfg.get("layer_types")
    if listed is not None and (isinstance(listed, str | bytes | Mapping) or not isinstance(listed, Sequence)):
        raise TypeError(f"config['layer_types']: expected a list of layer type names (or null), got {listed!r} "
                        f"({type(listed).__name__})")
    odd = [t for t in (listed or []) if not isinstance(t, str)]
    if odd:
        raise TypeError(f"config['layer_types']: expected layer type names (strings), got {odd[0]!r} "
                        f"({type(odd[0]).__name__}) among them")
    declared = list(listed or [])
    order = list(dict.fromkeys(declared))
    local = f.get("rope_local_base_freq")  # Gemma 3's sliding-layer base (its model default: 10000)
    if local is not None:
        local = _check_number("config['rope_local_base_freq']", local, minimum=1.0, strict=True)
    if params and _is_nested(params):
        names = [t for t in order if t in params] + [t for t in params if t not in order]
        sections = {t: (None if params[t] is None else dict(params[t])) for t in names}
        if local is not None:  # Gemma 3's config class fills what a nested file leaves out, as here
            for name in ("full_attention", "sliding_attention"):
                if sections.get(name) is None and (not order or name in order):  # a type the layers use
                    sections[name] = {"rope_type": "default"}
            sliding = sections.get("sliding_attention")
            if sliding is not None and sliding.get("rope_theta") is None:
                sliding["rope_theta"] = local
        return sections
    flat = dict(params or scaling or {})  # an empty rope_parameters leaves rope_scaling in force
    if local is not None:  # Gemma 3 (transformers 4 files): a default-RoPE sliding layer with its own base
        return {"sliding_attention": {"rope_type": "default", "rope_theta": local},
                "full_attention": flat}
    if cfg.get("global_rope_theta") is not None or f.model_type == "modernbert":  # ModernBERT
        return {"full_attention": {**flat, "rope_theta": f.get("global_rope_theta")},
                "sliding_attention": {"rope_type": "default", "rope_theta": f.get("local_rope_theta")}}
    return {t: flat for t in (order or [DEFAULT_LAYER_TYPE])}


def layer_types(config: Any) -> tuple[str, ...]:
    """The layer types a config declares RoPE settings for, e.g. ``("sliding_attention", "full_attention")``
    for Gemma 3. A model with one rotary configuration gives its ``layer_types`` (or ``("full_attention",)``);
    pass any of them as ``from_hf_config(config, layer_type=...)``. Layer types without RoPE are left out."""
    sections = _rope_sections(_Fields(language_config(config)))
    return tuple(t for t, s in sections.items() if s is not None)


# ------------------------------------------------------------------------------------------ settings
def rope_settings(config: Any, layer_type: str | None = None) -> dict[str, Any]:
    """``dim``, ``max_position_embeddings``, ``base``, ``scaling``, ``layout``, ``mrope_section`` (None for
    one-axis RoPE) and ``mrope_interleaved`` of a model config (a dict, a path to ``config.json`` or a config
    object), for one layer type: :class:`~ropeflow.RotaryEmbedding` constructor arguments.

    ``layer_type=None`` is allowed when every layer type shares one rotary configuration; otherwise it is a
    ValueError that names the layer types and what differs. Field errors (a missing field, a wrong type, a value
    out of range) name the field.
    """
    f = _Fields(language_config(config))
    if f.get("alibi", use_defaults=False) is True:
        raise ValueError("config: this model uses ALiBi attention biases (alibi: true), not rotary embeddings")
    sections = _rope_sections(f)
    available = [t for t, s in sections.items() if s is not None]
    if layer_type is not None:
        if not isinstance(layer_type, str):
            raise TypeError(f"layer_type: expected a string, got {layer_type!r} ({type(layer_type).__name__})")
        if layer_type not in sections and f.cfg.get("layer_types") is None and list(sections) == [
                DEFAULT_LAYER_TYPE] and layer_type in _UNIFORM_LAYER_TYPES.get(f.model_type, ()):
            # no layer_types stated: the model's config class lists them anyway (Gemma 2's alternates sliding
            # and full layers), and every one reads the one rotary configuration
            layer_type = DEFAULT_LAYER_TYPE
        if layer_type not in sections:
            raise ValueError(f"layer_type: {layer_type!r} is not a layer type of this config; available: "
                             f"{', '.join(map(repr, available))}")
        if sections[layer_type] is None:
            raise ValueError(f"layer_type: {layer_type!r} has no rotary embedding in this config (rope parameters "
                             f"are null); layer types with RoPE: {', '.join(map(repr, available))}")
        chosen = [layer_type]
    else:
        chosen = available
    if not chosen:
        raise ValueError("config: no layer type of this config has rotary parameters")
    resolved = {t: _resolve(f, sections[t]) for t in chosen}
    distinct = {repr(_summary(s)) for s in resolved.values()}
    if len(distinct) > 1:
        detail = "; ".join(f"{t!r}: {_summary(s)}" for t, s in resolved.items())
        raise ValueError(
            f"layer_type: this config uses different rotary settings per layer type ({detail}). Pass "
            f"layer_type= one of {', '.join(map(repr, resolved))} (ropeflow.layer_types(config) lists them)."
        )
    return next(iter(resolved.values()))


def _summary(s: Mapping[str, Any]) -> dict[str, Any]:
    return {"dim": s["dim"], "base": s["base"], "scaling": s["scaling"], "mrope_section": s["mrope_section"]}


def _resolve(f: _Fields, section: Mapping[str, Any]) -> dict[str, Any]:
    section = dict(section)
    for key in ("rope_type", "type"):
        if key in section and not isinstance(section[key], str):
            raise TypeError(f"config: rope {key} must be a string, got {section[key]!r}")

    # ---- context length
    max_name = f.name_of("max_position_embeddings", "n_positions", "seq_length")
    max_pos = f.get("max_position_embeddings", "n_positions", "seq_length")
    if max_pos is None:
        raise ValueError("config: missing required field 'max_position_embeddings'")
    max_pos = _int_field(max_name, max_pos)

    # ---- base
    base = section.get("rope_theta")
    base_name = "rope_theta"
    if base is None:
        base = f.get("rope_theta", "rotary_emb_base")
        base_name = f.name_of("rope_theta", "rotary_emb_base")
    base = 10000.0 if base is None else _check_number(f"config['{base_name}']", base, minimum=1.0, strict=True)
    if f.model_type == "chatglm" or f.cfg.get("rope_ratio") is not None:
        ratio = _check_number("config['rope_ratio']", f.get("rope_ratio", default=1.0), minimum=0, strict=True)
        if not base * ratio > 1:
            raise ValueError(f"config['rope_ratio']: the base {base:g} * rope_ratio {ratio!r} = {base * ratio!r} "
                             "must be > 1")
        base = base * ratio  # ChatGLM / GLM-4 (THUDM's code): base = 10000 * rope_ratio

    # ---- rotary dimension
    rotary = f.get("qk_rope_head_dim", "rotary_dim")
    if rotary is not None:
        name = f.name_of("qk_rope_head_dim", "rotary_dim")
        dim = _int_field(name, rotary)
        head_dim = _head_dim(f, required=False) if name == "rotary_dim" else None  # GPT-J: part of each head
        if head_dim is not None and dim > head_dim:
            raise ValueError(f"config['rotary_dim']: {dim} is more than the head dim {head_dim}; it must be <= it")
    else:
        partial = section.get("partial_rotary_factor")
        partial_name = "partial_rotary_factor"
        if partial is None:
            partial = f.get("partial_rotary_factor", "rotary_pct", default=1.0)
            partial_name = f.name_of("partial_rotary_factor", "rotary_pct")
        partial = _partial_factor(partial_name, partial)
        dim = int(_head_dim(f) * partial)
    dim = check_dim(dim, "config: rotary dim (head_dim * partial_rotary_factor)")

    # ---- scaling
    scaling: dict[str, Any] | None = {k: v for k, v in section.items() if k not in _NON_SCALING_KEYS}
    rope_type = scaling.get("rope_type", scaling.get("type"))
    if rope_type in (None, "default", "mrope") and set(scaling) <= {"rope_type", "type", "mrope_section",
                                                                  "mrope_interleaved"}:
        scaling = None
    elif rope_type in _SCALED_TYPES or rope_type == "su":
        top_original = f.get("original_max_position_embeddings", use_defaults=False)
        if top_original is not None and section is not None and not _is_nested(f.cfg.get("rope_parameters") or {}):
            scaling["original_max_position_embeddings"] = top_original  # transformers: the top level wins
        elif scaling.get("original_max_position_embeddings") is None and rope_type in ("longrope", "su"):
            default_original = f.defaults.get("original_max_position_embeddings")
            if default_original is not None:
                scaling["original_max_position_embeddings"] = default_original
    mrope_section, mrope_interleaved = _mrope(f, section, dim)
    return {
        "dim": dim,
        "max_position_embeddings": max_pos,
        "base": float(base),
        "scaling": scaling,
        "layout": _layout(f),
        "mrope_section": mrope_section,
        "mrope_interleaved": mrope_interleaved,
    }


def _mrope(f: _Fields, section: Mapping[str, Any], dim: int) -> tuple[list[int] | None, bool]:
    """``(mrope_section, mrope_interleaved)`` of a rope dict, with the model's defaults behind it; checked."""
    from .positions import check_mrope

    mrope_section = section.get("mrope_section")
    if mrope_section is None:
        mrope_section = f.defaults.get("mrope_section")
    interleaved = section.get("mrope_interleaved")
    if interleaved is None:
        interleaved = f.defaults.get("mrope_interleaved", False) if mrope_section is not None else False
    try:
        sections = check_mrope(mrope_section, interleaved, dim)
    except (TypeError, ValueError) as exc:
        raise type(exc)(f"config: {exc}") from None
    return (None, False) if sections is None else (list(sections.section), sections.interleaved)


def _layout(f: _Fields) -> str:
    if f.model_type in ("deepseek_v3", "kimi_k2") and f.cfg.get("rope_interleave") is False:
        return "half"
    return f.defaults.get("layout", "half")


def _head_dim(f: _Fields, required: bool = True) -> int | None:
    """The attention head dim: ``head_dim`` (ChatGLM: ``kv_channels``), else ``hidden_size //
    num_attention_heads`` (or their GPT-2 / T5 names). Missing fields: a ValueError naming them, or None when
    not ``required``."""
    head_dim = f.get("head_dim", "kv_channels")
    if head_dim is not None:
        return _int_field(f.name_of("head_dim", "kv_channels"), head_dim)
    hidden = f.get("hidden_size", "n_embd", "d_model")
    heads = f.get("num_attention_heads", "n_head", "num_heads")
    if not required and (hidden is None or heads is None):
        return None
    if hidden is None:
        raise ValueError("config: missing required field 'hidden_size' (or 'head_dim')")
    if heads is None:
        raise ValueError("config: missing required field 'num_attention_heads' (or 'head_dim')")
    hidden_name, heads_name = f.name_of("hidden_size", "n_embd", "d_model"), \
        f.name_of("num_attention_heads", "n_head", "num_heads")
    hidden, heads = _int_field(hidden_name, hidden), _int_field(heads_name, heads)
    if hidden < heads:
        raise ValueError(f"config['{hidden_name}']: {hidden} is smaller than config['{heads_name}'] = {heads}, "
                         f"so no head has a dimension (head_dim = {hidden_name} // {heads_name}); state 'head_dim'")
    return hidden // heads


#: Model types whose attention scales by 1 (their q and k are normalized instead): transformers' Gemma 3n and 4.
_UNIT_SOFTMAX_SCALE = ("gemma3n_text", "gemma3n", "gemma4_text", "gemma4")


def softmax_scale(config: Any, layer_type: str | None = None) -> float:
    """The attention softmax scale a config implies, as transformers' attention sets it: ``q_head_dim **
    -0.5``; ``query_pre_attn_scalar ** -0.5`` where the config has one (Gemma 2 and 3); ``attention_multiplier``
    itself (Granite); 1 for Gemma 3n and 4. For multi-head latent attention (configs with ``qk_nope_head_dim``
    and ``qk_rope_head_dim``: DeepSeek-V2/V3, Kimi-K2, MiniCPM3, ...) times ``get_mscale(factor,
    mscale_all_dim) ** 2`` with YaRN's ``mscale_all_dim`` (DeepSeek's convention; other families' attention
    leaves the scale alone, YaRN or not).

    ``q_head_dim`` is ``qk_nope_head_dim + qk_rope_head_dim`` when both are given, else ``head_dim``, else
    ``hidden_size // num_attention_heads``. ``layer_type``: as for ``from_hf_config`` (configs whose layer types
    have different rotary settings need one).
    """
    from .scaling import parse_scaling, validate_scaling

    f = _Fields(language_config(config))
    pre_attn, multiplier = f.get("query_pre_attn_scalar"), f.get("attention_multiplier")
    nope, rope = f.get("qk_nope_head_dim"), f.get("qk_rope_head_dim")
    if f.model_type in _UNIT_SOFTMAX_SCALE:
        return 1.0  # whatever the rotary settings (Gemma 4's "proportional" type included)
    if pre_attn is not None:
        base = float(_check_number("config['query_pre_attn_scalar']", pre_attn, minimum=0, strict=True)) ** -0.5
    elif multiplier is not None:
        base = float(_check_number("config['attention_multiplier']", multiplier, minimum=0, strict=True))
    elif _is_mla(f):
        base = float(_int_field("qk_nope_head_dim", nope, 0) + _int_field("qk_rope_head_dim", rope)) ** -0.5
    else:
        base = float(_head_dim(f)) ** -0.5
    settings = rope_settings(config, layer_type)
    with warnings.catch_warnings():  # unknown keys: from_hf_config warns about them, once
        warnings.simplefilter("ignore")
        scaling = parse_scaling(settings["scaling"])  # validated as from_hf_config validates it
    if scaling is not None:
        validate_scaling(scaling, settings["dim"])
    m = _mla_mscale(f, scaling)
    return base * m * m  # yarn_softmax_scale's order of operations (m = 1: base itself)


def _is_mla(f: _Fields) -> bool:
    """Multi-head latent attention (DeepSeek-V2/V3 and its ports): ``qk_nope_head_dim`` and ``qk_rope_head_dim``."""
    return f.get("qk_nope_head_dim") is not None and f.get("qk_rope_head_dim") is not None


def _mla_mscale(f: _Fields, scaling: Any) -> float:
    """``get_mscale(factor, mscale_all_dim)``, which transformers' attention squares into the softmax scale of
    MLA models with YaRN's ``mscale_all_dim`` (``yarn_apply_mscale``); 1.0 for every other config."""
    from .scaling import YarnScaling, get_mscale

    if _is_mla(f) and isinstance(scaling, YarnScaling) and scaling.mscale_all_dim:
        return get_mscale(float(scaling.factor), float(scaling.mscale_all_dim))
    return 1.0


def softmax_scale_multiplier(config: Any, scaling: Any) -> float:
    """What ``config``'s attention multiplies its plain softmax scale by for the parsed ``scaling``:
    :func:`_mla_mscale` squared (DeepSeek-V3: 1.87385), else 1."""
    return _mla_mscale(_Fields(language_config(config)), scaling) ** 2


__all__ = ["language_config", "layer_types", "load_config", "rope_settings", "softmax_scale"]
