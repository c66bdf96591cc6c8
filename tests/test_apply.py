"""apply_rotary: layouts against naive loops and the seed's PyTorch code; all backends agree; rotation
properties; strides, in place, offsets, partial rotary; RotaryEmbedding.apply; errors."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HOST_BACKENDS, dtype_eps, to_numpy
from hypothesis import given
from hypothesis import strategies as st
from reference import apply_naive

import ropeflow
from ropeflow import RotaryEmbedding, apply_rotary

LAYOUTS = ["half", "interleaved", "deepseek"]
DTYPES = ["float16", "bfloat16", "float32", "float64"]


def _dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def _xp(backend):
    if backend == "cupy":
        import cupy

        return cupy
    return np


def _tables(n, dim, precision="reference", dtype="float32"):
    return RotaryEmbedding(dim, max(n, 1), 10000.0, backend="numpy", precision=precision).cos_sin(n, dtype)


def _check_against_naive(result, x, cos, sin, pos, layout, rotary_dim, inverse=False, x_dtype=None):
    """``result`` equals the naive float64 loop rounded once to x's dtype (1 ulp of slack for the rounding of
    a rounding in ml_dtypes' bfloat16 cast and for FMA contraction on GPUs)."""
    want = apply_naive(x, cos, sin, pos, layout, rotary_dim, inverse)
    got = to_numpy(result).astype(np.float64)
    name = np.dtype(x_dtype or x.dtype).name
    eps = dtype_eps(name)
    # below the smallest normal number the spacing stops shrinking: an absolute bound of one subnormal step
    tiny = 2.0**-14 if name == "float16" else 2.0**-126 if name in ("bfloat16", "float32") else 2.0**-1022
    scale = np.maximum(np.abs(want), tiny)
    assert np.all(np.abs(got - want) <= eps * scale + 1e-300), np.abs(got - want).max()


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("dtype", DTYPES)
def test_layouts_against_naive_loops(backend, layout, dtype):
    if backend == "cupy" and dtype == "bfloat16":
        pytest.skip("CuPy has no bfloat16")
    xp = _xp(backend)
    dt = _dtype(dtype)
    rng = np.random.default_rng(1)
    x = rng.standard_normal((2, 3, 5, 16)).astype(dt)
    cos, sin = _tables(40, 16)
    pos = rng.integers(0, 40, (2, 5))
    out = apply_rotary(xp.asarray(x), xp.asarray(cos), xp.asarray(sin), xp.asarray(pos), layout=layout,
                       backend=backend)
    assert type(out) is type(xp.asarray(x)) and out.dtype == dt and out.shape == x.shape
    _check_against_naive(out, x, cos, sin, pos, layout, 16)


@given(batch=st.integers(1, 3), heads=st.integers(1, 4), seq=st.integers(1, 9), pairs=st.integers(1, 8),
       extra=st.integers(0, 3), layout=st.sampled_from(LAYOUTS), dtype=st.sampled_from(DTYPES),
       inverse=st.booleans(), mode=st.sampled_from(["ids1d", "ids2d", "offset", "offsets"]),
       strided=st.booleans(), seq_axis=st.sampled_from([-2, -3]), seed=st.integers(0, 2**16))
