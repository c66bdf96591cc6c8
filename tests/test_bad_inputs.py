"""Bad input, property-tested (issue 13): every public entry point gets malformed arguments.

Each case asserts one of two things: an exception of an allowed type whose message names the parameter, or
a correct result (checked against ``tests/reference.py``). After an exception the instance and the shared
table registry must be exactly as they were.
"""

from __future__ import annotations

import contextlib
import gc
import math

import numpy as np
import pytest
from hypothesis import example, given
from hypothesis import strategies as st
from reference import apply_naive

import ropeflow
from ropeflow import RotaryEmbedding, _cache, apply_rotary

ALLOWED = (TypeError, ValueError, MemoryError)
DYN = {"rope_type": "dynamic", "factor": 2.0}
LONGROPE = {"rope_type": "longrope", "short_factor": [1.0] * 4, "long_factor": [2.0] * 4,
            "original_max_position_embeddings": 16}


@contextlib.contextmanager
def collector_paused():
    """Collect garbage, then keep the cyclic collector off inside the block.

    The registry holds tables weakly: a table whose embeddings died leaves it whenever the collector runs,
    which is not the doing of the call under test. State snapshots taken inside this block see only what
    the call did."""
    gc.collect()
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def registry_state() -> dict:
    """What the process-wide table registry holds: keys and the rows each table has."""
    return {key: table.capacity for key, table in list(_cache._registry.items())}


def instance_state(rope: RotaryEmbedding) -> dict:
    """Everything a call may change in an instance, by value."""
    return {
        "current": (rope.inv_freq.tobytes(), rope.attention_scaling),
        "max_seq_len_cached": rope.max_seq_len_cached,
        "dynamic_len": rope._dynamic_len,
        "tables": [(key, t.capacity) for key, t in rope._tables.items()],
        "fixed": sorted(map(repr, rope._fixed)),
        "longest": dict(rope._longest),
        "cache_info": rope.cache_info(),
        "backend": rope._backend_name,
    }


def raises_naming(param: str, call, *instances: RotaryEmbedding):
    """Run ``call``; if it raises, the error is allowed, names ``param`` and changed no state. Returns the
    result, or None after an exception."""
    with collector_paused():
        before = [instance_state(r) for r in instances], registry_state()
        try:
            result = call()
        except ALLOWED as exc:
            names = (param,) if isinstance(param, str) else param
            assert any(n in str(exc) for n in names), f"{type(exc).__name__} does not name {param!r}: {exc}"
            after = [instance_state(r) for r in instances], registry_state()
            assert after == before, "a failed call changed state"
            return None
        return result


def must_raise(param: str, call, *instances: RotaryEmbedding) -> None:
    marker = object()
    result = raises_naming(param, lambda: (call(), marker)[1], *instances)
    assert result is None, f"expected an error naming {param!r}"


# ------------------------------------------------------------------------------------- constructor
NOT_INTS = ["64", 64.0, 64.5, None, True, [64], {"dim": 64}, b"64", float("nan"), 1j]
CONSTRUCTOR_CASES = (
    [("dim", v) for v in NOT_INTS + [0, -2, 63, 1, 2**17, 2**40, -(2**70)]]
    + [("max_position_embeddings", v) for v in NOT_INTS + [0, -1, 2**63, 2**200]]
    + [("base", v) for v in ["1e4", None, True, [10000.0], 0, 1, 0.5, -10000.0, float("nan"), float("inf"),
                             -float("inf"), 1j]]
    + [("precision", v) for v in ["fp32", "", "EXACT", None, 1, ["exact"], True]]
    + [("dynamic_policy", v) for v in ["lazy", "", None, 0, ("hf",)]]
    + [("backend", v) for v in ["jax", "", "NUMBA", None, 3, ["numba"], ("numpy",)]]
    + [("scaling", v) for v in ["linear", "dynamic", 2.0, 1, True, [("rope_type", "yarn")], b"yarn"]]
    + [("factor", {"rope_type": t, "factor": f}) for t in ("linear", "dynamic", "ntk")
       for f in [0.5, -1.0, float("nan"), float("inf"), "2", True, None]]
    + [("rope_type", {"rope_type": v, "factor": 2.0}) for v in ["magic", "", "YARN", None]]
)


@pytest.mark.parametrize("param,value", CONSTRUCTOR_CASES, ids=lambda v: repr(v)[:40])
def test_constructor_bad_value(param, value):
    kwargs = {"dim": 8, "max_position_embeddings": 64, "base": 10000.0}
    key = "scaling" if param in ("factor", "rope_type") else param
    kwargs[key] = value
    if param == "scaling" and value is None:
        pytest.skip("None is valid")
    with collector_paused():
        before = registry_state()
        with pytest.raises(ALLOWED) as info:
            RotaryEmbedding(**kwargs)
        assert registry_state() == before
    assert param in str(info.value), str(info.value)


