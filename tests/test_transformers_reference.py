"""Presets against transformers' ROPE_INIT_FUNCTIONS (optional: skipped when transformers is not installed).

Target: inv_freq within 2 float32 ulps (transformers' float32 pow is not correctly rounded, DESIGN 1.5) and
the same attention factor.
"""

from __future__ import annotations

import numpy as np
import pytest

import ropeflow
from ropeflow.config import rope_settings

transformers = pytest.importorskip("transformers")
pytest.importorskip("torch")
from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS  # noqa: E402


def _hf_config(name: str):
    s = rope_settings(ropeflow.presets.load(name))
    params = dict(s["scaling"])
    rope_type = params.pop("type", None) or params.pop("rope_type")
    params.update(rope_type=rope_type, rope_theta=s["base"])
    config = transformers.PretrainedConfig(
        hidden_size=s["dim"] * 4, num_attention_heads=4, head_dim=s["dim"],
        max_position_embeddings=s["max_position_embeddings"], rope_parameters=params)
    return config, rope_type


@pytest.mark.parametrize("name", ["deepseek-v3", "kimi-k2", "kimi-k2-0905", "llama-3.1-8b", "llama-3.2-1b",
                                  "deepseek-v2-lite", "gpt-oss-20b", "phi-3.5-mini-instruct", "phi-4-mini-instruct"])
def test_presets_match_transformers(name):
    config, rope_type = _hf_config(name)
    try:
        inv_freq, attention_factor = ROPE_INIT_FUNCTIONS[rope_type](config, "cpu")
    except (TypeError, KeyError, AttributeError) as exc:  # an older/newer transformers config API
        pytest.skip(f"transformers {transformers.__version__} config API differs: {exc}")
    rope = ropeflow.RotaryEmbedding.from_preset(name, backend="numpy")
    theirs = inv_freq.numpy().astype(np.float32)
    ulps = np.abs(theirs.view(np.int32).astype(np.int64) - rope.inv_freq.view(np.int32).astype(np.int64)).max()
    assert ulps <= 2
    assert rope.attention_scaling == pytest.approx(float(attention_factor), rel=1e-12)