def test_backends_agree_with_naive(backend, batch, heads, seq, pairs, extra, layout, dtype, inverse, mode,
                                   strided, seq_axis, seed):
    if backend == "cupy" and dtype == "bfloat16":
        return
    xp = _xp(backend)
    dt = _dtype(dtype)
    rng = np.random.default_rng(seed)
    rotary_dim = 2 * pairs
    head_dim = rotary_dim + 2 * extra
    table_len = 64
    cos, sin = _tables(table_len, rotary_dim, dtype="float64" if dtype == "float64" else "float32")
    shape4 = (batch, heads, seq, head_dim) if seq_axis == -2 else (batch, seq, heads, head_dim)
    if strided:  # a slice of a fused buffer along the last axis: non-contiguous rows
        buf = rng.standard_normal(shape4[:-1] + (3 * head_dim,)).astype(dt)
        x_host = buf[..., head_dim: 2 * head_dim]
    else:
        x_host = rng.standard_normal(shape4).astype(dt)
    kwargs = {}
    if mode == "ids1d":
        pos = np.broadcast_to(rng.integers(0, table_len, seq), (batch, seq))
        kwargs["position_ids"] = xp.asarray(np.ascontiguousarray(pos[0]))
    elif mode == "ids2d":
        pos = rng.integers(0, table_len, (batch, seq))
        kwargs["position_ids"] = xp.asarray(pos)
    elif mode == "offset":
        off = int(rng.integers(0, table_len - seq + 1))
        pos = np.broadcast_to(off + np.arange(seq), (batch, seq))
        kwargs["offset"] = off
    else:
        offs = rng.integers(0, table_len - seq + 1, batch)
        pos = offs[:, None] + np.arange(seq)[None, :]
        kwargs["offset"] = xp.asarray(offs)
    x = xp.asarray(x_host) if backend == "cupy" else x_host
    out = apply_rotary(x, xp.asarray(cos), xp.asarray(sin), layout=layout, rotary_dim=rotary_dim,
                       inverse=inverse, seq_axis=seq_axis, backend=backend, **kwargs)
    x4 = x_host if seq_axis == -2 else x_host.transpose(0, 2, 1, 3)
    out4 = to_numpy(out) if seq_axis == -2 else to_numpy(out).transpose(0, 2, 1, 3)
    _check_against_naive(out4, x4, cos, sin, pos, layout, rotary_dim, inverse)


def test_seed_deepseek_layout_matches_pytorch(backend):
    torch = pytest.importorskip("torch")
    from torch_reference import apply_rotary_half, apply_rotary_pos_emb

    xp = _xp(backend)
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 4, 7, 64)).astype(np.float32)
    k = rng.standard_normal((2, 1, 7, 64)).astype(np.float32)
    cos, sin = _tables(100, 64)
    pos = rng.integers(0, 100, (2, 7))
    tq, tk = apply_rotary_pos_emb(*(torch.from_numpy(np.array(a)) for a in (q, k, cos, sin, pos)))
    rope = RotaryEmbedding(64, 100, backend=backend)
    oq, ok = rope.apply(xp.asarray(q), xp.asarray(k), xp.asarray(pos), layout="deepseek")
    # the reference rounds three times in float32; we round once: a couple of float32 ulps of |x|
    tol = 4 * np.finfo(np.float32).eps * (np.abs(q).max() + 1)
    assert np.abs(to_numpy(oq) - tq.numpy()).max() <= tol
    assert np.abs(to_numpy(ok) - tk.numpy()).max() <= tol
    th = apply_rotary_half(*(torch.from_numpy(np.array(a)) for a in (q, cos, sin, pos)))
    oh, _ = rope.apply(xp.asarray(q), position_ids=xp.asarray(pos), layout="half")
    assert np.abs(to_numpy(oh) - th.numpy()).max() <= tol


# ---------------------------------------------------------------------------------------------- properties
@given(layout=st.sampled_from(LAYOUTS), seq=st.integers(1, 12), start=st.integers(0, 5000),
       seed=st.integers(0, 2**16))
def test_rotation_properties(backend, layout, seq, start, seed):
    xp = _xp(backend)
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((1, 2, seq, 32))
    cos, sin = _tables(start + seq, 32, precision="exact", dtype="float64")
    c, s = xp.asarray(cos), xp.asarray(sin)
    y = to_numpy(apply_rotary(xp.asarray(x), c, s, offset=start, layout=layout, backend=backend))
    # the norm of each rotated pair, hence of each row, is preserved
    np.testing.assert_allclose(np.linalg.norm(y, axis=-1), np.linalg.norm(x, axis=-1), rtol=1e-13)
    # the inverse undoes the rotation, in every layout ("deepseek" included: its inverse moves the halves back
    # to the pairs they came from; it used to rotate them as pairs again, off by O(1))
    back = to_numpy(apply_rotary(xp.asarray(y), c, s, offset=start, layout=layout, inverse=True, backend=backend))
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-13)
    # position 0 is the identity (up to the permutation of "deepseek")
    y0 = to_numpy(apply_rotary(xp.asarray(x), c, s, xp.asarray(np.zeros(seq, np.int64)), layout=layout,
                               backend=backend))
    expected = x if layout != "deepseek" else np.concatenate([x[..., 0::2], x[..., 1::2]], axis=-1)
    np.testing.assert_array_equal(y0, expected)