# ------------------------------------------------------------------------------------ calls on instances
def _instances() -> list[RotaryEmbedding]:
    return [
        RotaryEmbedding(8, 64, 10000.0),
        RotaryEmbedding(8, 64, 10000.0, precision="exact"),
        RotaryEmbedding(8, 16, 10000.0, scaling=DYN, dynamic_policy="stateless"),
        RotaryEmbedding(8, 16, 10000.0, scaling=DYN, dynamic_policy="reference", precision="exact"),
        RotaryEmbedding(8, 16, 10000.0, scaling=DYN, dynamic_policy="hf"),
        RotaryEmbedding(8, 32, 10000.0, scaling=LONGROPE),
    ]


SEQ_LENS = [("seq_len", v) for v in [-1, -(2**64), 2.0, 2.5, "8", True, False, [4], np.float32(3), 2**24 + 1]]
DTYPES = [("dtype", v) for v in ["int8", "float128", "complex64", 5, "bf16", "float8", np.int32, object, "", "f", None]]
X_CASES = [("x", v) for v in [[[0.0, 1.0]], 3.0, "x", None, np.zeros(4, np.float32), np.zeros((2, 4), np.int32),
                              np.zeros((2, 4), np.complex64), np.zeros((2, 4), bool), np.zeros((2, 4), object)]]


@pytest.mark.parametrize("param,value", SEQ_LENS + DTYPES)
def test_cos_sin_bad_value(param, value):
    for rope in _instances():
        if value == 2**24 + 1 and rope.precision == "exact":
            continue  # a valid (large) length in exact precision
        rope.cos_sin(20)  # some state to keep: dynamic instances are past their original length
        kwargs = {"seq_len": 12, param: value}
        must_raise(param, lambda rope=rope, kwargs=kwargs: rope.cos_sin(**kwargs), rope)


@pytest.mark.parametrize("param,value", SEQ_LENS[:-1] + X_CASES)
def test_call_bad_value(param, value):
    rope = _instances()[3]
    rope.cos_sin(40, "float64")
    x = np.zeros((1, 2, 5, 8), np.float32)
    if param == "x":
        must_raise("x", lambda: rope(value), rope)
    else:
        must_raise(param, lambda: rope(x, seq_len=value), rope)


@pytest.mark.parametrize("backend", ["auto", "numpy", "numba"])
@pytest.mark.parametrize("like", [[1.0, 2.0], "x", 3, np.float32(1)], ids=["list", "str", "int", "numpy scalar"])
def test_cos_sin_like_that_is_no_array_is_named(backend, like):
    """With an explicit host backend the error named ``x`` and called the value a CuPy array."""
    with pytest.raises(TypeError, match=r"^like: expected a NumPy or CuPy array, got "):
        RotaryEmbedding(8, 16, backend=backend).cos_sin(4, like=like)


def test_exact_huge_length_leaves_no_trace():
    """cos_sin(2**40) in exact mode cannot be allocated: MemoryError, and every policy's state is intact."""
    for rope in _instances()[1:]:
        if rope.precision != "exact":
            rope = RotaryEmbedding(rope.dim, rope.max_position_embeddings, rope.base, scaling=rope.scaling,
                                   dynamic_policy=rope.dynamic_policy, precision="exact")
        rope.cos_sin(20)
        with collector_paused():
            before = instance_state(rope), registry_state()
            with pytest.raises(MemoryError, match="seq_len"):
                rope.cos_sin(2**40)
            # past the address space NumPy refuses the size itself ("array is too big"): the same error
            # each error names the argument that asked for the positions
            x = np.ones((1, 1, 4, rope.dim), np.float32)
            need = r"4611686018427387905 positions \(0 \.\. 4611686018427387904\) need two"
            with pytest.raises(MemoryError, match=rf"^position_ids: {need}"):
                rope.apply(x, position_ids=np.array([0, 1, 2, 2**62]))
            with pytest.raises(MemoryError, match=rf"^position_ids: {need}"):
                rope(x, position_ids=np.array([0, 1, 2, 2**62]))
            with pytest.raises(MemoryError, match=r"^offset: 4611686018427387908 positions"):
                rope.apply(x, offset=2**62)
            assert (instance_state(rope), registry_state()) == before
        cos, _ = rope.cos_sin(20)
        assert np.isfinite(cos).all()


