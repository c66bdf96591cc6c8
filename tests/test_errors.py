"""Bad input gets a clear error naming the parameter, the value and what is allowed; nothing is cached by a
failed call."""

from __future__ import annotations

import numpy as np
import pytest

import ropeflow
from ropeflow import RotaryEmbedding

DYN = {"rope_type": "dynamic", "factor": 2.0}


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(dim=63), ValueError, r"dim: must be a positive even integer <= 65536, got 63"),
    (dict(dim=0), ValueError, r"dim: .* got 0"),
    (dict(dim=-4), ValueError, r"dim: .* got -4"),
    (dict(dim=64.0), TypeError, r"dim: expected a positive even int, got 64.0"),
    (dict(dim=True), TypeError, r"dim: "),
    (dict(dim=2, scaling=DYN), ValueError, r"dim: dynamic scaling needs dim > 2.*got 2"),
    (dict(dim=64, base=1.0), ValueError, r"base: must be > 1.0, got 1.0"),
    (dict(dim=64, base=0.5), ValueError, r"base: must be > 1.0, got 0.5"),
    (dict(dim=64, base=float("nan")), ValueError, r"base: must be finite, got nan"),
    (dict(dim=64, base=float("inf")), ValueError, r"base: must be finite, got inf"),
    (dict(dim=64, base="10000"), TypeError, r"base: expected a number"),
    (dict(dim=64, scaling={"rope_type": "dynamic", "factor": 0.5}), ValueError, r"factor.*>= 1.0, got 0.5"),
    (dict(dim=64, scaling={"rope_type": "dynamic", "factor": float("nan")}), ValueError, r"factor.*finite, got nan"),
    (dict(dim=64, scaling={"rope_type": "dynamic"}), ValueError, r"needs key\(s\) \['factor'\]"),
    (dict(dim=64, scaling={"rope_type": "magic", "factor": 2.0}), ValueError, r"unknown rope_type 'magic'; allowed"),
    (dict(dim=64, scaling={"factor": 2.0}), ValueError, r"needs a 'rope_type'"),
    (dict(dim=64, scaling="dynamic"), TypeError, r"scaling: expected None, a dict"),
    (dict(dim=64, max_position_embeddings=0), ValueError,
     r"max_position_embeddings: must be >= 1 and <= 2\*\*62, got 0"),
    (dict(dim=64, max_position_embeddings=2.5), TypeError, r"max_position_embeddings: expected an int"),
    (dict(dim=64, backend="jax"), ValueError, r"backend: unknown backend 'jax'; allowed: 'auto', 'numpy'"),
    (dict(dim=64, precision="fp32"), ValueError, r"precision: unknown precision 'fp32'; allowed: 'reference'"),
    (dict(dim=64, dynamic_policy="lazy"), ValueError, r"dynamic_policy: unknown dynamic policy 'lazy'; allowed"),
])
def test_constructor_errors(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        RotaryEmbedding(**kwargs)


def test_unavailable_backend_says_how_to_install():
    if "cupy" in ropeflow.available_backends():
        pytest.skip("cupy works here")
    with pytest.raises(ropeflow.BackendUnavailableError, match=r"cupy.*(ropeflow\[cuda1[23]\]|no usable)"):
        RotaryEmbedding(64, backend="cupy")
    assert issubclass(ropeflow.BackendUnavailableError, ValueError)


@pytest.mark.parametrize("seq_len,exc,match", [
    (-1, ValueError, r"seq_len: must be >= 0, got -1"),
    (2.0, TypeError, r"seq_len: expected a non-negative int, got 2.0"),
    (True, TypeError, r"seq_len: expected a non-negative int, got True"),
    ("8", TypeError, r"seq_len: "),
    (2**24 + 1, ValueError, r"seq_len: reference precision .* 2\*\*24.*precision='exact'"),
])
def test_seq_len_errors(seq_len, exc, match):
    rope = RotaryEmbedding(64)
    with pytest.raises(exc, match=match):
        rope(np.zeros((1, 4, 64), np.float32), seq_len=seq_len)
    with pytest.raises(exc, match=match):
        rope.cos_sin(seq_len)
    assert rope.max_seq_len_cached is None and rope.cache_info()["builds"] == 0


def test_reference_limit_is_exactly_2_pow_24():
    rope = RotaryEmbedding(2, scaling=None)
    with pytest.raises(ValueError, match="2\\*\\*24"):
        rope.cos_sin(2**24 + 1)
    # exact mode has no such limit (not built here: only the validation path is exercised)


@pytest.mark.parametrize("x,exc,match", [
    ([[0.0, 1.0]], TypeError, r"x: expected a NumPy or CuPy array, got builtins.list"),
    (np.zeros(4, np.float32), ValueError, r"x: needs at least 2 dimensions .* got shape \(4,\)"),
    (np.zeros((2, 4), np.int32), TypeError, r"x.dtype: unsupported dtype .*int32.*allowed: float16, bfloat16"),
    (np.zeros((2, 4), np.complex64), TypeError, r"x.dtype: unsupported dtype"),
])
def test_input_errors(x, exc, match):
    rope = RotaryEmbedding(4)
    with pytest.raises(exc, match=match):
        rope(x)
    assert rope.cache_info()["builds"] == 0


def test_unknown_dtype_for_cos_sin():
    with pytest.raises(TypeError, match=r"dtype: unsupported dtype 'int8'; allowed"):
        RotaryEmbedding(4).cos_sin(3, dtype="int8")


def test_failed_dynamic_call_changes_no_state():
    rope = RotaryEmbedding(64, 2048, scaling=DYN, dynamic_policy="reference")
    rope.cos_sin(100)
    with pytest.raises(ValueError):
        rope.cos_sin(2**24 + 5)
    assert rope.max_seq_len_cached == 100
