"""The host hot path of RotaryEmbedding.apply (issue 16): taken where it applies, bit-identical to the general
path and to the float64 loop reference rounded once, and never taken where the general path must decide."""

from __future__ import annotations

import numpy as np
import pytest
from conftest import HOST_BACKENDS
from reference import apply_naive

from ropeflow import RotaryEmbedding, apply_rotary
from ropeflow._hotpath import host_apply, host_position_ids, host_positions, torch_host_apply

TABLE = 64


def _dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def _rope(backend="numba", table_dtype="float32", **kw):
    rope = RotaryEmbedding(16, TABLE, backend=backend, **kw)
    rope.cos_sin(TABLE, table_dtype)  # the table the hot path reads
    return rope


def _table_dtype(x):
    return "float64" if x.dtype == np.float64 else "float32"


def _qk(shape_q, shape_k, dtype, seed=0):
    rng = np.random.default_rng(seed)
    return rng.standard_normal(shape_q).astype(dtype), rng.standard_normal(shape_k).astype(dtype)


def _general(rope, q, offset, layout, seq_axis):
    """The general path: apply_rotary with the embedding's own tables."""
    cos, sin = rope.cos_sin(TABLE, _table_dtype(q))
    return apply_rotary(q, cos, sin, offset=offset, layout=layout, seq_axis=seq_axis, backend=rope.backend)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
@pytest.mark.parametrize("offset", [0, 5, "array", "int32 array"])
def test_hot_path_equals_general_path_and_reference(backend, dtype_name, layout, offset):
    dtype = _dtype(dtype_name)
    # float64 inputs read float64 tables: exact precision (reference precision keeps float32 ones)
    rope = _rope(backend, "float64", precision="exact") if dtype_name == "float64" else _rope(backend)
    n_batch, n_seq = 3, 2
    if offset == "array":
        offset = np.array([0, 7, 40], dtype=np.int64)
    elif offset == "int32 array":
        offset = np.array([3, 0, 61], dtype=np.int32)
    q, k = _qk((n_batch, 4, n_seq, 20), (n_batch, 2, n_seq, 16), dtype)  # q: head_dim 20 > dim (pass-through)
    hot = host_apply(rope, q, k, None, offset, layout, -2)
    assert hot is not None
    q_rot, k_rot = rope.apply(q, k, offset=offset, layout=layout)
    for got, x in ((hot[0], q), (hot[1], k), (q_rot, q), (k_rot, k)):
        want = _general(rope, x, offset, layout, -2)
        assert got.dtype == dtype and got.shape == x.shape
        np.testing.assert_array_equal(got.view(np.uint8), want.view(np.uint8))
        cos, sin = (np.asarray(t, dtype=np.float64) for t in rope.cos_sin(TABLE, _table_dtype(x)))
        positions = np.broadcast_to(np.asarray(offset).reshape(-1, 1) + np.arange(n_seq), (n_batch, n_seq))
        ref = apply_naive(x, cos, sin, positions, layout, 16)
        tol = {"float16": 1e-3, "bfloat16": 8e-3}.get(dtype_name, 1e-6)
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=tol, atol=tol)


@pytest.mark.parametrize("n_seq", [1, 3])
def test_token_major_and_q_alone(n_seq):
    rope = _rope()
    q, k = _qk((2, n_seq, 4, 16), (2, n_seq, 2, 16), np.float32, seed=1)
    offset = np.array([9, 2])
    hot_q, hot_k = host_apply(rope, q, k, None, offset, "half", -3)
    np.testing.assert_array_equal(hot_q, _general(rope, q, offset, "half", -3))
    np.testing.assert_array_equal(hot_k, _general(rope, k, offset, "half", -3))
    alone, none = host_apply(rope, q, None, None, offset, "half", -3)
    assert none is None
    np.testing.assert_array_equal(alone, hot_q)