# ------------------------------------------------------------------------------------------------ apply
Q = np.arange(2 * 4 * 3 * 8, dtype=np.float32).reshape(2, 4, 3, 8) / 50
K = np.arange(2 * 2 * 3 * 8, dtype=np.float32).reshape(2, 2, 3, 8) / 70
APPLY_CASES = (
    [("q", v) for v in [None, [[0.0] * 8], np.zeros(8, np.float32), np.zeros((1, 1, 1, 1, 3, 8), np.float32),
                        np.zeros((2, 4, 3, 6), np.float32), np.zeros((2, 4, 3, 8), np.int64),
                        np.zeros((2, 4, 3, 8), np.complex128)]]
    + [("k", v) for v in [[[0.0] * 8], np.zeros(8, np.float32), np.zeros((2, 2, 4, 8), np.float32),
                          np.zeros((3, 2, 3, 8), np.float32), np.zeros((2, 2, 3, 6), np.float32),
                          np.zeros((2, 2, 3, 8), np.float64), np.zeros((2, 2, 3, 8), np.int32), "k"]]
    + [("position_ids", v) for v in [np.array([0.0, 1.0, 2.0]), np.array([0, 1]), np.zeros((3, 3), np.int64),
                                     np.zeros((2, 3, 1), np.int64), np.array([0, -1, 2]), "012", [0.5, 1, 2],
                                     np.array([0, 1, 2**64 - 1], np.uint64), np.array([0, 1, 2**63], np.uint64),
                                     np.array([True, False, True]), np.int64(3)]]
    + [("offset", v) for v in [1.5, "3", True, np.float64(2.0), -1, 2**63, 2**64, -(2**70),
                               np.array([1, 2, 3]), np.array([1.0, 2.0]), np.array([[1, 2]]),
                               np.array([-5, 0]), np.array([2**63 - 2, 0], np.int64)]]
    + [("layout", v) for v in ["neox", "", 0, True, ["half"], "HALF"]]
    + [("seq_axis", v) for v in [-1, 0, 2, -4, "-2", None, True, -2.0]]
)
# positions that exceed what reference precision can represent
APPLY_CASES += [("position_ids", np.array([0, 1, 2**24], np.int64))]


@pytest.mark.parametrize("param,value", APPLY_CASES, ids=lambda v: repr(v)[:40])
def test_embedding_apply_bad_value(param, value):
    for rope in _instances():
        big = isinstance(value, np.ndarray) and value.dtype == np.int64 and value.max() >= 2**24
        if param == "position_ids" and big and rope.precision == "exact":
            continue  # 2**24 is a valid position in exact precision
        rope.cos_sin(20)
        kwargs = {"q": Q, "k": K}
        kwargs[param] = value
        must_raise(param, lambda rope=rope, kwargs=kwargs: rope.apply(**kwargs), rope)


def _tables(n=10, dim=8):
    return RotaryEmbedding(dim, 64, 10000.0, backend="numpy").cos_sin(n)


ROTARY_CASES = (
    [("x", v) for v in [None, 1.0, [[1.0] * 8], np.zeros(8, np.float32), np.zeros((2, 2, 3, 8), np.int16),
                        np.zeros((1, 1, 2, 3, 8), np.float32), np.zeros((2, 8), "U1")]]
    + [("cos", v) for v in [None, [[1.0] * 8], np.zeros((10, 8), np.int32), np.zeros(8, np.float32),
                            np.zeros((10, 8, 1), np.float32), np.zeros((10, 8), np.complex64)]]
    + [("sin", v) for v in [None, np.zeros((10, 8), np.int64), np.zeros((9, 8), np.float32)]]
    + [("rotary_dim", v) for v in [7, 0, -2, 20, 4, 8.0, "8", True]]
    + [("inverse", v) for v in ["False", "True", 0, 1, None, [], 0.0]]
    + [("out", v) for v in [np.zeros((2, 2, 3, 15), np.float32), np.zeros((2, 2, 3, 16), np.float64),
                            [[0.0]], np.zeros((2, 2, 3, 16), ">f4"), "out"]]
    + [("backend", v) for v in ["tpu", None, 1, ""]]
    + [("layout", v) for v in ["neox", None, 2]]
    + [("seq_axis", v) for v in [-1, 1, "x"]]
    + [("position_ids", v) for v in [np.array([0, 1, 99]), np.array([[0, 1, 2]] * 3), np.array([0.0, 1, 2])]]
    + [("offset", v) for v in [8, -1, 1.5, np.array([1, 2, 3]), 2**64]]
)


