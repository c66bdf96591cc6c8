"""RotaryEmbedding.plan: a prepared apply for repeated same-shape calls. Every result is checked against
the formula written out (reference.apply_naive, float64, rounded once) and against rope.apply itself."""

from __future__ import annotations

import numpy as np
import pytest
from reference import apply_naive

from ropeflow import RotaryEmbedding

TABLE = 64


def _dtype(name):
    if name == "bfloat16":
        return np.dtype(pytest.importorskip("ml_dtypes").bfloat16)
    return np.dtype(name)


def _naive(rope, x, positions, layout, seq_axis):
    """The formula on the embedding's float32 table (float64 for float64 x), rounded once to x's dtype."""
    table_dtype = "float64" if x.dtype == np.float64 else "float32"
    cos, sin = rope.cos_sin(int(positions.max()) + 1, table_dtype)
    half = rope.dim // 2
    x4 = np.moveaxis(x, seq_axis, -2)
    want = apply_naive(x4, cos[:, :half], sin[:, :half], positions, layout, rope.dim)
    return np.moveaxis(want, -2, seq_axis).astype(x.dtype)


@pytest.mark.parametrize("dtype_name", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
@pytest.mark.parametrize("seq_axis", [-2, -3])
def test_plan_equals_apply_and_the_formula(dtype_name, layout, seq_axis, monkeypatch):
    dtype = _dtype(dtype_name)
    rope = RotaryEmbedding(16, TABLE, backend="numba", precision="exact" if dtype_name == "float64" else "reference")
    rope.cos_sin(TABLE, "float64" if dtype_name == "float64" else "float32")  # the table the kernel reads
    forwarded = []
    monkeypatch.setattr(rope, "apply", lambda *a, **kw: forwarded.append(a) or RotaryEmbedding.apply(rope, *a, **kw))
    rng = np.random.default_rng(1)
    n_batch, n_seq = 3, 2
    q_shape = (n_batch, 4, n_seq, 20) if seq_axis == -2 else (n_batch, n_seq, 4, 20)  # 4 channels pass through
    k_shape = (n_batch, 2, n_seq, 16) if seq_axis == -2 else (n_batch, n_seq, 2, 16)
    q = rng.standard_normal(q_shape).astype(dtype)
    k = rng.standard_normal(k_shape).astype(dtype)
    step = rope.plan(q, k, layout=layout, seq_axis=seq_axis)
    calls = [
        ({"offset": 5}, np.array([[5, 6]] * n_batch)),
        ({"offset": np.array([0, 9, TABLE - n_seq])}, np.array([[0, 1], [9, 10], [TABLE - 2, TABLE - 1]])),
        ({"position_ids": np.array([7, 3])}, np.array([[7, 3]] * n_batch)),
        ({"position_ids": np.array([[1, 2], [40, 0], [TABLE - 1, 8]], dtype=np.int32)},
         np.array([[1, 2], [40, 0], [TABLE - 1, 8]])),
    ]
    for kwargs, positions in calls:
        position_ids = kwargs.get("position_ids")
        offset = kwargs.get("offset", 0)
        q_rot, k_rot = step(q, k, position_ids, offset=offset)
        np.testing.assert_array_equal(q_rot, _naive(rope, q, positions, layout, seq_axis))
        np.testing.assert_array_equal(k_rot, _naive(rope, k, positions, layout, seq_axis))
        assert forwarded == [], kwargs  # the prepared path served the call
        q_ref, k_ref = RotaryEmbedding.apply(rope, q, k, position_ids, offset=offset, layout=layout,
                                             seq_axis=seq_axis)
        np.testing.assert_array_equal(q_rot, q_ref)
        np.testing.assert_array_equal(k_rot, k_ref)
    q_alone, none = rope.plan(q, layout=layout, seq_axis=seq_axis)(q, offset=3)
    assert none is None and forwarded == []
    np.testing.assert_array_equal(q_alone, _naive(rope, q, np.array([[3, 4]] * n_batch), layout, seq_axis))


def test_plan_takes_the_prepared_path_only_for_matching_arrays(monkeypatch):
    """Calls on other shapes, strides, dtypes or libraries, and table misses, are rope.apply's own: same
    results, same errors, and a refused kernel call writes nothing."""
    rope = RotaryEmbedding(16, TABLE, backend="numba")
    rng = np.random.default_rng(2)
    q = rng.standard_normal((2, 4, 1, 16)).astype(np.float32)
    k = rng.standard_normal((2, 2, 1, 16)).astype(np.float32)
    step = rope.plan(q, k)
    general = []
    apply = rope.apply
    monkeypatch.setattr(rope, "apply", lambda *a, **kw: general.append(1) or apply(*a, **kw))
    step(q, k, offset=np.array([1, 2]))  # no table yet: rope.apply builds it
    assert general == [1]
    step(q, k, offset=np.array([1, 2]))
    assert general == [1]  # the prepared path
    others = [
        (q[:1], k[:1]), (q.astype(np.float64), k.astype(np.float64)), (np.asfortranarray(q), k),
        (q, None), (q.tolist(), k),
    ]
    for q2, k2 in others:
        n = len(general)
        try:
            result = step(q2, k2, offset=1)
        except (TypeError, ValueError) as exc:
            with pytest.raises(type(exc)):
                apply(q2, k2, offset=1)
        else:
            expected = apply(q2, k2, offset=1)
            np.testing.assert_array_equal(result[0], expected[0])
        assert len(general) == n + 1
    # a table miss: offsets past the table grow it through rope.apply, then the new table serves
    far = np.array([3 * TABLE, 5])
    q_rot, _ = step(q, k, offset=far)
    np.testing.assert_array_equal(q_rot, _naive(rope, q, far[:, None], "half", -2))
    n = len(general)
    step(q, k, offset=far)
    assert len(general) == n  # prepared again, on the grown table
    for bad in (-1, np.array([1, -2]), np.array([1.0, 2.0]), np.array([1, 2, 3]), 2**70):
        with pytest.raises((TypeError, ValueError)) as raised:
            step(q, k, offset=bad)
        with pytest.raises(type(raised.value), match=str(raised.value).split(":")[0]):
            apply(q, k, offset=bad)


def test_plan_arguments_are_checked_and_other_embeddings_forward():
    rope = RotaryEmbedding(16, TABLE, backend="numba")
    q = np.zeros((1, 2, 1, 16), np.float32)
    with pytest.raises(ValueError, match="layout"):
        rope.plan(q, layout="neox")
    with pytest.raises(ValueError, match="seq_axis"):
        rope.plan(q, seq_axis=-1)
    with pytest.raises(ValueError, match="q: "):
        rope.plan(np.zeros(16, np.float32))
    assert rope._tables == {} and rope.max_seq_len_cached is None  # planning builds nothing
    dynamic = RotaryEmbedding(16, TABLE, backend="numba", scaling={"rope_type": "dynamic", "factor": 2.0})
    rng = np.random.default_rng(3)
    q = rng.standard_normal((1, 2, 1, 16)).astype(np.float32)
    step = dynamic.plan(q)
    for offset in (3, 2 * TABLE):
        np.testing.assert_array_equal(step(q, offset=offset)[0], dynamic.apply(q, offset=offset)[0])
    numpy_rope = RotaryEmbedding(16, TABLE, backend="numpy")
    assert numpy_rope.plan(q)._prepared is None
    np.testing.assert_array_equal(numpy_rope.plan(q)(q, offset=4)[0], numpy_rope.apply(q, offset=4)[0])