def test_strided_views():
    rope = _rope()
    qkv = np.random.default_rng(2).standard_normal((2, 6, 3, 24)).astype(np.float32)
    q, k = qkv[:, :4, :, 4:20], qkv[:, 4:, :, :16]  # non-contiguous views of one buffer
    hot_q, hot_k = host_apply(rope, q, k, None, 3, "interleaved", -2)
    np.testing.assert_array_equal(hot_q, _general(rope, q, 3, "interleaved", -2))
    np.testing.assert_array_equal(hot_k, _general(rope, k, 3, "interleaved", -2))


def test_positions_rows():
    positions, longest = host_positions(4, 3, 2)
    np.testing.assert_array_equal(positions, [[4, 5]])
    assert longest == 6
    positions, longest = host_positions(np.array([1, 9], dtype=np.uint8), 2, 3)
    assert positions.dtype == np.int64
    np.testing.assert_array_equal(positions, [[1, 2, 3], [9, 10, 11]])
    assert longest == 12
    big = np.arange(100, dtype=np.int64)  # above the list-check size: reductions
    assert host_positions(big, 100, 1)[1] == 100


class _Sub(np.ndarray):
    pass


@pytest.mark.parametrize("case", [
    "beyond the table", "negative int", "negative array", "float array", "bool array", "wrong length",
    "2-D offset", "numpy int scalar", "non-native q", "3-D q", "k dtype differs", "k batch differs",
    "head_dim too small", "unknown layout", "layout list", "seq_axis -1", "seq_axis bool", "uint64 beyond int64",
    "empty batch", "ndarray subclass",
])
def test_falls_back_where_the_general_path_decides(case):
    """Every argument the hot path does not take returns None: the general path then runs (and raises its
    own error, or builds the table)."""
    rope = _rope()
    q, k = _qk((2, 4, 1, 16), (2, 2, 1, 16), np.float32)
    offset, layout, seq_axis = np.array([1, 2]), "half", -2
    if case == "beyond the table":
        offset = np.array([1, TABLE])
    elif case == "negative int":
        offset = -1
    elif case == "negative array":
        offset = np.array([-1, 2])
    elif case == "float array":
        offset = np.array([1.0, 2.0])
    elif case == "bool array":
        offset = np.array([True, False])
    elif case == "wrong length":
        offset = np.array([1, 2, 3])
    elif case == "2-D offset":
        offset = np.array([[1], [2]])
    elif case == "numpy int scalar":
        offset = np.int64(3)
    elif case == "non-native q":
        q = q.astype(q.dtype.newbyteorder())
    elif case == "3-D q":
        q = q[0]
    elif case == "k dtype differs":
        k = k.astype(np.float64)
    elif case == "k batch differs":
        k = k[:1]
    elif case == "head_dim too small":
        q = q[..., :8]
    elif case == "unknown layout":
        layout = "neox"
    elif case == "layout list":
        layout = ["half"]
    elif case == "seq_axis -1":
        seq_axis = -1
    elif case == "seq_axis bool":
        seq_axis = True
    elif case == "uint64 beyond int64":
        offset = np.array([1, 2**63 + 5], dtype=np.uint64)
    elif case == "empty batch":
        q, k, offset = q[:0], k[:0], np.array([], dtype=np.int64)
    elif case == "ndarray subclass":
        offset = np.array([1, 2]).view(_Sub)
    assert host_apply(rope, q, k, None, offset, layout, seq_axis) is None


def test_no_hot_path_before_the_table_or_for_length_dependent_frequencies():
    rope = RotaryEmbedding(16, TABLE)
    q, k = _qk((1, 2, 1, 16), (1, 2, 1, 16), np.float32)
    assert host_apply(rope, q, k, None, 3, "half", -2) is None  # nothing built yet
    rope.apply(q, k, offset=3)  # the general path builds the table
    assert host_apply(rope, q, k, None, 3, "half", -2) is not None
    dynamic = RotaryEmbedding(16, TABLE, scaling={"rope_type": "dynamic", "factor": 2.0})
    dynamic.cos_sin(TABLE)
    assert host_apply(dynamic, q, k, None, 3, "half", -2) is None
    reference_f64 = _rope()  # reference precision keeps float32 tables: float64 q needs a cast
    assert host_apply(reference_f64, q.astype(np.float64), k.astype(np.float64), None, 3, "half", -2) is None