@pytest.mark.parametrize("param,value", ROTARY_CASES, ids=lambda v: repr(v)[:40])
def test_apply_rotary_bad_value(param, value):
    x = np.zeros((2, 2, 3, 16), np.float32)
    cos, sin = _tables()
    kwargs = {"x": x, "cos": cos, "sin": sin, param: value}
    must_raise(param, lambda: apply_rotary(**kwargs))


def test_read_only_out_and_table_out_are_refused():
    cos, sin = _tables(4, 8)
    x = np.ones((1, 1, 4, 8), np.float32)
    ro = np.zeros_like(x)
    ro.flags.writeable = False
    must_raise("out", lambda: apply_rotary(x, cos, sin, out=ro))
    table_cos, _ = RotaryEmbedding(8, 64, 10000.0).cos_sin(4)
    must_raise("out", lambda: apply_rotary(table_cos[None, None], cos, sin, out=table_cos[None, None]))
    writable = np.ones((4, 8), np.float32)  # out overlapping writeable tables
    must_raise("out", lambda: apply_rotary(x[0, 0], writable, writable, out=writable))


# -------------------------------------------------------------------------------- aliasing, byte order
@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
@pytest.mark.parametrize("shift", [(1, 0), (0, 1), (-1, 0), (0, -1), (1, 1)])
def test_partial_overlap_is_computed_as_if_copied(backend, layout, shift):
    """``out`` shifted by one row or one channel against ``x`` in one buffer: the result is the rotation of
    the original ``x``, as if it had been copied first."""
    rng = np.random.default_rng(3)
    buf = rng.standard_normal((3, 6, 10)).astype(np.float32)
    x = buf[1:2, 1:5, 1:9][None]  # (1, 1, 4, 8) view
    dr, dc = shift
    out = buf[1:2, 1 + dr:5 + dr, 1 + dc:9 + dc][None]
    assert np.shares_memory(x, out)
    expected_x = x.copy()
    cos, sin = _tables(8, 8)
    pos = np.arange(4)[None]
    result = apply_rotary(x, cos, sin, layout=layout, out=out, backend=backend)
    assert result is out
    expected = apply_naive(expected_x, cos, sin, pos, layout, 8)
    np.testing.assert_allclose(out.astype(np.float64), expected, rtol=2**-23, atol=2**-23)


def _overlaps_by_brute_force(a):
    """Whether two elements of ``a`` share a byte, by listing every element's bytes."""
    starts = np.zeros(1, np.int64)
    for n, stride in zip(a.shape, a.strides, strict=True):
        starts = (starts[:, None] + stride * np.arange(n)).ravel()
    covered = (starts[:, None] + np.arange(a.itemsize)).ravel()
    return np.unique(covered).size < covered.size


@given(st.lists(st.tuples(st.integers(1, 4), st.integers(-3, 12)), min_size=1, max_size=4),
       st.sampled_from([2, 4, 8]), st.booleans())
