"""Cross-checks against a transcription of the seed's PyTorch code (skipped when torch is not installed).

Two separate claims (DESIGN 1.5): PyTorch's float32 ``pow`` is not correctly rounded, so its ``inv_freq`` is
within 2 float32 ulps of ours; fed our ``inv_freq``, its tables are within a few float32 ulps of ours.
"""

from __future__ import annotations

import numpy as np
import pytest
from conftest import ULP32, input_array, to_numpy

import ropeflow

torch = pytest.importorskip("torch")
from torch_reference import (  # noqa: E402
    DeepseekV3DynamicNTKScalingRotaryEmbedding,
    DeepseekV3RotaryEmbedding,
    tables_from_inv_freq,
)


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.astype(np.float32).view(np.int32).astype(np.int64)
                      - b.astype(np.float32).view(np.int32).astype(np.int64)).max())


@pytest.mark.parametrize("dim", [2, 8, 64, 96, 128])
@pytest.mark.parametrize("base", [10000.0, 50000.0, 500000.0, 1e6, 1234.5])
def test_inv_freq_within_2_ulps_of_pytorch(dim, base):
    ref = DeepseekV3RotaryEmbedding(dim, 16, base)
    ours = ropeflow.RotaryEmbedding(dim, 16, base)
    assert _ulps(ref.inv_freq.numpy(), ours.inv_freq) <= 2


@pytest.mark.parametrize("dim,n", [(64, 4096), (128, 2000), (16, 70000)])
def test_tables_from_our_inv_freq_match_pytorch(backend, dim, n):
    rope = ropeflow.RotaryEmbedding(dim, n, 10000.0, backend=backend)
    cos, sin = rope(input_array(backend, (1, 1, n, dim), np.float32))
    tcos, tsin = tables_from_inv_freq(torch.from_numpy(rope.inv_freq.copy()), n)
    assert np.abs(to_numpy(cos) - tcos.numpy()).max() <= 4 * ULP32
    assert np.abs(to_numpy(sin) - tsin.numpy()).max() <= 4 * ULP32


def test_forward_semantics_match_the_seed(backend):
    rope = ropeflow.RotaryEmbedding(64, 2048, 10000.0, backend=backend)
    for n, dtype in [(10, torch.float32), (20, torch.float16), (5, torch.float64)]:
        # a fresh reference per dtype: the seed stores its cache in the dtype of the call that built it
        # (see test_seed_cache_dtype_quirk_is_not_reproduced)
        ref = DeepseekV3RotaryEmbedding(64, 2048, 10000.0)
        x = torch.zeros(1, 8, n, 64, dtype=dtype)
        tcos, tsin = ref(x, seq_len=n)
        cos, sin = rope(input_array(backend, (1, 8, n, 64), tcos.numpy().dtype))
        assert cos.shape == tuple(tcos.shape) and cos.dtype == tcos.numpy().dtype
        tol = 4 * ULP32 if dtype != torch.float16 else 2.0**-10
        assert np.abs(to_numpy(cos).astype(np.float64) - tcos.double().numpy()).max() <= tol


def test_dynamic_reference_policy_call_for_call(backend):
    """dynamic_policy='reference' reproduces the seed's history-dependent results on 1000, 3000, 1000,
    5000, 2500 (inv_freq within 2 ulps, tables within a few ulps)."""
    ref = DeepseekV3DynamicNTKScalingRotaryEmbedding(64, 2048, 10000.0, scaling_factor=2.0)
    rope = ropeflow.RotaryEmbedding(64, 2048, 10000.0, scaling={"type": "dynamic", "factor": 2.0},
                                    dynamic_policy="reference", backend=backend)
    for n in [1000, 3000, 1000, 5000, 2500]:
        tcos, tsin = ref(torch.zeros(1, 1, n, 64), seq_len=n)
        cos, sin = rope(input_array(backend, (1, 1, n, 64), np.float32))
        assert rope.max_seq_len_cached == ref.max_seq_len_cached
        assert _ulps(ref.inv_freq.numpy(), rope.inv_freq) <= 2
        # the table comparison is about the backend: feed the reference our frequencies
        fcos, fsin = tables_from_inv_freq(torch.from_numpy(rope.inv_freq.copy()), n)
        assert np.abs(to_numpy(cos) - fcos.numpy()).max() <= 4 * ULP32
        assert np.abs(to_numpy(sin) - fsin.numpy()).max() <= 4 * ULP32