def test_reference_precision_limit_is_the_general_paths():
    rope = _rope()
    q, k = _qk((1, 2, 1, 16), (1, 2, 1, 16), np.float32)
    assert host_apply(rope, q, k, None, 2**24, "half", -2) is None
    with pytest.raises(ValueError, match="exact only below 2"):
        rope.apply(q, k, offset=2**24)


def test_torch_hot_path():
    torch = pytest.importorskip("torch")
    rope = _rope()
    q, k = _qk((3, 4, 1, 16), (3, 2, 1, 16), np.float32)
    offset = np.array([0, 11, 50])
    want_q, want_k = rope.apply(q, k, offset=offset)
    for off in (offset, torch.from_numpy(offset), 7):
        got = torch_host_apply(rope, torch.from_numpy(q), torch.from_numpy(k), None, off, "half", -2)
        assert got is not None and all(type(t) is torch.Tensor for t in got)
        if not isinstance(off, int):
            np.testing.assert_array_equal(got[0].numpy(), want_q)
            np.testing.assert_array_equal(got[1].numpy(), want_k)
    qt = torch.from_numpy(q)
    assert torch_host_apply(rope, qt.to(torch.bfloat16), None, None, 1, "half", -2) is None  # the general path
    assert torch_host_apply(rope, qt.requires_grad_(True), None, None, 1, "half", -2) is None
    assert torch_host_apply(rope, torch.from_numpy(q), torch.from_numpy(k).double(), None, 1, "half", -2) is None
    ids = np.array([[0, 5, 9], [1, 2, 3]]).T[:, :1].copy()  # (batch, seq) = (3, 1)
    got = torch_host_apply(rope, torch.from_numpy(q), torch.from_numpy(k), torch.from_numpy(ids), 0, "half", -2)
    want_q, want_k = rope.apply(q, k, ids)
    np.testing.assert_array_equal(got[0].numpy(), want_q)
    np.testing.assert_array_equal(got[1].numpy(), want_k)
    q_rot, _ = rope.apply(torch.from_numpy(q).to(torch.bfloat16), None, offset=torch.from_numpy(offset))
    assert q_rot.dtype == torch.bfloat16


def test_hot_path_is_used_by_apply(monkeypatch):
    """RotaryEmbedding.apply returns the hot path's result where it applies (a sentinel proves the call)."""
    import ropeflow.rotary as rotary

    rope = _rope()
    q, k = _qk((1, 2, 1, 16), (1, 2, 1, 16), np.float32)
    sentinel = (np.zeros(1), np.zeros(1))
    monkeypatch.setattr(rotary, "host_apply", lambda *args: sentinel)
    assert rope.apply(q, k, offset=1) is sentinel
    assert rope.apply(q, k, position_ids=np.array([1])) is sentinel
    packed = np.ones((2, 2, 16), dtype=np.float32)  # (tokens, heads, head_dim): packed batches, the general path
    assert rope.apply(packed, packed, cu_seqlens=np.array([0, 1, 2]), seq_axis=-3) is not sentinel


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("ids_kind", ["(seq,)", "(batch, seq)", "int32 (batch, seq)", "uint8 (seq,)", "big"])
@pytest.mark.parametrize("seq_axis", [-2, -3])
def test_position_ids_hot_path_equals_general_path(backend, ids_kind, seq_axis):
    rope = _rope(backend)
    rng = np.random.default_rng(5)
    n_batch, n_seq = (3, 2) if ids_kind != "big" else (9, 8)  # big: 72 ids, checked by reductions
    shape_q = (n_batch, 4, n_seq, 20) if seq_axis == -2 else (n_batch, n_seq, 4, 20)
    shape_k = (n_batch, 2, n_seq, 16) if seq_axis == -2 else (n_batch, n_seq, 2, 16)
    q, k = _qk(shape_q, shape_k, np.float32, seed=3)
    ids = rng.integers(0, TABLE, size=(n_seq,) if "(seq,)" in ids_kind else (n_batch, n_seq))
    ids = ids.astype({"int32 (batch, seq)": np.int32, "uint8 (seq,)": np.uint8}.get(ids_kind, np.int64))
    hot = host_apply(rope, q, k, ids, 0, "half", seq_axis)
    assert hot is not None
    cos, sin = rope.cos_sin(TABLE)
    positions = np.broadcast_to(ids, (n_batch, n_seq))
    for got, x in zip(hot, (q, k), strict=True):
        want = apply_rotary(x, cos, sin, position_ids=ids, seq_axis=seq_axis, backend=rope.backend)
        np.testing.assert_array_equal(got, want)
        x4 = x if seq_axis == -2 else x.transpose(0, 2, 1, 3)
        ref = apply_naive(x4, *(np.asarray(t, dtype=np.float64) for t in (cos, sin)), positions, "half", 16)
        ref = ref if seq_axis == -2 else ref.transpose(0, 2, 1, 3)
        np.testing.assert_allclose(got.astype(np.float64), ref, rtol=1e-6, atol=1e-6)
    via_apply = rope.apply(q, k, ids, seq_axis=seq_axis)
    np.testing.assert_array_equal(via_apply[0], hot[0])