@given(m=st.integers(0, 3000), n=st.integers(0, 3000), layout=st.sampled_from(["half", "interleaved"]),
       seed=st.integers(0, 2**16))
def test_relative_position_property(backend, m, n, layout, seed):
    """<R(m) q, R(n) k> == <R(m - n) q, k>: attention sees only the offset."""
    if m < n:
        m, n = n, m
    xp = _xp(backend)
    rng = np.random.default_rng(seed)
    q, k = rng.standard_normal((2, 1, 1, 1, 64))
    cos, sin = (xp.asarray(t) for t in _tables(3001, 64, precision="exact", dtype="float64"))
    rq = to_numpy(apply_rotary(xp.asarray(q), cos, sin, offset=m, layout=layout, backend=backend))
    rk = to_numpy(apply_rotary(xp.asarray(k), cos, sin, offset=n, layout=layout, backend=backend))
    rd = to_numpy(apply_rotary(xp.asarray(q), cos, sin, offset=m - n, layout=layout, backend=backend))
    assert np.sum(rq * rk) == pytest.approx(np.sum(rd * k), abs=1e-9 * (1 + np.abs(q).sum() * np.abs(k).sum()))


# --------------------------------------------------------------------------------------- memory handling
@pytest.mark.parametrize("layout", LAYOUTS)
def test_in_place_and_out(backend, layout):
    xp = _xp(backend)
    rng = np.random.default_rng(3)
    x = rng.standard_normal((1, 2, 6, 24)).astype(np.float32)
    cos, sin = (xp.asarray(t) for t in _tables(10, 16))
    expected = to_numpy(apply_rotary(xp.asarray(x), cos, sin, rotary_dim=16, layout=layout, backend=backend))
    buf = xp.asarray(x.copy())
    result = apply_rotary(buf, cos, sin, rotary_dim=16, layout=layout, out=buf, backend=backend)
    assert result is buf
    np.testing.assert_array_equal(to_numpy(buf), expected)
    np.testing.assert_array_equal(to_numpy(buf)[..., 16:], x[..., 16:])  # pass-through channels untouched
    dest = xp.zeros_like(xp.asarray(x))
    apply_rotary(xp.asarray(x), cos, sin, rotary_dim=16, layout=layout, out=dest, backend=backend)
    np.testing.assert_array_equal(to_numpy(dest), expected)


def test_fused_qkv_slices_are_not_copied_by_numba():
    """A slice of a fused (batch, seq, 3 * heads, dim) buffer is rotated in place through its strides."""
    pytest.importorskip("numba")
    rng = np.random.default_rng(4)
    qkv = rng.standard_normal((2, 5, 3 * 4, 32)).astype(np.float32)
    original = qkv.copy()
    q = qkv[:, :, :4]  # (batch, seq, heads, dim), non-contiguous
    cos, sin = _tables(5, 32)
    apply_rotary(q, cos, sin, out=q, seq_axis=-3, backend="numba")
    expected = apply_naive(original[:, :, :4].transpose(0, 2, 1, 3), cos, sin,
                           np.broadcast_to(np.arange(5), (2, 5)), "half", 32).transpose(0, 2, 1, 3)
    np.testing.assert_allclose(qkv[:, :, :4], expected.astype(np.float32), rtol=0, atol=1e-6)
    np.testing.assert_array_equal(qkv[:, :, 4:], original[:, :, 4:])  # k and v untouched