@example([(2, 1), (3, 0)], 4, False)  # a broadcast axis
@example([(2, 3), (3, 2)], 4, False)  # interleaved, no overlap: counted as overlapping (conservative)
@example([(3, 1)], 4, True)  # 4-byte items 2 bytes apart
def test_overlap_check_never_misses_an_overlap(axes, itemsize, byte_strides):
    """``overlaps_itself`` is True for every strided view in which two elements share memory (a brute-force
    listing of their bytes decides), and False for every view made by slicing, transposing or reshaping a
    real array."""
    from ropeflow._xp import overlaps_itself

    shape = tuple(n for n, _ in axes)
    # strides in items, or in bytes (any count, e.g. 4-byte items 2 bytes apart)
    strides = tuple(step * (2 if byte_strides else itemsize) for _, step in axes)
    span = sum(abs(st) * (n - 1) for n, st in zip(shape, strides, strict=True)) + itemsize
    buf = np.zeros(2 * span + 64, np.uint8)
    dtype = {2: np.float16, 4: np.float32, 8: np.float64}[itemsize]
    base = buf[span:span + itemsize].view(dtype)  # room on both sides for negative strides
    view = np.lib.stride_tricks.as_strided(base, shape, strides, writeable=False)
    if _overlaps_by_brute_force(view):
        assert overlaps_itself(view)
    real = np.zeros(tuple(n + 2 for n in shape), dtype)
    sliced = real[tuple(slice(1, None, 2) if i % 2 else slice(None, None, -1) for i in range(len(shape)))]
    for honest in (real, sliced, sliced.T, real.reshape(-1)[::3]):
        assert not overlaps_itself(honest)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_out_whose_elements_overlap_is_refused(backend):
    """An ``out`` (or an in-place x) whose elements share memory (a writeable broadcast or ``as_strided``
    view) would keep only one of the results written to each shared element: refused by name, before
    anything is written. As an input only, such a view is fine."""
    cos, sin = _tables(8, 8)
    x = np.random.default_rng(5).standard_normal((1, 2, 3, 8)).astype(np.float32)
    buf = np.zeros(64, np.float32)
    shared_heads = np.lib.stride_tricks.as_strided(buf, (1, 2, 3, 8), (0, 0, 32, 4), writeable=True)
    partly = np.lib.stride_tricks.as_strided(buf, (1, 2, 3, 8), (0, 16, 32, 4), writeable=True)
    rope = RotaryEmbedding(8, 16, backend=backend)
    for out in (shared_heads, partly):
        with pytest.raises(ValueError, match=r"^out: its elements overlap in memory"):
            apply_rotary(x, cos, sin, out=out, backend=backend)
        with pytest.raises(ValueError, match=r"^out: its elements overlap in memory"):
            apply_rotary(out, cos, sin, out=out, backend=backend)
        with pytest.raises(ValueError, match=r"^out\[0\] \(q_out\): its elements overlap in memory"):
            rope.apply(out, out=(out, None))
        rope.apply(x, offset=0)  # the table exists: an in-place call would take the hot path, which declines
        with pytest.raises(ValueError, match=r"^out\[0\] \(q_out\): its elements overlap in memory"):
            rope.apply(out, out=(out, None))
    assert not buf.any()
    np.testing.assert_array_equal(apply_rotary(shared_heads, cos, sin, backend=backend),
                                  apply_rotary(np.ascontiguousarray(shared_heads), cos, sin, backend=backend))


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_outputs_over_the_positions_are_computed_as_if_the_positions_were_copied(backend):
    """Position ids or offsets that share memory with an output (a view of one buffer): the kernels read
    positions while they write, so the Numba one used to read rotated floats as table rows and crash. The
    positions are copied first; the results are those of the original positions, on every path (apply_rotary,
    the embedding's general path with separate outputs, and its hot path in place)."""
    n = 64
    rope = RotaryEmbedding(32, 128, backend=backend)
    cos, sin = rope.cos_sin(n)
    x = np.random.default_rng(6).standard_normal((1, 1, n, 32)).astype(np.float32)
    ids_now = np.arange(n)[::-1].copy()

    buf = np.zeros(n * 16, np.int64)  # ids in the first n int64 slots, out over all of it
    ids = buf[:n]
    ids[:] = ids_now
    out = buf.view(np.float32).reshape(1, 1, n, 32)
    want = apply_rotary(x, cos, sin, position_ids=ids_now, backend=backend)
    apply_rotary(x, cos, sin, position_ids=ids, out=out, backend=backend)
    np.testing.assert_array_equal(out, want)

    buf[:] = 0  # the embedding, separate outputs: k_out over the ids
    ids[:] = ids_now
    k_out = buf.view(np.float32).reshape(1, 1, n, 32)
    q_out = np.empty_like(x)
    want_q, want_k = rope.apply(x, x, ids_now[None])
    rope.apply(x, x, ids[None], out=(q_out, k_out))
    np.testing.assert_array_equal(q_out, want_q)
    np.testing.assert_array_equal(k_out, want_k)

    buf = np.zeros(n * 16, np.int64)  # hot path in place: the offsets inside q ((n, 1, 1, 32): one per row)
    q = buf.view(np.float32).reshape(n, 1, 1, 32)
    q[...] = x.reshape(n, 1, 1, 32)
    offsets = buf[:n]  # overwrites the start of q: what is there now is the input
    offsets[:] = 3
    want_q, _ = rope.apply(q.copy(), offset=np.full(n, 3))
    rope.apply(q, offset=offsets, out=(q, None))
    np.testing.assert_array_equal(q, want_q)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
def test_in_place_stays_exact(backend):
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 3, 5, 8)).astype(np.float32)
    cos, sin = _tables(8, 8)
    expected = apply_rotary(x, cos, sin, backend=backend)
    y = x.copy()
    assert apply_rotary(y, cos, sin, out=y, backend=backend) is y
    assert np.array_equal(y, expected)