@pytest.mark.parametrize("case", ["negative", "beyond the table", "float", "bool", "wrong seq", "wrong batch",
                                  "3-D (M-RoPE)", "uint64 beyond int64", "list"])
def test_position_ids_fall_back_where_the_general_path_decides(case):
    rope = _rope()
    q, k = _qk((2, 4, 3, 16), (2, 2, 3, 16), np.float32)
    ids = {"negative": np.array([0, -1, 2]), "beyond the table": np.array([0, 1, TABLE]),
           "float": np.array([0.0, 1.0, 2.0]), "bool": np.array([True, False, True]),
           "wrong seq": np.array([0, 1]), "wrong batch": np.zeros((3, 3), dtype=np.int64),
           "3-D (M-RoPE)": np.zeros((3, 2, 3), dtype=np.int64),
           "uint64 beyond int64": np.array([0, 1, 2**63 + 1], dtype=np.uint64), "list": [0, 1, 2]}[case]
    assert host_apply(rope, q, k, ids, 0, "half", -2) is None
    if case in ("negative", "wrong seq", "3-D (M-RoPE)"):  # (beyond the table, the table grows)
        with pytest.raises(ValueError, match="position_ids"):  # the general path's own error
            rope.apply(q, k, ids)


def test_position_ids_rows():
    positions, longest = host_position_ids(np.array([4, 0, 9], dtype=np.int16), 2, 3)
    assert positions.dtype == np.int64 and positions.shape == (1, 3) and longest == 10
    positions, longest = host_position_ids(np.array([[1], [7]]), 2, 1)
    np.testing.assert_array_equal(positions, [[1], [7]])
    assert longest == 8


# ----------------------------------------------------------------------------- out= (results where the caller says)
@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
@pytest.mark.parametrize("with_ids", [False, True])
def test_out_in_place_equals_new_arrays(backend, layout, with_ids):
    """``out=(q, k)`` rotates in place (the hot path for element-wise layouts, the general path for "deepseek")
    and returns the caller's arrays, with the bits of the new-array call; ``out`` arrays of any kind give the
    same bits too."""
    rope = _rope(backend)
    q, k = _qk((3, 4, 2, 20), (3, 2, 2, 16), np.float32, seed=7)
    ids = np.array([[0, 5], [9, 1], [60, 2]])
    kwargs = {"position_ids": ids} if with_ids else {"offset": np.array([0, 7, 40])}
    want_q, want_k = rope.apply(q, k, layout=layout, **kwargs)
    q_in, k_in = q.copy(), k.copy()
    got = rope.apply(q_in, k_in, layout=layout, out=(q_in, k_in), **kwargs)
    assert got[0] is q_in and got[1] is k_in
    np.testing.assert_array_equal(q_in, want_q)
    np.testing.assert_array_equal(k_in, want_k)
    q_out, k_out = np.full_like(q, np.nan), np.full_like(k, np.nan)
    got = rope.apply(q, k, layout=layout, out=[q_out, k_out], **kwargs)
    assert got[0] is q_out and got[1] is k_out
    np.testing.assert_array_equal(q_out, want_q)
    np.testing.assert_array_equal(k_out, want_k)
    alone = np.empty_like(q)
    assert rope.apply(q, None, layout=layout, out=(alone, None), **kwargs)[0] is alone
    np.testing.assert_array_equal(alone, want_q)


