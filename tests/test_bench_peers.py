"""The rotation benchmark's peer libraries (MLX's mx.fast.rope, ggml's rope) against a float64 formula.

Each installed peer rotates small q and k, as the benchmark drives it, and must match the textbook "half"
RoPE evaluated in float64 here; peers that are not installed are skipped. No timing is asserted.
"""

from __future__ import annotations

import sys

import numpy as np
import pytest

from ropeflow.bench import _peers


def rope_half_f64(x: np.ndarray, positions: np.ndarray, base: float, seq_axis: int) -> np.ndarray:
    """``x * cos + rotate_half(x) * sin`` in float64; angles ``positions * base ** (-arange(0, d, 2) / d)``.

    x: ``(B, H, S, D)`` (``seq_axis=-2``) or ``(B, S, H, D)`` (``seq_axis=-3``); positions: ``(B, S)``.
    """
    xf = x.astype(np.float64)
    if seq_axis == -3:
        xf = xf.swapaxes(1, 2)
    d = xf.shape[-1]
    inv_freq = base ** (-np.arange(0, d, 2, dtype=np.float64) / d)
    angle = positions.astype(np.float64)[:, None, :, None] * inv_freq  # (B, 1, S, D/2)
    angle = np.concatenate([angle, angle], axis=-1)
    rotated = np.concatenate([-xf[..., d // 2:], xf[..., : d // 2]], axis=-1)
    out = xf * np.cos(angle) + rotated * np.sin(angle)
    return out.swapaxes(1, 2) if seq_axis == -3 else out


def half_ulp(x: np.ndarray, dtype: np.dtype, seq_axis: int) -> np.ndarray:
    """One unit in the last place of ``dtype`` at the length of each rotated pair ``(x[i], x[i + d/2])``."""
    xf = x.astype(np.float64)
    d = xf.shape[-1]
    pair = np.hypot(xf[..., : d // 2], xf[..., d // 2:])
    pair = np.concatenate([pair, pair], axis=-1)
    mant = 7 if dtype.name == "bfloat16" else int(np.finfo(dtype).nmant)
    return 2.0 ** (np.floor(np.log2(np.maximum(pair, 2.0**-14))) - mant)


def _dtype(name: str) -> np.dtype:
    if name == "bfloat16":
        ml_dtypes = pytest.importorskip("ml_dtypes")
        return np.dtype(ml_dtypes.bfloat16)
    return np.dtype(name)


#: (q shape as stored, k heads, seq_axis, offsets): decode of 3 sequences at distinct offsets, a prefill of one
#: sequence (head-major), and two sequences token-major at distinct offsets.
CASES = [
    pytest.param(((3, 4, 1, 64), 2, -2, [0, 5, 17]), id="decode-head-major"),
    pytest.param(((1, 4, 6, 64), 2, -2, [7]), id="prefill-head-major"),
    pytest.param(((2, 5, 4, 64), 2, -3, [3, 11]), id="token-major"),
]


def _case(shape: tuple[int, ...], k_heads: int, seq_axis: int, dtype: np.dtype):
    rng = np.random.default_rng(1)
    k_shape = list(shape)
    k_shape[2 if seq_axis == -3 else 1] = k_heads
    q = rng.standard_normal(shape).astype(np.float32).astype(dtype)
    k = rng.standard_normal(k_shape).astype(np.float32).astype(dtype)
    return q, k


def _peer(name: str):
    pytest.importorskip({"mlx": "mlx.core", "ggml": "ggml"}[name])
    prepare = _peers.PEERS[name]()
    assert prepare is not None
    return prepare


@pytest.mark.parametrize("dtype_name", ["float32", "float16", "bfloat16"])
@pytest.mark.parametrize("case", CASES)
@pytest.mark.parametrize("name", ["mlx", "ggml"])
@pytest.mark.parametrize("base", [10000.0, 500000.0])
def test_peer_matches_float64_formula(name: str, case, dtype_name: str, base: float) -> None:
    prepare = _peer(name)
    shape, k_heads, seq_axis, offsets = case
    dtype = _dtype(dtype_name)
    q, k = _case(shape, k_heads, seq_axis, dtype)
    offsets = np.asarray(offsets)
    try:
        peer = prepare(q, k, offsets, seq_axis, base)
    except _peers.Unsupported:
        assert name == "ggml" and dtype_name == "bfloat16"  # the only cell the benchmark leaves empty
        return
    try:
        peer.run()
        got = peer.outputs()
    finally:
        peer.close()
    s = shape[1] if seq_axis == -3 else shape[2]
    positions = offsets[:, None] + np.arange(s)[None, :]
    for x, out in zip((q, k), got, strict=True):
        assert out.shape == x.shape and out.dtype == x.dtype
        want = rope_half_f64(x, positions, base, seq_axis)
        err = np.abs(out.astype(np.float64) - want)
        if dtype_name == "float32":
            assert err.max() <= 1e-5  # positions below 30: float32 angles are good to a few 1e-6
        else:  # half types: at most 2 units in the last place at the pair's length
            assert np.all(err <= 2 * half_ulp(x, dtype, seq_axis)), err.max()


def test_mismatch_flags_wrong_base_and_position() -> None:
    """The benchmark's pre-timing check accepts a faithful rotation and rejects a wrong base or position."""
    rng = np.random.default_rng(2)
    q, k = rng.standard_normal((2, 4, 3, 32)).astype(np.float32), rng.standard_normal((2, 2, 3, 32)).astype(np.float32)
    offsets = np.array([100, 4000])
    pos = offsets[:, None] + np.arange(3)

    def rot(p: np.ndarray, base: float) -> tuple[np.ndarray, np.ndarray]:
        return tuple(rope_half_f64(x, p, base, -2).astype(np.float32) for x in (q, k))

    want = rot(pos, 10000.0)
    assert _peers.mismatch(want, want, (q, k), offsets, 10000.0, -2) is None
    assert "elements off" in _peers.mismatch(rot(pos, 500000.0), want, (q, k), offsets, 10000.0, -2)
    assert "elements off" in _peers.mismatch(rot(pos + 1, 10000.0), want, (q, k), offsets, 10000.0, -2)


def test_absent_peer_is_none(monkeypatch: pytest.MonkeyPatch) -> None:
    """A library that cannot be imported gives None (the benchmark prints nan), never an error."""
    for mod in ("mlx", "mlx.core", "ggml"):
        monkeypatch.setitem(sys.modules, mod, None)  # importing it now raises ImportError
    assert _peers.mlx() is None and _peers.ggml() is None