@pytest.mark.parametrize("backend", ["numpy", "numba"])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_non_native_byte_order_is_computed_correctly(backend, dtype):
    rng = np.random.default_rng(5)
    x = rng.standard_normal((1, 2, 5, 8)).astype(dtype)
    swapped = x.astype(x.dtype.newbyteorder(">" if x.dtype.byteorder in "=<" else "<"))
    assert not swapped.dtype.isnative
    cos, sin = _tables(8, 8)
    expected = apply_rotary(x, cos, sin, backend=backend)
    got = apply_rotary(swapped, cos, sin, backend=backend)
    assert got.dtype.isnative and got.dtype == x.dtype
    assert np.array_equal(got, expected)
    got = apply_rotary(x, cos.astype(">f4"), sin.astype(">f4"), np.arange(5).astype(">i8"), backend=backend)
    assert np.array_equal(got, expected)
    rope = RotaryEmbedding(8, 64, 10000.0, backend=backend)
    c_native, _ = rope(x)
    c_swapped, _ = rope(swapped)
    assert c_swapped.dtype.isnative and np.array_equal(c_swapped, c_native)
    q_rot, _ = rope.apply(swapped)
    assert np.array_equal(q_rot, rope.apply(x)[0])


def test_big_endian_out_is_refused():
    x = np.ones((1, 1, 4, 8), np.float32)
    cos, sin = _tables(4, 8)
    must_raise("out", lambda: apply_rotary(x, cos, sin, out=np.zeros((1, 1, 4, 8), ">f4")))


def test_uint64_positions_above_2_63_are_named_exactly():
    x = np.ones((1, 1, 2, 8), np.float32)
    cos, sin = _tables(4, 8)
    with pytest.raises(ValueError, match=r"position_ids: .* 18446744073709551615"):
        apply_rotary(x, cos, sin, np.array([0, 2**64 - 1], np.uint64))


def test_inverse_string_is_not_true():
    x = np.ones((1, 1, 2, 8), np.float32)
    cos, sin = _tables(4, 8)
    with pytest.raises(TypeError, match=r"inverse: expected True or False, got 'False'"):
        apply_rotary(x, cos, sin, inverse="False")
    assert np.array_equal(apply_rotary(x, cos, sin, inverse=np.bool_(False)), apply_rotary(x, cos, sin))


def test_apply_checks_k_before_building_tables():
    rope = RotaryEmbedding(8, 16)
    q = np.zeros((1, 1, 3, 8), np.float32)
    with pytest.raises(ValueError, match=r"^k: head_dim 6"):
        rope.apply(q, np.zeros((1, 1, 3, 6), np.float32), offset=100)
    with pytest.raises(ValueError, match=r"^k: shape \(1, 1, 4, 8\)"):
        rope.apply(q, np.zeros((1, 1, 4, 8), np.float32), offset=100)
    with pytest.raises(TypeError, match=r"^k: dtype float64"):
        rope.apply(q, np.zeros((1, 1, 3, 8)), offset=100)
    with pytest.raises(ValueError, match=r"^layout"):
        rope.apply(q, q, offset=100, layout="gptj")
    assert rope.cache_info()["builds"] == 0 and rope.max_seq_len_cached is None


def test_messages_at_the_int64_limit_say_the_limit():
    """At the int64 limit the messages named a table of sys.maxsize rows (a stand-in) and a bound of 2**63 that
    the refused positions were below."""
    rope = RotaryEmbedding(8, 64, precision="exact")
    x = np.ones((1, 1, 3, 8), np.float32)
    with pytest.raises(ValueError, match=r"^position_ids: positions must be below 2\*\*63 - 1, got a largest "
                                         r"position of 9223372036854775807$"):
        rope.apply(x, None, np.array([2**63 - 1, 0, 1]))
    for offset in (2**63 - 3, np.array([2**63 - 3])):
        with pytest.raises(ValueError, match=r"^offset: .* must be below 2\*\*63 - 1, got offset=9223372036854775805 "
                                             r"\(largest position 9223372036854775807\)$"):
            rope.apply(x, offset=offset)
    # packed batches: offset + length reached 2**63 and wrapped ("negative dimensions are not allowed")
    with pytest.raises(ValueError, match=r"^offset: .* below 2\*\*63 - 1, got offset 9223372036854775807 for a "
                                         r"sequence of 1 tokens \(largest position 9223372036854775807\)$"):
        rope.apply(np.ones((1, 2, 8), np.float32), cu_seqlens=[0, 1], offset=2**63 - 1, seq_axis=-3)


def test_empty_list_position_ids_for_an_empty_sequence():
    """``position_ids=[]`` for seq 0 was refused as "dtype float64" (NumPy's dtype for an empty list)."""
    rope = RotaryEmbedding(8, 64)
    x = np.ones((1, 1, 0, 8), np.float32)
    assert rope.apply(x, None, [])[0].shape == x.shape
    assert apply_rotary(x, *_tables(), [[]]).shape == x.shape
    assert rope(x, position_ids=[])[0].shape == (0, 8)
    with pytest.raises(ValueError, match=r"^position_ids: shape \(0,\) does not match seq length 2"):
        rope.apply(np.ones((1, 1, 2, 8), np.float32), None, [])