@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
@pytest.mark.parametrize("token_major", [False, True])
def test_separate_out_arrays_take_the_hot_path(layout, token_major, monkeypatch):
    """``out=(q_out, k_out)`` of separate NumPy arrays (a decode step writing into a preallocated buffer) runs
    on the hot path, with the new-array call's bits, and returns the caller's arrays; outputs that may
    overlap q, k or each other, and positions stored in an output's memory, go to the general path or are
    copied first, with the same bits."""
    from ropeflow.backends._numba import NumbaBackend

    calls = []
    hot = NumbaBackend.apply_hot
    monkeypatch.setattr(NumbaBackend, "apply_hot", lambda self, *args: calls.append(args[1]) or hot(self, *args))
    rope = _rope()
    seq_axis = -3 if token_major else -2
    shape_q, shape_k = ((3, 1, 4, 20), (3, 1, 2, 16)) if token_major else ((3, 4, 1, 20), (3, 2, 1, 16))
    q, k = _qk(shape_q, shape_k, np.float32, seed=11)
    offset = np.array([0, 7, 40])
    want_q, want_k = rope.apply(q, k, offset=offset, layout=layout, seq_axis=seq_axis)
    q_out, k_out = np.full_like(q, np.nan), np.full_like(k, np.nan)
    calls.clear()
    out = (q_out, k_out)
    got = rope.apply(q, k, offset=offset, layout=layout, seq_axis=seq_axis, out=out)
    assert got is out and calls and calls[0] is q_out  # the hot path wrote them, and returns the caller's pair
    np.testing.assert_array_equal(q_out, want_q)
    np.testing.assert_array_equal(k_out, want_k)
    strided = np.full(shape_q[:3] + (40,), np.nan, np.float32)[..., ::2]  # any strides
    calls.clear()
    assert rope.apply(q, None, offset=offset, layout=layout, seq_axis=seq_axis, out=(strided, None))[0] is strided
    assert calls and calls[0] is strided
    np.testing.assert_array_equal(strided, want_q)
    # an output over q itself, shifted by one channel: the general path copies q first
    buffer = np.concatenate([q, np.zeros(shape_q[:3] + (1,), np.float32)], axis=3)
    q_view, shifted = buffer[..., :20], buffer[..., 1:]
    calls.clear()
    rope.apply(q_view, None, offset=offset, layout=layout, seq_axis=seq_axis, out=(shifted, None))
    assert not calls
    np.testing.assert_array_equal(shifted, want_q)
    # the offsets stored in q_out's memory: copied before the kernel writes there
    q_out[...] = 0
    stored = q_out.reshape(-1)[:3].view(np.int32)
    stored[...] = offset
    calls.clear()
    rope.apply(q, k, offset=stored, layout=layout, seq_axis=seq_axis, out=(q_out, k_out))
    assert calls
    np.testing.assert_array_equal(q_out, want_q)
    np.testing.assert_array_equal(k_out, want_k)


