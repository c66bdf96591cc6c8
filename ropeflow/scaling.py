"""RoPE frequency scaling: one pure function per ``rope_type``, returning the frequencies every backend uses.

Each variant maps a configuration to a :class:`Frequencies` record, ``(inv_freq, attention_scaling,
position_divisor)``; the tables are then

    angle[p, j] = (p / position_divisor) * inv_freq[j]
    cos[p, :]   = attention_scaling * cos(concat(angle[p], angle[p]))

so a kernel never knows which variant it serves. ``inv_freq`` is computed here, on the host, once:

* ``precision="reference"``: float32, each float32 step of the PyTorch reference code correctly rounded
  (``base`` cast to float32 as PyTorch does for ``python_float ** float32_tensor``; the power taken in
  float64 and rounded once; IEEE float32 multiply, divide, add for the rest, in the reference's order).
* ``precision="exact"``: the same formulas in float64.

Linear scaling follows transformers' recipe (``inv_freq / factor``), so ``position_divisor`` is 1 for every
registered variant; it stays in :class:`Frequencies` for callers that divide positions themselves.

The registry :data:`ROPE_INIT_FUNCTIONS` is keyed by the transformers names: ``default``, ``linear``,
``ntk``, ``dynamic``, ``yarn``, ``llama3``, ``longrope``. Configurations come as Hugging Face
``rope_scaling`` / ``rope_parameters`` dicts (``"type"`` is an alias of ``"rope_type"``) or as the small
frozen dataclasses below, which are hashable so they can key the shared table cache.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, Literal

import numpy as np

Precision = Literal["reference", "exact"]
PRECISIONS = ("reference", "exact")


# --------------------------------------------------------------------------------------------- results
@dataclass(frozen=True, eq=False)
class Frequencies:
    """What a table kernel needs.

    inv_freq: shape ``(dim // 2,)``, float32 (reference precision) or float64 (exact), radians per position.
    attention_scaling: multiplier folded into cos and sin (YaRN's mscale ratio, LongRoPE's factor; else 1).
    position_divisor: positions are divided by it before the product (1 for every registered variant:
        linear scaling divides ``inv_freq``, as transformers does).
    """

    inv_freq: np.ndarray
    attention_scaling: float = 1.0
    position_divisor: float = 1.0

    def __post_init__(self) -> None:
        self.inv_freq.flags.writeable = False
        key = (self.inv_freq.dtype.str, self.inv_freq.tobytes(), float(self.attention_scaling),
               float(self.position_divisor))
        object.__setattr__(self, "_key", key)

    def key(self) -> tuple:
        """A hashable identity: equal keys give bit-identical tables."""
        return self._key


# -------------------------------------------------------------------------------------- configurations
class _Validated:
    """Mixin: a scaling dataclass validates its fields on construction (ValueError / TypeError naming the field)."""

    def __post_init__(self) -> None:
        validate_scaling(self)  # type: ignore[arg-type]


@dataclass(frozen=True)
class LinearScaling(_Validated):
    """Position interpolation, as transformers computes it: ``inv_freq / factor`` (equivalent to dividing the
    positions by ``factor``, with transformers' rounding)."""

    factor: float
    rope_type: str = "linear"


@dataclass(frozen=True)
class NTKScaling(_Validated):
    """Static NTK-aware scaling: ``base * factor ** (dim / (dim - 2))`` at every length."""

    factor: float
    rope_type: str = "ntk"


@dataclass(frozen=True)
class DynamicScaling(_Validated):
    """Dynamic NTK (DESIGN 1.2): for ``seq_len > L`` the base grows with the length served."""

    factor: float
    rope_type: str = "dynamic"


@dataclass(frozen=True)
class YarnScaling(_Validated):
    """YaRN as DeepSeek-V3 and Kimi-K2 use it (transformers' ``_compute_yarn_parameters``).

    The ramp between interpolated (``inv_freq / factor``) and original frequencies runs over the dimension
    range where a frequency makes between ``beta_slow`` and ``beta_fast`` turns within
    ``original_max_position_embeddings`` positions.

    Two different "mscale" numbers appear in these configs, and they do different jobs:

    * ``mscale`` scales the **cos/sin tables** (through ``attention_scaling``): the tables are multiplied by
      ``get_mscale(factor, mscale) / get_mscale(factor, mscale_all_dim)``. With DeepSeek-V3's and Kimi-K2's
      ``mscale == mscale_all_dim == 1`` that ratio is exactly 1.0: their tables are *not* scaled.
    * ``mscale_all_dim`` also enters the model's **attention softmax scale**:
      ``head_dim ** -0.5 * get_mscale(factor, mscale_all_dim) ** 2`` (see :func:`yarn_softmax_scale`), applied
      to all of q·k, rotary and non-rotary channels alike. That is where the YaRN temperature lives in
      DeepSeek-V3; forgetting it is a silent accuracy bug.

    ``attention_factor``, when given, replaces the mscale ratio. Without ``mscale_all_dim`` the ratio is
    ``get_mscale(factor, mscale)`` (the YaRN paper's ``0.1 ln(factor) + 1`` for ``mscale == 1``).
    ``truncate=False`` keeps the correction range unrounded (transformers' ``truncate`` option).
    ``original_max_position_embeddings=None`` means the embedding's ``max_position_embeddings``.
    """

    factor: float
    original_max_position_embeddings: int | None = None
    beta_fast: float = 32.0
    beta_slow: float = 1.0
    mscale: float = 1.0
    mscale_all_dim: float = 0.0
    attention_factor: float | None = None
    truncate: bool = True
    rope_type: str = "yarn"


@dataclass(frozen=True)
class Llama3Scaling(_Validated):
    """Llama 3.1's frequency-dependent scaling (transformers' ``_compute_llama3_parameters``)."""

    factor: float
    low_freq_factor: float
    high_freq_factor: float
    original_max_position_embeddings: int
    rope_type: str = "llama3"


@dataclass(frozen=True)
class LongRopeScaling(_Validated):
    """LongRoPE (Phi-3, Phi-3.5, Phi-4-mini), as transformers' ``_compute_longrope_parameters``.

    ``short_factor`` (one per frequency, ``dim // 2`` values) divides the frequencies for lengths up to
    ``original_max_position_embeddings``, ``long_factor`` beyond it. ``original_max_position_embeddings=None``
    means the embedding's ``max_position_embeddings`` (so the long factors are never used).
    ``factor=None`` means ``max_position_embeddings / original_max_position_embeddings``.
    ``attention_factor=None`` means ``sqrt(1 + ln(factor) / ln(original))`` for ``factor > 1``, else 1
    (Phi-3.5-mini: ``sqrt(1 + ln 32 / ln 4096) = 1.19024``).
    Lists are stored as tuples, so the configuration stays hashable.
    """

    short_factor: tuple[float, ...]
    long_factor: tuple[float, ...]
    original_max_position_embeddings: int | None = None
    factor: float | None = None
    attention_factor: float | None = None
    rope_type: str = "longrope"

    def __post_init__(self) -> None:
        for name in ("short_factor", "long_factor"):
            object.__setattr__(self, name, _as_factor_tuple(f"scaling['{name}']", getattr(self, name)))
        validate_scaling(self)


ScalingConfig = LinearScaling | NTKScaling | DynamicScaling | YarnScaling | Llama3Scaling | LongRopeScaling

_CONFIG_TYPES: dict[str, type] = {
    "linear": LinearScaling,
    "ntk": NTKScaling,
    "dynamic": DynamicScaling,
    "yarn": YarnScaling,
    "llama3": Llama3Scaling,
    "longrope": LongRopeScaling,
}
_TYPE_ALIASES = {"su": "longrope", "mrope": "default"}


def canonical_rope_type(name: Any) -> Any:
    """A rope type's canonical name (``"su"`` is ``"longrope"``, ``"mrope"`` is ``"default"``); others as given."""
    return _TYPE_ALIASES.get(name, name) if isinstance(name, str) else name
_REQUIRED = {
    "linear": ("factor",),
    "ntk": ("factor",),
    "dynamic": ("factor",),
    "yarn": ("factor",),
    "llama3": ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings"),
    "longrope": ("short_factor", "long_factor"),
}
# Keys that appear in HF rope dicts but are read elsewhere (or mean nothing for the frequencies). M-RoPE's
# sections split the frequencies over (t, h, w) position ids; the frequencies themselves are the default ones.
_IGNORED_KEYS = {"rope_type", "type", "rope_theta", "partial_rotary_factor", "mrope_section", "mrope_interleaved"}
#: Largest attention scaling accepted: the tables are ``cos * attention_scaling`` in float32.
_MAX_ATTENTION_SCALING = float(np.finfo(np.float32).max)


# ------------------------------------------------------------------------------------------ validation
def _check_number(name: str, value: Any, *, minimum: float | None = None, strict: bool = False,
                  integer: bool = False, maximum: float | None = None) -> float:
    """``value`` as a finite float (or int), or a ValueError/TypeError naming ``name``.

    A bool, a string or any non-number is a TypeError; a non-finite, non-integral (``integer=True``) or
    out-of-range value a ValueError. Both messages give the name, the value and what is allowed.
    """
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise TypeError(f"{name}: expected a number, got {value!r} ({type(value).__name__})")
    try:
        as_float = float(value)
    except OverflowError:  # an int beyond float range
        raise ValueError(f"{name}: must be finite, got {value!r}") from None
    if not math.isfinite(as_float):
        raise ValueError(f"{name}: must be finite, got {value!r}")
    if integer and not as_float.is_integer():
        raise ValueError(f"{name}: expected an integer, got {value!r}")
    value = int(value) if integer else as_float
    if minimum is not None and (value <= minimum if strict else value < minimum):
        op = ">" if strict else ">="
        raise ValueError(f"{name}: must be {op} {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise ValueError(f"{name}: must be <= {maximum}, got {value!r}")
    return value


#: Bounds of the integers of a configuration (beyond them nothing can be allocated or represented).
MAX_DIM = 2**16
MAX_POSITIONS = 2**62


def check_dim(dim: Any, name: str = "dim") -> int:
    """The rotary dimension as an int: a positive even integer (TypeError / ValueError naming ``name``)."""
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)):
        raise TypeError(f"{name}: expected a positive even int, got {dim!r} ({type(dim).__name__})")
    if dim <= 0 or dim % 2 or dim > MAX_DIM:
        raise ValueError(f"{name}: must be a positive even integer <= {MAX_DIM}, got {dim}")
    return int(dim)


def check_max_position_embeddings(value: Any, name: str = "max_position_embeddings") -> int:
    """``max_position_embeddings`` as an int >= 1 (TypeError / ValueError naming ``name``)."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name}: expected an int >= 1, got {value!r}")
    if not 1 <= value <= MAX_POSITIONS:
        raise ValueError(f"{name}: must be >= 1 and <= 2**62, got {value}")
    return int(value)


def check_base(base: Any, name: str = "base") -> float:
    """``rope_theta`` as a finite float > 1 (TypeError / ValueError naming ``name``)."""
    return _check_number(name, base, minimum=1.0, strict=True)


def check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of the ``allowed`` strings: a TypeError for a non-string, else a ValueError."""
    listed = ", ".join(map(repr, allowed))
    if not isinstance(value, str):
        raise TypeError(f"{name}: expected one of {listed}, got {value!r} ({type(value).__name__})")
    if value not in allowed:
        raise ValueError(f"{name}: unknown {name.replace('_', ' ')} {value!r}; allowed: {listed}")
    return value


def check_precision(precision: Any) -> str:
    return check_choice("precision", precision, PRECISIONS)


def _as_factor_tuple(name: str, values: Any) -> tuple[float, ...]:
    """A LongRoPE factor list as a tuple of floats; a string, a mapping or a non-sequence is a TypeError."""
    if isinstance(values, (str, bytes, Mapping)) or not isinstance(values, (Sequence, np.ndarray)):
        raise TypeError(f"{name}: expected a list of numbers, got {values!r} ({type(values).__name__})")
    return tuple(_check_number(f"{name}[{i}]", v, minimum=0, strict=True) for i, v in enumerate(values))


def _check_rope_type(cfg: Any) -> None:
    expected = next(k for k, v in _CONFIG_TYPES.items() if isinstance(cfg, v))
    if cfg.rope_type != expected:
        raise ValueError(
            f"rope_type: {type(cfg).__name__} has rope_type {expected!r}, got {cfg.rope_type!r}; "
            f"use the dataclass of that rope_type (allowed here: {expected!r})"
        )


def _check_attention_scaling(name: str, scaling: float) -> float:
    if not (math.isfinite(scaling) and 0 < scaling <= _MAX_ATTENTION_SCALING):
        raise ValueError(
            f"{name}: gives attention scaling {scaling!r}; the tables are cos * attention_scaling in float32, so it "
            f"must be finite, > 0 and <= {_MAX_ATTENTION_SCALING:.4g}"
        )
    return scaling


def _past_float32(value: float) -> bool:
    """Whether ``value`` becomes inf in float32 (rounded to nearest: values just past the largest float32 that
    round down to it do not)."""
    with np.errstate(over="ignore"):
        return not np.isfinite(np.float32(value))


def check_float32_range(base: float | None, cfg: ScalingConfig | None, dim: int) -> None:
    """Reference precision: every number the frequencies take to float32, as the PyTorch reference does, must
    stay finite there (past float32's range it becomes inf, and the frequencies 0: one table for every
    position). A ValueError naming the field and pointing to ``precision='exact'``. ``base`` None: an
    ``inv_freq`` override (no base is used). Checked: the base, linear's and llama3's factors, llama3's band
    fields, LongRoPE's factor lists, NTK's scaled base, and the products YaRN and LongRoPE form with the
    largest ``base ** (2j / dim)``; fields the reference keeps in Python floats (YaRN's betas and mscales,
    dynamic NTK's factor: its grown base is checked when served) are not."""
    top = 1.0 if base is None else base ** ((dim - 2) / dim)  # the largest base ** (2j / dim)
    named: list[tuple[str, float]] = [] if base is None else [("base", base)]
    if isinstance(cfg, NTKScaling) and base is not None:
        named.append(("scaling['factor'] (ntk: the scaled base, base * factor ** (dim / (dim - 2)))",
                      base * cfg.factor ** (dim / (dim - 2))))
    elif isinstance(cfg, LinearScaling):
        named.append(("scaling['factor']", cfg.factor))
    elif isinstance(cfg, YarnScaling):
        named.append(("scaling['factor'] (yarn: factor * base ** ((dim - 2) / dim))", cfg.factor * top))
    elif isinstance(cfg, Llama3Scaling):
        named += [(f"scaling['{name}']", float(getattr(cfg, name))) for name in
                  ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")]
    elif isinstance(cfg, LongRopeScaling):
        for name in ("short_factor", "long_factor"):
            named += [(f"scaling['{name}'][{i}] (times base ** ((dim - 2) / dim))", v * top)
                      for i, v in enumerate(getattr(cfg, name))]
    for name, value in named:
        if _past_float32(value):
            raise ValueError(f"{name}: reference precision computes in float32, as the PyTorch reference does, "
                             f"where this overflows ({value:.4g} > {float(np.finfo(np.float32).max):.4g}). Use "
                             "precision='exact' (float64)")


def validate_scaling(cfg: ScalingConfig, dim: int | None = None) -> None:
    """Raise ``ValueError`` / ``TypeError`` (naming the field, its value and what is allowed) for a configuration
    no finite table can be built from. ``dim`` adds the checks that depend on the rotary dimension."""
    _check_rope_type(cfg)
    t = cfg.rope_type
    if isinstance(cfg, (LinearScaling, NTKScaling, DynamicScaling, YarnScaling, Llama3Scaling)):
        _check_number(f"scaling['factor'] ({t})", cfg.factor, minimum=1.0)
    if isinstance(cfg, (DynamicScaling, NTKScaling)) and dim is not None and dim <= 2:
        raise ValueError(f"dim: {t} scaling needs dim > 2 (the base exponent is dim / (dim - 2)), got {dim}")
    if isinstance(cfg, NTKScaling) and dim is not None:
        try:
            grown = cfg.factor ** (dim / (dim - 2))
        except OverflowError:
            grown = math.inf
        if not math.isfinite(grown):
            raise ValueError(f"scaling['factor'] (ntk): factor ** (dim / (dim - 2)) overflows for "
                             f"factor={cfg.factor!r}, dim={dim}; the scaled base must be finite")
    if isinstance(cfg, YarnScaling):
        if cfg.original_max_position_embeddings is not None:
            _check_number("scaling['original_max_position_embeddings']", cfg.original_max_position_embeddings,
                          minimum=0, strict=True, integer=True)
        bf = _check_number("scaling['beta_fast']", cfg.beta_fast, minimum=0, strict=True)
        bs = _check_number("scaling['beta_slow']", cfg.beta_slow, minimum=0, strict=True)
        if bf < bs:
            raise ValueError(
                f"scaling['beta_fast'] ({bf}) must be >= scaling['beta_slow'] ({bs}): beta_fast counts the "
                "rotations where extrapolation ends, beta_slow where interpolation begins (equal is allowed)"
            )
        _check_number("scaling['mscale']", cfg.mscale, minimum=0)
        _check_number("scaling['mscale_all_dim']", cfg.mscale_all_dim, minimum=0)
        if cfg.attention_factor is not None:
            _check_number("scaling['attention_factor']", cfg.attention_factor, minimum=0, strict=True)
            _check_attention_scaling("scaling['attention_factor']", float(cfg.attention_factor))
        else:
            _check_attention_scaling("scaling['mscale'] / scaling['mscale_all_dim']", yarn_attention_scaling(cfg))
        if not isinstance(cfg.truncate, bool):
            raise TypeError(f"scaling['truncate']: expected a bool, got {cfg.truncate!r}")
    if isinstance(cfg, Llama3Scaling):
        lo = _check_number("scaling['low_freq_factor']", cfg.low_freq_factor, minimum=0, strict=True)
        hi = _check_number("scaling['high_freq_factor']", cfg.high_freq_factor, minimum=0, strict=True)
        if lo > hi:
            raise ValueError(
                f"scaling['low_freq_factor'] ({lo}) must be <= scaling['high_freq_factor'] ({hi})"
            )
        _check_number("scaling['original_max_position_embeddings']", cfg.original_max_position_embeddings,
                      minimum=0, strict=True, integer=True)
    if isinstance(cfg, LongRopeScaling):
        for name in ("short_factor", "long_factor"):
            values = _as_factor_tuple(f"scaling['{name}']", getattr(cfg, name))
            if dim is not None and len(values) != dim // 2:
                raise ValueError(
                    f"scaling['{name}']: needs dim // 2 = {dim // 2} values (one per frequency), got {len(values)}"
                )
        if cfg.original_max_position_embeddings is not None:
            # ln(original) is a divisor of the default attention scaling: 1 is refused
            _check_number("scaling['original_max_position_embeddings']", cfg.original_max_position_embeddings,
                          minimum=2, integer=True)
        if cfg.factor is not None:
            _check_number("scaling['factor'] (longrope)", cfg.factor, minimum=1.0)
        if cfg.attention_factor is not None:
            _check_number("scaling['attention_factor']", cfg.attention_factor, minimum=0, strict=True)
            _check_attention_scaling("scaling['attention_factor']", float(cfg.attention_factor))


def parse_scaling(spec: Any) -> ScalingConfig | None:
    """A validated scaling configuration from a HF dict, a config dataclass, or ``None`` (standard RoPE).

    Unknown keys are reported with a ``UserWarning`` (never silently dropped); missing required keys,
    unknown types and out-of-range values raise.
    """
    if spec is None:
        return None
    if isinstance(spec, tuple(_CONFIG_TYPES.values())):
        validate_scaling(spec)
        return spec
    if not isinstance(spec, Mapping):
        raise TypeError(
            f"scaling: expected None, a dict in Hugging Face rope_scaling form, or one of "
            f"{', '.join(c.__name__ for c in _CONFIG_TYPES.values())}; got {spec!r} ({type(spec).__name__})"
        )
    for key in ("rope_type", "type"):
        if key in spec and not isinstance(spec[key], str):
            raise TypeError(f"scaling['{key}']: expected a string (one of {', '.join(rope_types())}), "
                            f"got {spec[key]!r} ({type(spec[key]).__name__})")
    rope_type = spec.get("rope_type", spec.get("type"))
    if "rope_type" in spec and "type" in spec and \
            canonical_rope_type(spec["rope_type"]) != canonical_rope_type(spec["type"]):  # "su" is "longrope"
        raise ValueError(f"scaling: 'rope_type' ({spec['rope_type']!r}) and 'type' ({spec['type']!r}) disagree")
    if rope_type is None:
        raise ValueError(f"scaling: needs a 'rope_type' (or 'type') key; allowed: {', '.join(rope_types())}")
    rope_type = _TYPE_ALIASES.get(rope_type, rope_type)
    if rope_type == "default":
        unknown = set(spec) - _IGNORED_KEYS
        if unknown:
            warnings.warn(f"scaling: keys {sorted(unknown)} are ignored for rope_type 'default'", stacklevel=3)
        return None
    if rope_type not in _CONFIG_TYPES:
        raise ValueError(f"scaling: unknown rope_type {rope_type!r}; allowed: {', '.join(rope_types())}")
    cls = _CONFIG_TYPES[rope_type]
    missing = [k for k in _REQUIRED[rope_type] if spec.get(k) is None]
    if missing:
        raise ValueError(f"scaling: rope_type {rope_type!r} needs key(s) {missing}; got keys {sorted(spec)}")
    known = {f.name for f in fields(cls)} - {"rope_type"}
    unknown = set(spec) - known - _IGNORED_KEYS
    if unknown:
        warnings.warn(f"scaling: unknown key(s) {sorted(unknown)} for rope_type {rope_type!r} are ignored",
                      stacklevel=3)
    kwargs = {k: spec[k] for k in known if spec.get(k) is not None}
    return cls(**kwargs)  # the dataclass validates its fields


def is_length_dependent(cfg: ScalingConfig | None) -> bool:
    """True when the frequencies depend on the length served (dynamic NTK, LongRoPE)."""
    return isinstance(cfg, (DynamicScaling, LongRopeScaling))



# --------------------------------------------------------------------------- float32 / float64 steps
def _exponents(dim: int, precision: Precision) -> np.ndarray:
    """``arange(0, dim, 2) / dim``: float32 division (reference) or float64 (exact)."""
    if precision == "reference":
        return np.arange(0, dim, 2, dtype=np.float32) / np.float32(dim)
    return np.arange(0, dim, 2, dtype=np.float64) / dim


def _powers(base: float, exponents: np.ndarray, precision: Precision) -> np.ndarray:
    """``base ** exponents``; in reference precision PyTorch's float32 ``python_float ** tensor`` correctly
    rounded: base cast to float32, the power taken in float64 and rounded once to float32."""
    if precision == "reference":
        return (np.float64(np.float32(base)) ** exponents.astype(np.float64)).astype(np.float32)
    return np.float64(base) ** exponents


def _scalar_over(value: float, array: np.ndarray, precision: Precision) -> np.ndarray:
    """``value / array`` as the reference computes a Python number over a tensor: PyTorch evaluates it as
    ``array.reciprocal() * value`` (two float32 roundings, not one division), which llama3's wavelengths
    inherit; exact precision divides in float64."""
    if precision == "reference":
        return (np.float32(1.0) / array) * np.float32(value)
    return np.float64(value) / array


def _scalar(value: float, precision: Precision) -> np.floating:
    """A Python scalar as the reference code's tensor ops see it: float32, or float64 in exact mode."""
    return np.float32(value) if precision == "reference" else np.float64(value)


def standard_inv_freq(dim: int, base: float, precision: Precision = "reference") -> np.ndarray:
    """``1 / base ** (arange(0, dim, 2) / dim)``, shape ``(dim // 2,)``."""
    return _scalar(1.0, precision) / _powers(base, _exponents(dim, precision), precision)


def get_mscale(scale: float, mscale: float = 1.0) -> float:
    """YaRN's magnitude correction: ``0.1 * mscale * ln(scale) + 1`` for ``scale > 1``, else 1."""
    if scale <= 1:
        return 1.0
    return 0.1 * mscale * math.log(scale) + 1.0


def yarn_softmax_scale(head_dim: int, factor: float, mscale_all_dim: float = 1.0) -> float:
    """The attention softmax scale of YaRN models: ``head_dim ** -0.5 * get_mscale(factor, mscale_all_dim)**2``.

    ``head_dim`` is the full query/key head dimension the model scales by (DeepSeek-V3:
    ``qk_nope_head_dim + qk_rope_head_dim = 192``), not the rotary dimension. DeepSeek-V3 applies the
    mscale only when ``mscale_all_dim`` is non-zero; with 0 this returns ``head_dim ** -0.5``.
    """
    if isinstance(head_dim, bool) or not isinstance(head_dim, (int, np.integer)) or head_dim < 1:
        raise ValueError(f"head_dim: expected a positive integer, got {head_dim!r}")
    _check_number("factor", factor, minimum=1.0)
    _check_number("mscale_all_dim", mscale_all_dim, minimum=0)
    m = get_mscale(factor, mscale_all_dim) if mscale_all_dim else 1.0
    return float(head_dim) ** -0.5 * m * m


# ------------------------------------------------------------------------------------------- variants
def _default(cfg: Any, dim: int, base: float, max_pos: int, precision: Precision, seq_len: int | None
             ) -> Frequencies:
    return Frequencies(standard_inv_freq(dim, base, precision))


def _linear(cfg: LinearScaling, dim, base, max_pos, precision, seq_len) -> Frequencies:
    # transformers: ``inv_freq /= factor`` (float32 tensor by a Python scalar: the factor rounded to float32)
    return Frequencies(standard_inv_freq(dim, base, precision) / _scalar(cfg.factor, precision))


def _ntk(cfg: NTKScaling, dim, base, max_pos, precision, seq_len) -> Frequencies:
    new_base = base * cfg.factor ** (dim / (dim - 2))
    return Frequencies(standard_inv_freq(dim, new_base, precision))


def dynamic_base(base: float, factor: float, seq_len: int, max_pos: int, dim: int) -> float:
    """DESIGN 1.2: ``base * ((factor * seq_len / L) - (factor - 1)) ** (dim / (dim - 2))`` for ``seq_len > L``,
    else ``base`` (float64, as the reference computes it in Python). A base that overflows is a ValueError
    naming ``seq_len``."""
    if seq_len <= max_pos:
        return float(base)
    try:
        grown = base * ((factor * seq_len / max_pos) - (factor - 1)) ** (dim / (dim - 2))
    except OverflowError:
        grown = math.inf
    if not math.isfinite(grown):
        raise ValueError(f"seq_len: dynamic NTK's base overflows at seq_len={seq_len} (base={base}, "
                         f"factor={factor}, max_position_embeddings={max_pos}, dim={dim})")
    return grown


def _dynamic(cfg: DynamicScaling, dim, base, max_pos, precision, seq_len) -> Frequencies:
    length = max_pos if seq_len is None else seq_len
    grown = dynamic_base(base, cfg.factor, length, max_pos, dim)
    if precision == "reference" and _past_float32(grown):  # the reference takes it to float32: inf, frequencies 0
        raise ValueError(f"seq_len: dynamic NTK's base at seq_len={length} is {grown:.4g}, past float32's range, "
                         "where reference precision computes (as the PyTorch reference does). Use "
                         "precision='exact' (float64)")
    return Frequencies(standard_inv_freq(dim, grown, precision))



def yarn_correction_range(beta_fast: float, beta_slow: float, dim: int, base: float, original_max: int,
                          truncate: bool = True) -> tuple[float, float]:
    """The dimension range ``[low, high]`` over which YaRN's ramp runs (floor/ceil unless ``truncate`` is
    false), clamped to ``[0, dim - 1]``."""

    def correction_dim(num_rotations: float) -> float:
        return (dim * math.log(original_max / (num_rotations * 2 * math.pi))) / (2 * math.log(base))

    low, high = correction_dim(beta_fast), correction_dim(beta_slow)
    if truncate:
        low, high = math.floor(low), math.ceil(high)
    return max(low, 0), min(high, dim - 1)


def yarn_attention_scaling(cfg: YarnScaling) -> float:
    """The multiplier YaRN folds into cos and sin.

    ``attention_factor`` when given; else DeepSeek-V3's rule ``get_mscale(factor, mscale) /
    get_mscale(factor, mscale_all_dim)``. transformers uses that ratio only when ``mscale`` and
    ``mscale_all_dim`` are both non-zero and ``get_mscale(factor)`` otherwise; the two agree on every published
    config we know (both fields 1, both 0.707, or ``mscale=1`` with ``mscale_all_dim`` absent or 0), and differ
    only for ``mscale != 1`` with ``mscale_all_dim == 0``, or ``mscale == 0``, where ropeflow follows the DeepSeek
    code that defines the fields (docs/math.md).
    """
    if cfg.attention_factor is not None:
        return float(cfg.attention_factor)
    return get_mscale(cfg.factor, cfg.mscale) / get_mscale(cfg.factor, cfg.mscale_all_dim)


def _yarn(cfg: YarnScaling, dim, base, max_pos, precision, seq_len) -> Frequencies:
    original = cfg.original_max_position_embeddings or max_pos
    exps = _exponents(dim, precision)
    pos_freqs = _powers(base, exps, precision)
    one = _scalar(1.0, precision)
    freq_extra = one / pos_freqs
    freq_inter = one / (_scalar(cfg.factor, precision) * pos_freqs)
    low, high = yarn_correction_range(cfg.beta_fast, cfg.beta_slow, dim, base, original, cfg.truncate)
    if low == high:
        high += 0.001  # the reference's guard against a zero-width ramp
    ftype = np.float32 if precision == "reference" else np.float64
    ramp = (np.arange(dim // 2, dtype=ftype) - _scalar(low, precision)) / _scalar(high - low, precision)
    ramp = np.clip(ramp, 0, 1).astype(ftype)
    extra_weight = one - ramp
    inv_freq = freq_inter * (one - extra_weight) + freq_extra * extra_weight
    return Frequencies(inv_freq.astype(ftype), yarn_attention_scaling(cfg))


def _llama3(cfg: Llama3Scaling, dim, base, max_pos, precision, seq_len) -> Frequencies:
    if cfg.low_freq_factor == cfg.high_freq_factor:
        warnings.warn(
            f"scaling: llama3 low_freq_factor == high_freq_factor ({cfg.low_freq_factor}); transformers only warns "
            "here and so does ropeflow: the smooth band is empty, every frequency is either kept or divided by "
            "factor (Llama 4 Scout ships this)", UserWarning, stacklevel=4)
    inv_freq = standard_inv_freq(dim, base, precision)
    s = lambda v: _scalar(v, precision)  # noqa: E731
    old_len = cfg.original_max_position_embeddings
    low_wavelen = old_len / cfg.low_freq_factor
    high_wavelen = old_len / cfg.high_freq_factor
    wavelen = _scalar_over(2 * math.pi, inv_freq, precision)
    scaled = np.where(wavelen > s(low_wavelen), inv_freq / s(cfg.factor), inv_freq)
    with np.errstate(divide="ignore", invalid="ignore"):  # an empty smooth band: 0 / 0 where unused
        smooth = (_scalar_over(old_len, wavelen, precision) - s(cfg.low_freq_factor)) / \
            s(cfg.high_freq_factor - cfg.low_freq_factor)
        smoothed = (s(1.0) - smooth) * scaled / s(cfg.factor) + smooth * scaled
    medium = ~(wavelen < s(high_wavelen)) & ~(wavelen > s(low_wavelen))
    out = np.where(medium, smoothed, scaled).astype(inv_freq.dtype)
    if not np.all(np.isfinite(out)):  # only reachable with an empty band hit exactly
        out = np.where(np.isfinite(out), out, scaled).astype(inv_freq.dtype)
    return Frequencies(out)


def longrope_factor_and_original(cfg: LongRopeScaling, max_pos: int) -> tuple[float, int]:
    """``(factor, original_max_position_embeddings)`` as transformers resolves them for LongRoPE: ``original``
    defaults to ``max_position_embeddings``, ``factor`` to ``max_position_embeddings / original``."""
    original = max_pos if cfg.original_max_position_embeddings is None else int(cfg.original_max_position_embeddings)
    factor = max_pos / original if cfg.factor is None else float(cfg.factor)
    return factor, original


def longrope_attention_scaling(cfg: LongRopeScaling, max_pos: int) -> float:
    """``attention_factor``, else ``sqrt(1 + ln(factor) / ln(original))`` for ``factor > 1``, else 1."""
    factor, original = longrope_factor_and_original(cfg, max_pos)
    if cfg.attention_factor is not None:
        return float(cfg.attention_factor)
    if factor <= 1.0:
        return 1.0
    if original < 2:
        raise ValueError(f"max_position_embeddings: LongRoPE's attention scaling divides by ln(original); the "
                         f"original context must be >= 2, got {original}")
    return math.sqrt(1 + math.log(factor) / math.log(original))


def _longrope(cfg: LongRopeScaling, dim, base, max_pos, precision, seq_len) -> Frequencies:
    _, original = longrope_factor_and_original(cfg, max_pos)
    scaling = longrope_attention_scaling(cfg, max_pos)
    long = seq_len is not None and seq_len > original
    ftype = np.float32 if precision == "reference" else np.float64
    ext = np.asarray(cfg.long_factor if long else cfg.short_factor, dtype=ftype)
    pos_freqs = _powers(base, _exponents(dim, precision), precision)
    return Frequencies(_scalar(1.0, precision) / (ext * pos_freqs), scaling)


FrequencyFunction = Callable[[Any, int, float, int, Precision, int | None], Frequencies]

#: rope_type -> function(cfg, dim, base, max_position_embeddings, precision, seq_len) -> Frequencies
ROPE_INIT_FUNCTIONS: dict[str, FrequencyFunction] = {
    "default": _default,
    "linear": _linear,
    "ntk": _ntk,
    "dynamic": _dynamic,
    "yarn": _yarn,
    "llama3": _llama3,
    "longrope": _longrope,
}


def rope_types() -> tuple[str, ...]:
    """The supported ``rope_type`` names (``"su"`` is accepted as LongRoPE, ``"mrope"`` as default)."""
    return tuple(ROPE_INIT_FUNCTIONS)


def compute_frequencies(cfg: Any, dim: int, base: float, max_position_embeddings: int,
                        precision: Precision = "reference", seq_len: int | None = None) -> Frequencies:
    """The frequencies of a configuration for a served length ``seq_len``.

    cfg: ``None``, a Hugging Face ``rope_scaling`` dict or a scaling dataclass, as ``RotaryEmbedding(scaling=)``
        takes it; the arguments are validated exactly as the constructor validates them (TypeError / ValueError
        naming the parameter).
    dim: rotary dimension (positive, even); ``inv_freq`` has shape ``(dim // 2,)``, radians per position,
        float32 (``"reference"``) or float64 (``"exact"``).
    seq_len: only dynamic NTK and LongRoPE look at it; ``None`` means "not longer than
        ``max_position_embeddings``".
    """
    dim = check_dim(dim)
    max_position_embeddings = check_max_position_embeddings(max_position_embeddings)
    base = check_base(base)
    check_precision(precision)
    if seq_len is not None:
        if isinstance(seq_len, bool) or not isinstance(seq_len, (int, np.integer)):
            raise TypeError(f"seq_len: expected None or a non-negative int, got {seq_len!r}")
        if seq_len < 0:
            raise ValueError(f"seq_len: must be >= 0, got {seq_len}")
        seq_len = int(seq_len)
    cfg = parse_scaling(cfg)
    if cfg is not None:
        validate_scaling(cfg, dim)
    rope_type = "default" if cfg is None else cfg.rope_type
    return ROPE_INIT_FUNCTIONS[rope_type](cfg, dim, base, max_position_embeddings, precision, seq_len)


def as_inv_freq(value: Any, dim: int, precision: Precision = "reference") -> np.ndarray:
    """A user-supplied ``inv_freq`` (a checkpoint's buffer, a torch-built tensor, a NumPy array or a list) as a
    read-only host array of shape ``(dim // 2,)``: float32 in reference precision (float32 input is kept bit
    for bit), float64 in exact precision. Values must be finite and >= 0 (ValueError / TypeError naming
    ``inv_freq``)."""
    if isinstance(value, (str, bytes, Mapping)) or value is None:
        raise TypeError(f"inv_freq: expected an array of dim // 2 numbers, got {type(value).__name__}")
    if hasattr(value, "detach") and hasattr(value, "cpu"):  # a torch tensor, on any device
        if getattr(value, "is_meta", False):
            raise TypeError("inv_freq: a torch tensor on the meta device, which holds no values (a model built on "
                            "device='meta' or with empty weights); pass the loaded buffer, or omit inv_freq")
        value = value.detach().cpu().float().numpy() if str(getattr(value, "dtype", "")) == "torch.bfloat16" \
            else value.detach().cpu().numpy()
    elif type(value).__module__.split(".")[0] == "cupy":
        value = value.get()
    try:
        arr = np.asarray(value)
    except (TypeError, ValueError) as exc:
        raise TypeError(f"inv_freq: expected an array of dim // 2 numbers, got {type(value).__name__}: {exc}") from None
    if arr.dtype.kind not in "fiu" or arr.dtype == np.bool_:
        raise TypeError(f"inv_freq: expected real numbers, got dtype {arr.dtype}")
    if arr.shape != (dim // 2,):
        raise ValueError(f"inv_freq: needs shape (dim // 2,) = ({dim // 2},), got {arr.shape}")
    ftype = np.float32 if precision == "reference" else np.float64
    out = np.array(arr, dtype=ftype)  # a copy: the caller's buffer is never aliased
    if not np.all(np.isfinite(out)) or np.any(out < 0):
        raise ValueError(f"inv_freq: values must be finite and >= 0 (as {out.dtype}); got min {out.min()!r}, "
                         f"max {out.max()!r}")
    out.flags.writeable = False
    return out