def test_numpy_scalar_position_ids_are_judged_by_shape():
    """A NumPy integer scalar as position_ids was called "a numpy array with numpy inputs; use one library"."""
    rope = RotaryEmbedding(8, 64)
    x = np.ones((1, 1, 1, 8), np.float32)
    for call in (lambda: rope.apply(x, None, np.int64(3)), lambda: rope(x, position_ids=np.int64(3)),
                 lambda: apply_rotary(x, *_tables(), np.int64(3))):
        with pytest.raises(ValueError, match=r"^position_ids: expected shape \(seq,\) or \(batch, seq\), got \(\)"):
            call()


@pytest.mark.parametrize("offset", [5, -7, "junk", np.array([1]), np.int64(3)])
def test_offset_with_position_ids_is_refused_not_dropped(offset):
    """position_ids are the positions: an offset given with them was dropped without a word (apply_rotary(x,
    cos, sin, ids, offset=5) rotated as offset 0), on every path. The default 0 stays accepted."""
    rope = RotaryEmbedding(8, 64)
    x = np.random.default_rng(2).standard_normal((1, 2, 3, 8)).astype(np.float32)
    ids = np.arange(3)
    rope.apply(x)  # the table exists: the hot path and the plan would take these calls
    tables = rope.cos_sin(8)
    message = r"^offset: pass either position_ids or offset .*not both"
    with collector_paused():
        before = instance_state(rope), registry_state()
        for call in (lambda: rope.apply(x, x, ids, offset=offset), lambda: rope.plan(x, x)(x, x, ids, offset=offset),
                     lambda: apply_rotary(x, *tables, ids, offset=offset),
                     lambda: apply_rotary(x, *tables, ids, offset=offset, backend="numpy"),
                     lambda: RotaryEmbedding(8, 64, mrope_section=[1, 1, 2]).apply(x, None, np.zeros((3, 1, 3), int),
                                                                                  offset=offset)):
            with pytest.raises(ValueError, match=message):
                call()
        assert (instance_state(rope), registry_state()) == before
    for zero in (0, np.int64(0), np.array(0)):
        np.testing.assert_array_equal(rope.apply(x, None, ids, offset=zero)[0], rope.apply(x, None, ids)[0])


@pytest.mark.parametrize("scaling", [None, DYN])
def test_per_position_tables_too_large_leave_no_trace(scaling):
    """``rope(x, position_ids=...)`` gathers a row per id: an allocation that failed there (NumPy's unnamed
    MemoryError, or "array is too big") came after the table had grown and the dynamic policy's state was
    committed. The results are now allocated first: the error names position_ids and nothing changed.
    (Sizes past the address space: refused at once on any machine, whatever its memory overcommit.)"""
    rope = RotaryEmbedding(8, 64, scaling=scaling, dynamic_policy="hf")
    x = np.ones((1, 1, 10, 8), np.float32)
    rope(np.ones((1, 1, 100, 8), np.float32))
    rope(x)
    with collector_paused():
        before = instance_state(rope), registry_state()
        for ids in (np.broadcast_to(np.arange(5000), (2**46, 5000)),
                    np.broadcast_to(np.arange(5000), (3, 2**46, 5000))):
            with pytest.raises(MemoryError, match=r"^position_ids: per-position tables of shape \(70368744177664, "
                                                  r"5000, 8\) need two .* GiB arrays"):
                (RotaryEmbedding(8, 64, mrope_section=[1, 1, 2]) if ids.ndim == 3 else rope)(x, position_ids=ids)
            if ids.ndim == 2:
                assert (instance_state(rope), registry_state()) == before


# ----------------------------------------------------------------------------------------- memory
@pytest.mark.parametrize("policy", ["stateless", "reference", "hf"])
def test_dynamic_instance_holds_at_most_twice_the_longest(policy):
    rope = RotaryEmbedding(8, 64, 10000.0, scaling=DYN, dynamic_policy=policy)
    longest = 0
    for n in [10, 64, 65, 100, 80, 300, 150, 299, 40, 301, 64, 1000, 999, 998, 997, 20]:
        longest = max(longest, n)
        cos, _ = rope.cos_sin(n)
        assert cos.shape == (n, 8)
        held = sum(t.capacity for t in rope._tables.values())
        assert held <= 2 * longest, (n, held, longest)


def test_longrope_instance_holds_at_most_twice_the_longest():
    rope = RotaryEmbedding(8, 32, 10000.0, scaling=LONGROPE)
    longest = 0
    for n in [5, 16, 17, 40, 16, 100, 3, 101]:
        longest = max(longest, n)
        rope.cos_sin(n)
        assert sum(t.capacity for t in rope._tables.values()) <= 2 * longest