def test_out_in_place_of_views_of_one_buffer_and_crossed_overlaps():
    """q and k as views of one qkv buffer, rotated in place; outputs crossing over the other input (q's results
    written over k) are computed as if the inputs had been copied first."""
    rope = _rope()
    qkv = np.random.default_rng(8).standard_normal((2, 6, 3, 16)).astype(np.float32)
    q, k = qkv[:, :4], qkv[:, 4:]
    want_q, want_k = rope.apply(q, k, offset=3)
    rope.apply(q, k, offset=3, out=(q, k))
    np.testing.assert_array_equal(qkv[:, :4], want_q)
    np.testing.assert_array_equal(qkv[:, 4:], want_k)
    a, b = _qk((2, 2, 3, 16), (2, 2, 3, 16), np.float32, seed=9)
    want_a, want_b = rope.apply(a, b, offset=1)
    rope.apply(a, b, offset=1, out=(b, a))  # swapped: each output is the other input
    np.testing.assert_array_equal(b, want_a)
    np.testing.assert_array_equal(a, want_b)


@pytest.mark.parametrize("case", ["not a pair", "k_out missing", "k_out for no k", "wrong shape", "wrong dtype",
                                  "read-only", "overlapping outs", "list out"])
def test_out_errors_name_the_parameter_and_change_nothing(case):
    rope = RotaryEmbedding(16, TABLE)
    q, k = _qk((2, 4, 3, 16), (2, 2, 3, 16), np.float32)
    kk = k
    if case == "not a pair":
        out, err = np.empty_like(q), (TypeError, "out: expected a pair")
    elif case == "k_out missing":
        out, err = (np.empty_like(q), None), (ValueError, "k_out must be an array exactly when k")
    elif case == "k_out for no k":
        out, err, kk = (np.empty_like(q), np.empty_like(k)), (ValueError, "k_out must be an array"), None
    elif case == "wrong shape":
        out, err = (np.empty_like(q), np.empty_like(q)), (ValueError, r"out\[1\] \(k_out\): shape")
    elif case == "wrong dtype":
        out, err = (np.empty_like(q, dtype=np.float64), np.empty_like(k)), (ValueError, r"out\[0\] \(q_out\)")
    elif case == "read-only":
        ro = np.empty_like(q)
        ro.flags.writeable = False
        out, err = (ro, np.empty_like(k)), (ValueError, r"out\[0\] \(q_out\): the array is read-only")
    elif case == "overlapping outs":
        buf = np.empty((2, 4, 3, 16), np.float32)
        out, err = (buf, buf[:, :2]), (ValueError, "q_out and k_out overlap")
    else:
        out, err = [np.empty_like(q)], (TypeError, "out: expected a pair")
    with pytest.raises(err[0], match=err[1]):
        rope.apply(q, kk, offset=1, out=out)
    assert rope.cache_info()["builds"] == 0  # checked before any table was built


def test_torch_out_in_place():
    torch = pytest.importorskip("torch")
    rope = _rope()
    q, k = _qk((3, 4, 1, 16), (3, 2, 1, 16), np.float32, seed=4)
    want_q, want_k = rope.apply(q, k, offset=np.array([1, 2, 3]))
    qt, kt = torch.from_numpy(q.copy()), torch.from_numpy(k.copy())
    offset = torch.tensor([1, 2, 3])
    got = rope.apply(qt, kt, offset=offset, out=(qt, kt))  # the hot path
    assert got[0] is qt and got[1] is kt
    np.testing.assert_array_equal(qt.numpy(), want_q)
    np.testing.assert_array_equal(kt.numpy(), want_k)
    q_out, k_out = torch.empty_like(qt), torch.empty_like(kt)
    got = rope.apply(torch.from_numpy(q), torch.from_numpy(k), offset=offset, out=(q_out, k_out))  # general path
    assert got[0] is q_out and got[1] is k_out
    np.testing.assert_array_equal(q_out.numpy(), want_q)
    np.testing.assert_array_equal(k_out.numpy(), want_k)
    with pytest.raises(TypeError, match=r"out\[0\] \(q_out\)"):
        rope.apply(qt, kt, offset=offset, out=(torch.zeros(3, 4, 1, 16).requires_grad_(True), k_out))


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32"])
@pytest.mark.parametrize("n_seq", [1, 20])  # 20: more than one tile of positions
def test_out_in_place_token_major_and_half_precision(dtype_name, n_seq):
    dtype = _dtype(dtype_name)
    rope = _rope()
    q, k = _qk((2, n_seq, 4, 16), (2, n_seq, 2, 16), dtype, seed=12)
    offset = np.array([3, 40])
    want_q, want_k = rope.apply(q, k, offset=offset, seq_axis=-3)
    rope.apply(q, k, offset=offset, seq_axis=-3, out=(q, k))
    np.testing.assert_array_equal(q.view(np.uint8), want_q.view(np.uint8))
    np.testing.assert_array_equal(k.view(np.uint8), want_k.view(np.uint8))


