"""ropeflow: rotary position embeddings (RoPE) on NumPy, Numba and CuPy, without a deep-learning framework.

    >>> import numpy as np, ropeflow
    >>> rope = ropeflow.RotaryEmbedding(64, max_position_embeddings=4096, base=10000.0)
    >>> cos, sin = rope(np.zeros((1, 8, 10, 64), np.float32))
    >>> cos.shape
    (10, 64)
"""

from __future__ import annotations

from . import presets
from ._errors import BackendUnavailableError
from .apply import apply_rotary
from .backends import available_backends
from .config import layer_types, softmax_scale
from .multimodal import mrope_position_ids
from .plan import ApplyPlan
from .positions import mrope_axes, positions_from_cu_seqlens
from .rotary import RotaryEmbedding
from .scaling import (
    DynamicScaling,
    Frequencies,
    LinearScaling,
    Llama3Scaling,
    LongRopeScaling,
    NTKScaling,
    YarnScaling,
    compute_frequencies,
    get_mscale,
    rope_types,
    yarn_softmax_scale,
)

__version__ = "0.1.0"

__all__ = [
    "ApplyPlan",
    "BackendUnavailableError",
    "DynamicScaling",
    "Frequencies",
    "LinearScaling",
    "Llama3Scaling",
    "LongRopeScaling",
    "NTKScaling",
    "RotaryEmbedding",
    "YarnScaling",
    "apply_rotary",
    "available_backends",
    "compute_frequencies",
    "presets",
    "softmax_scale",
    "get_mscale",
    "layer_types",
    "mrope_axes",
    "mrope_position_ids",
    "positions_from_cu_seqlens",
    "rope_types",
    "yarn_softmax_scale",
    "__version__",
]