def test_seed_cache_dtype_quirk_is_not_reproduced():
    """The seed caches in the dtype of the building call: a float16 first call makes later float32 calls
    return float16-rounded values. ropeflow keeps a float32 master and casts from it every time."""
    ref = DeepseekV3RotaryEmbedding(64, 2048, 10000.0)
    ref(torch.zeros(1, 1, 100, 64, dtype=torch.float16), seq_len=100)
    tcos, _ = ref(torch.zeros(1, 1, 50, 64), seq_len=50)
    rope = ropeflow.RotaryEmbedding(64, 2048, 10000.0)
    rope(np.zeros((1, 100, 64), np.float16))
    cos, _ = rope(np.zeros((1, 50, 64), np.float32))
    exact, _ = tables_from_inv_freq(torch.from_numpy(rope.inv_freq.copy()), 50)
    assert np.abs(tcos.numpy() - exact.numpy()).max() > 1e-4  # the seed's float16 rounding shows
    assert np.abs(cos - exact.numpy()).max() <= 4 * ULP32


def _llama3_in_torch(inv_freq, factor, low_freq_factor, high_freq_factor, old_context_len):
    """transformers' ``_compute_llama3_parameters`` after its ``inv_freq``, op for op in torch float32."""
    import math

    low_freq_wavelen = old_context_len / low_freq_factor
    high_freq_wavelen = old_context_len / high_freq_factor
    wavelen = 2 * math.pi / inv_freq
    inv_freq_llama = torch.where(wavelen > low_freq_wavelen, inv_freq / factor, inv_freq)
    smooth_factor = (old_context_len / wavelen - low_freq_factor) / (high_freq_factor - low_freq_factor)
    smoothed_inv_freq = (1 - smooth_factor) * inv_freq_llama / factor + smooth_factor * inv_freq_llama
    is_medium_freq = ~(wavelen < high_freq_wavelen) * ~(wavelen > low_freq_wavelen)
    return torch.where(is_medium_freq, smoothed_inv_freq, inv_freq_llama)


@pytest.mark.parametrize("dim,base", [(64, 1e4), (128, 1e4), (128, 5e5), (256, 5e5), (128, 1e6)])
@pytest.mark.parametrize("factor,low,high,old", [(8.0, 1.0, 4.0, 8192), (32.0, 1.0, 4.0, 8192),
                                                 (8.0, 2.0, 8.0, 4096)])
def test_llama3_frequencies_match_pytorch_bit_for_bit(dim, base, factor, low, high, old):
    """From the same standard inv_freq, llama3's adjustment equals the PyTorch code bit for bit. torch evaluates
    ``2 * pi / inv_freq`` as ``inv_freq.reciprocal() * (2 * pi)``; ropeflow divided once, up to 10 ulps off."""
    scaling = {"rope_type": "llama3", "factor": factor, "low_freq_factor": low, "high_freq_factor": high,
               "original_max_position_embeddings": old}
    plain = ropeflow.RotaryEmbedding(dim, 131072, base).inv_freq
    got = ropeflow.RotaryEmbedding(dim, 131072, base, scaling=scaling).inv_freq
    want = _llama3_in_torch(torch.from_numpy(np.array(plain)), factor, low, high, old).numpy()
    assert got.dtype == want.dtype == np.float32
    np.testing.assert_array_equal(got, want)