# ------------------------------------------------------------------------------ RotaryEmbedding.apply
def test_embedding_apply_gqa_offsets_and_growth(backend):
    xp = _xp(backend)
    rng = np.random.default_rng(5)
    rope = RotaryEmbedding(32, 16, 10000.0, backend=backend, precision="exact")
    q = rng.standard_normal((2, 8, 3, 32)).astype(np.float32)
    k = rng.standard_normal((2, 2, 3, 32)).astype(np.float32)
    offs = np.array([0, 40])
    oq, ok = rope.apply(xp.asarray(q), xp.asarray(k), offset=xp.asarray(offs))
    assert rope.max_seq_len_cached >= 43  # grown past max_position_embeddings for the largest position
    cos, sin = _tables(43, 32, precision="exact")
    pos = offs[:, None] + np.arange(3)
    _check_against_naive(oq, q, cos, sin, pos, "half", 32)
    _check_against_naive(ok, k, cos, sin, pos, "half", 32)
    only_q, none = rope.apply(xp.asarray(q), offset=7)
    assert none is None
    _check_against_naive(only_q, q, cos, sin, np.broadcast_to(7 + np.arange(3), (2, 3)), "half", 32)


def test_embedding_apply_partial_rotary_and_yarn():
    rope = RotaryEmbedding.from_preset("deepseek-v3")
    rng = np.random.default_rng(6)
    q = rng.standard_normal((1, 2, 4, 192)).astype(np.float32)  # 128 nope + 64 rope channels, rope first here
    oq, _ = rope.apply(q, offset=100000, layout="deepseek")
    cos, sin = rope.cos_sin(100004)
    _check_against_naive(oq, q, np.asarray(cos), np.asarray(sin), np.broadcast_to(100000 + np.arange(4), (1, 4)),
                         "deepseek", 64)
    np.testing.assert_array_equal(oq[..., 64:], q[..., 64:])


# ------------------------------------------------------------------------------------------------ errors
@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(position_ids=np.array([0, 1, 99])), ValueError,
     r"largest position is 99 but the cos/sin tables have 10 rows"),
    (dict(position_ids=np.array([0, -1, 2])), ValueError,
     r"position_ids: positions must be >= 0, got a smallest position of -1"),
    (dict(position_ids=np.array([0.0, 1.0, 2.0])), TypeError, r"position_ids: expected an integer array"),
    (dict(position_ids=np.array([0, 1])), ValueError, r"position_ids: shape \(2,\) does not match seq length 3"),
    (dict(position_ids=np.zeros((3, 3), np.int64)), ValueError, r"does not match \(batch, seq\) = \(2, 3\)"),
    (dict(offset=8), ValueError, r"largest position is 10 but the cos/sin tables have 10 rows"),
    (dict(offset=-1), ValueError, r"smallest position of -1"),
    (dict(offset=np.array([1, 2, 3])), ValueError, r"offset: expected shape \(batch,\) = \(2,\)"),
    (dict(offset=1.5), TypeError, r"offset: expected an int or an integer array"),
    (dict(rotary_dim=7), ValueError, r"rotary_dim: must be a positive even integer, got 7"),
    (dict(rotary_dim=20), ValueError, r"rotary_dim: 20 is larger than head_dim 16"),
    (dict(rotary_dim=4), ValueError, r"rotary_dim: 4 does not match the tables' width 8"),
    (dict(layout="neox"), ValueError, r"layout: unknown layout 'neox'; allowed: 'half', 'interleaved'"),
    (dict(seq_axis=-1), ValueError, r"seq_axis: expected -2"),
    (dict(out=np.zeros((2, 2, 3, 15), np.float32)), ValueError, r"out: shape \(2, 2, 3, 15\) .* must equal"),
    (dict(out=np.zeros((2, 2, 3, 16), np.float64)), ValueError, r"out: .* dtype float64 must equal"),
    (dict(backend="tpu"), ValueError, r"backend: unknown backend 'tpu'"),
])
def test_apply_errors(kwargs, exc, match):
    x = np.zeros((2, 2, 3, 16), np.float32)
    cos, sin = _tables(10, 8)
    with pytest.raises(exc, match=match):
        apply_rotary(x, cos, sin, **kwargs)