@pytest.mark.parametrize("precision", ["reference", "exact"])
@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32", "float64"])
def test_table_hit_returns_the_general_paths_tables(precision, dtype_name, monkeypatch):
    """``rope(x)`` on a NumPy x: the hit path hands out the general path's own objects, whose values are the
    formula written out (reference: the float32 angle, bit for bit; exact: within one rounding of float64
    math), and nothing stale after the table grows."""
    from reference import tables_from_inv_freq

    import ropeflow.rotary as rotary

    dtype = _dtype(dtype_name)
    rope = RotaryEmbedding(16, 32, backend="numba", precision=precision)
    x = np.zeros((1, 2, 40, 16), dtype)
    assert rotary.host_table_hit(rope, x) is None  # no table yet
    general = rope(x)
    hit = rotary.host_table_hit(rope, x)
    assert hit is not None and hit[0] is general[0] and hit[1] is general[1]
    assert rope(x)[0] is general[0]
    storage = np.float32 if precision == "reference" or dtype_name == "float32" else np.float64
    inv_freq = rope.inv_freq.astype(np.float32 if precision == "reference" else np.float64)
    cos_ref, sin_ref = tables_from_inv_freq(inv_freq, 0, 40)
    if precision == "exact":
        angles = np.arange(40, dtype=np.float64)[:, None] * rope.inv_freq.astype(np.float64)[None, :]
        cos_ref, sin_ref = np.cos(np.concatenate([angles, angles], 1)), np.sin(np.concatenate([angles, angles], 1))
    if precision == "reference":  # the float32 formula, bit for bit
        np.testing.assert_array_equal(general[0], cos_ref.astype(dtype))
        np.testing.assert_array_equal(general[1], sin_ref.astype(dtype))
    else:  # correctly rounded tables: within one rounding of float64 math
        tol = float(np.finfo(np.float32 if dtype_name == "float32" else np.float64).eps)
        if dtype_name in ("float16", "bfloat16"):
            tol = 2.0**-7 if dtype_name == "bfloat16" else 2.0**-10
        np.testing.assert_allclose(general[0].astype(np.float64), cos_ref.astype(np.float64), rtol=tol, atol=tol)
        np.testing.assert_allclose(general[1].astype(np.float64), sin_ref.astype(np.float64), rtol=tol, atol=tol)
    # growth: a longer x builds a new snapshot; a shorter one then reads views of it, never the old ones
    rope(np.zeros((1, 2, 100, 16), dtype))
    short = rope(np.zeros((1, 2, 40, 16), dtype))
    np.testing.assert_array_equal(short[0], general[0])
    snap = rope._fixed[("numba", "cpu", dtype_name)]._snapshot
    assert short[0].base is not None and np.shares_memory(short[0], snap.cos if storage == dtype else
                                                          rope._fixed[("numba", "cpu", dtype_name)]
                                                          ._casts[dtype_name].cos)
    # never taken for seq_len or position_ids; 1-D x: None, and the general path's error
    assert rotary.host_table_hit(rope, np.zeros(16, dtype)) is None
    with pytest.raises(ValueError, match="x: needs at least 2 dimensions"):
        rope(np.zeros(16, dtype))
    calls = []
    monkeypatch.setattr(rotary, "host_table_hit", lambda *a: calls.append(a))
    rope(x, 40)
    rope(x, position_ids=np.arange(40))
    assert calls == []