# ------------------------------------------------------------------------------ Hypothesis: anything
def _anything():
    return st.one_of(
        st.none(), st.booleans(), st.integers(-(2**70), 2**70), st.floats(allow_nan=True, allow_infinity=True),
        st.text(max_size=5), st.lists(st.integers(-3, 3), max_size=4), st.binary(max_size=3),
        st.sampled_from([np.int32(3), np.float32(2.5), np.bool_(True), np.uint64(2**64 - 1)]),
    )


@given(param=st.sampled_from(["dim", "max_position_embeddings", "base", "precision", "dynamic_policy", "backend",
                              "scaling"]), value=_anything())
def test_constructor_anything(param, value):
    kwargs = {"dim": 8, "max_position_embeddings": 64, "base": 10000.0, param: value}
    rope = raises_naming(param, lambda: RotaryEmbedding(**kwargs))
    if rope is not None:  # a valid value: the instance must work
        cos, sin = rope.cos_sin(3)
        assert np.allclose(np.asarray(cos, np.float64) ** 2 + np.asarray(sin, np.float64) ** 2,
                           rope.attention_scaling ** 2, atol=1e-6)


@given(param=st.sampled_from(["seq_len", "dtype"]), value=_anything())
@example(param="dtype", value=b",")  # NumPy's dtype parser raises SyntaxError on it (found by hypothesis)
@example(param="dtype", value="f8,f8")  # a structured dtype
def test_cos_sin_anything(param, value):
    rope = RotaryEmbedding(8, 16, 10000.0, scaling=DYN, dynamic_policy="reference")
    rope.cos_sin(20)
    kwargs = {"seq_len": 5, param: value}
    result = raises_naming(param, lambda: rope.cos_sin(**kwargs), rope)
    if result is not None:
        cos, _ = result
        assert cos.shape[1] == 8 and np.isfinite(np.asarray(cos, np.float64)).all()


@given(param=st.sampled_from(["position_ids", "offset", "layout", "seq_axis", "k"]), value=_anything())
def test_embedding_apply_anything(param, value):
    rope = RotaryEmbedding(8, 16, 10000.0, scaling=DYN, dynamic_policy="hf")
    kwargs = {"q": Q, "k": K, param: value}
    result = raises_naming(param, lambda: rope.apply(**kwargs), rope)
    if result is not None:
        q_rot, _ = result
        assert q_rot.shape == Q.shape and np.isfinite(q_rot).all()


@given(param=st.sampled_from(["position_ids", "offset", "rotary_dim", "inverse", "layout", "seq_axis", "backend",
                              "out"]), value=_anything())
def test_apply_rotary_anything(param, value):
    x = np.linspace(-1, 1, 2 * 2 * 3 * 8, dtype=np.float32).reshape(2, 2, 3, 8)
    cos, sin = _tables()
    kwargs = {"x": x, "cos": cos, "sin": sin, param: value}
    result = raises_naming(param, lambda: apply_rotary(**kwargs))
    if result is not None:  # a valid value: the rotation is correct
        pos = np.broadcast_to(np.arange(3)[None], (2, 3))
        if param == "offset":
            pos = pos + np.asarray(value).reshape(-1, 1)
        elif param == "position_ids" and value is not None:
            pos = np.broadcast_to(np.asarray(value), (2, 3))
        inverse = bool(value) if param == "inverse" else False
        layout = value if param == "layout" else "half"
        expected = apply_naive(x, cos, sin, pos, layout, 8, inverse)
        np.testing.assert_allclose(result.astype(np.float64), expected, atol=1e-6)


@given(head_dim=st.integers(-3, 300), factor=_anything())
def test_yarn_softmax_scale_anything(head_dim, factor):
    result = raises_naming(("head_dim", "factor"), lambda: ropeflow.yarn_softmax_scale(head_dim, factor))
    if result is not None:
        assert math.isfinite(result) and result > 0


def test_ndarray_subclasses_are_read_as_plain_arrays():
    """np.matrix (which stays 2-D under reshape) and memmap inputs rotate like their plain data."""
    cos, sin = _tables(8, 8)
    data = np.linspace(-1, 1, 32, dtype=np.float32).reshape(4, 8)
    want = apply_rotary(data, cos, sin)
    for x in (np.asmatrix(data), np.asmatrix(data).T.T):
        got = apply_rotary(x, cos, sin)
        assert type(got) is np.ndarray and np.array_equal(got, want)
    q_rot, _ = RotaryEmbedding(8, 64, 10000.0, backend="numpy").apply(np.asmatrix(data))
    assert np.array_equal(q_rot, want)