def test_apply_shape_errors():
    cos, sin = _tables(10, 8)
    with pytest.raises(ValueError, match=r"cos and sin: shapes differ: \(10, 8\) vs \(9, 8\)"):
        apply_rotary(np.zeros((1, 3, 8), np.float32), cos, sin[:9])
    with pytest.raises(ValueError, match=r"x: expected 2 to 4 dimensions"):
        apply_rotary(np.zeros(8, np.float32), cos, sin)
    with pytest.raises(TypeError, match=r"x: expected a NumPy or CuPy array"):
        apply_rotary([[0.0] * 8], cos, sin)
    with pytest.raises(TypeError, match=r"x.dtype: unsupported dtype"):
        apply_rotary(np.zeros((3, 8), np.int16), cos, sin)


def test_mixed_array_libraries():
    cupy = pytest.importorskip("cupy")
    if "cupy" not in ropeflow.available_backends():
        pytest.skip("needs a GPU to make CuPy arrays")
    cos, sin = _tables(10, 8)
    with pytest.raises(TypeError, match="use one library"):
        apply_rotary(cupy.zeros((3, 8), cupy.float32), cos, sin)


def test_failed_embedding_apply_builds_nothing():
    rope = RotaryEmbedding(8, 16)
    q = np.zeros((1, 1, 3, 8), np.float32)
    with pytest.raises(TypeError, match="position_ids: expected an integer array"):
        rope.apply(q, position_ids=np.array([0.0, 5.0, 900.0]))
    with pytest.raises(ValueError, match="smallest position of -4"):
        rope.apply(q, offset=-4)
    assert rope.cache_info()["builds"] == 0 and rope.max_seq_len_cached is None


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("seq_axis", [-2, -3])
@pytest.mark.parametrize("dtype", DTYPES)
def test_q_and_k_in_one_launch_with_different_heads_and_dims(backend, seq_axis, dtype):
    """RotaryEmbedding.apply hands q and k to one kernel launch; head counts, head dims and partial rotary
    differ between them, and decode-sized (serial) and prefill-sized (parallel) work both match the naive loop."""
    dt = _dtype(dtype)
    rng = np.random.default_rng(9)
    rope = RotaryEmbedding(64, 512, 10000.0, backend=backend)
    for batch, seq in ((3, 1), (2, 300)):
        shape_q = (batch, 8, seq, 96) if seq_axis == -2 else (batch, seq, 8, 96)
        shape_k = (batch, 2, seq, 80) if seq_axis == -2 else (batch, seq, 2, 80)
        q = rng.standard_normal(shape_q).astype(dt)
        k = rng.standard_normal(shape_k).astype(dt)
        offsets = rng.integers(0, 512 - seq, batch)
        q_rot, k_rot = rope.apply(q, k, offset=offsets, seq_axis=seq_axis)
        pos = offsets[:, None] + np.arange(seq)[None, :]
        cos, sin = rope.cos_sin(512, "float64" if dtype == "float64" else "float32")
        for x, got in ((q, q_rot), (k, k_rot)):
            x4 = x if seq_axis == -2 else x.transpose(0, 2, 1, 3)
            g4 = got if seq_axis == -2 else got.transpose(0, 2, 1, 3)
            _check_against_naive(g4, x4, cos, sin, pos, "half", 64)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_empty_batch_with_an_offset_array(backend):
    """Batch 0 with its (0,) offsets is a valid call with nothing to rotate (NumPy's "zero-size array to
    reduction operation" escaped from the offsets' minimum); (0, seq) position_ids already worked."""
    rope = RotaryEmbedding(8, 64)
    cos, sin = rope.cos_sin(64)
    x0 = np.ones((0, 2, 3, 8), np.float32)
    offsets = np.zeros(0, np.int64)
    assert apply_rotary(x0, cos, sin, offset=offsets, backend=backend).shape == x0.shape
    rope = RotaryEmbedding(8, 64, backend=backend)
    for call in (lambda: rope.apply(x0, x0, offset=offsets), lambda: rope.plan(x0, x0)(x0, x0, offset=offsets),
                 lambda: rope.apply(x0, x0, offset=offsets, out=(x0, x0))):
        q, k = call()
        assert q.shape == k.shape == x0.shape