@pytest.mark.parametrize("dtype_name", ["float16", "float32"])
@pytest.mark.parametrize("token_major", [False, True])
def test_kernel_checks_positions_against_the_table_before_writing(dtype_name, token_major):
    """The numba hot path hands unchecked positions to the kernel, which refuses any outside
    ``[0, rows)`` (first positions: the last one ``+ seq - 1``) before it writes anything, new outputs or in
    place; at the edge it rotates, equal to the formula written out (:func:`reference.apply_naive`)."""
    from ropeflow.backends import get_backend

    backend = get_backend("numba")
    rows, n_seq = 12, 3
    rng = np.random.default_rng(5)
    cos = rng.uniform(-1, 1, (rows, 8)).astype(np.float32)
    sin = rng.uniform(-1, 1, (rows, 8)).astype(np.float32)
    dtype = np.dtype(dtype_name)
    shape = (2, n_seq, 4, 16) if token_major else (2, 4, n_seq, 16)
    q = rng.standard_normal(shape).astype(dtype)
    k = rng.standard_normal(shape).astype(dtype)
    refused = [
        (np.array([0, rows - n_seq + 1]), True), (np.array([-1, 0]), True), (np.array([rows]), True),
        (np.array([0, 1, 2, 3, 4, rows]), False), (np.array([0, -1, 2]), False), (np.array([rows, 0, 1]), False),
    ]
    for positions, starts in refused:
        q_out, k_out = np.full_like(q, 7), np.full_like(k, 7)
        assert not backend.apply_hot(q, q_out, k, k_out, cos, sin, positions, starts, "half", 16, token_major)
        assert (q_out == 7).all() and (k_out == 7).all()
        q_in, k_in = q.copy(), k.copy()
        assert not backend.apply_hot(q_in, q_in, k_in, k_in, cos, sin, positions, starts, "half", 16, token_major)
        np.testing.assert_array_equal(q_in, q)
        np.testing.assert_array_equal(k_in, k)
    accepted = [(np.array([rows - n_seq, 0]), True, [[9, 10, 11], [0, 1, 2]]), (np.array([rows - n_seq]), True,
                [[9, 10, 11]] * 2), (np.array([11, 0, 5, 1, 2, 3]), False, [[11, 0, 5], [1, 2, 3]]),
                (np.array([4, 11, 0]), False, [[4, 11, 0]] * 2)]
    # the parallel kernel (work above SERIAL_ELEMENTS) refuses the same way
    from ropeflow.backends._numba import SERIAL_ELEMENTS

    long_seq = SERIAL_ELEMENTS // 16
    long_cos = rng.uniform(-1, 1, (long_seq + 4, 8)).astype(np.float32)
    big_q = rng.standard_normal((2, 2, long_seq, 16) if not token_major else (2, long_seq, 2, 16)).astype(dtype)
    for positions in (np.array([0, 5]), np.array([-1, 0])):
        big_out = np.full_like(big_q, 7)
        assert not backend.apply_hot(big_q, big_out, None, None, long_cos, long_cos, positions, True, "half", 16,
                                     token_major)
        assert (big_out == 7).all()
    assert backend.apply_hot(big_q, big_out, None, None, long_cos, long_cos, np.array([4, 0]), True, "half", 16,
                             token_major)
    assert not (big_out == 7).any()
    for positions, starts, expected_rows in accepted:
        q_out, k_out = np.empty_like(q), np.empty_like(k)
        assert backend.apply_hot(q, q_out, k, k_out, cos, sin, positions, starts, "half", 16, token_major)
        seq_axis = -3 if token_major else -2
        for x, got in ((q, q_out), (k, k_out)):
            want = apply_naive(np.moveaxis(x, seq_axis, -2), cos, sin, np.array(expected_rows), "half", 16)
            np.testing.assert_array_equal(np.moveaxis(got, seq_axis, -2), want.astype(dtype))
