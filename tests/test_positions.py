"""Positions beyond a contiguous range (issue 17): packed batches (cu_seqlens), M-RoPE, per-position tables.

References, independent of ropeflow's code paths: the math written out as loops (``tests/reference.py`` and
the loops below: positions per token, the M-RoPE axis of each frequency from the section rule, cos/sin of the
float32 angle by ``math``), and transformers' Qwen2-VL / Qwen2.5-VL / Qwen3-VL rotary modules and
``get_rope_index`` where installed (tests/test_positions_transformers.py).
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from conftest import HOST_BACKENDS
from hypothesis import given
from hypothesis import strategies as st
from reference import apply_naive
from test_bad_inputs import must_raise, raises_naming

import ropeflow
from ropeflow import RotaryEmbedding, apply_rotary, mrope_position_ids, positions_from_cu_seqlens


# ------------------------------------------------------------------------------------------ references
def naive_packed_positions(lengths, offsets):
    """Token by token: sequence i's tokens sit at offsets[i], offsets[i] + 1, ..."""
    out = []
    for n, o in zip(lengths, offsets, strict=True):
        for t in range(n):
            out.append(o + t)
    return np.array(out, np.int64)


def naive_axis(j, section, interleaved):
    """The position axis frequency j reads, from the section rule as the models describe it."""
    s0, s1, s2 = section
    if interleaved:  # Qwen3-VL: T H W T H W ..., H only within 3 * s1, W only within 3 * s2, T elsewhere
        if j % 3 == 1 and j < 3 * s1:
            return 1
        if j % 3 == 2 and j < 3 * s2:
            return 2
        return 0
    return 0 if j < s0 else (1 if j < s0 + s1 else 2)


def naive_mrope_tables(pos3, inv_freq, section, interleaved):
    """(B, S, dim) float64 tables: cos/sin of float32(pos) * inv_freq[j] (a float32 product), by math."""
    _, n_b, n_s = pos3.shape
    half = inv_freq.shape[0]
    cos = np.empty((n_b, n_s, 2 * half))
    sin = np.empty((n_b, n_s, 2 * half))
    for b in range(n_b):
        for s in range(n_s):
            for j in range(half):
                p = pos3[naive_axis(j, section, interleaved), b, s]
                angle = float(np.float32(p) * inv_freq[j])
                cos[b, s, j] = cos[b, s, j + half] = math.cos(angle)
                sin[b, s, j] = sin[b, s, j + half] = math.sin(angle)
    return cos, sin


def naive_mrope_apply(x, pos3, inv_freq, section, interleaved, layout="half"):
    """(B, H, S, D) rotated by the naive per-token tables (apply_naive over B * S table rows)."""
    cos, sin = naive_mrope_tables(pos3, inv_freq, section, interleaved)
    n_b, _, n_s, _ = x.shape
    rows = np.arange(n_b * n_s).reshape(n_b, n_s)
    return apply_naive(x, cos.reshape(n_b * n_s, -1), sin.reshape(n_b * n_s, -1), rows, layout, inv_freq.shape[0] * 2)


def rng_values(shape, seed=0, dtype=np.float32):
    return np.random.default_rng(seed).standard_normal(shape).astype(dtype)


# --------------------------------------------------------------------------------------------- packed
@given(lengths=st.lists(st.integers(0, 6), min_size=1, max_size=6), data=st.data())
def test_positions_from_cu_seqlens_matches_the_loop(lengths, data):
    offsets = data.draw(st.one_of(st.integers(0, 50), st.lists(st.integers(0, 1000), min_size=len(lengths),
                                                                max_size=len(lengths))))
    cu = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    per_seq = [offsets] * len(lengths) if isinstance(offsets, int) else offsets
    got = positions_from_cu_seqlens(cu, offset=offsets if isinstance(offsets, int) else np.array(offsets))
    assert got.dtype == np.int64 and isinstance(got, np.ndarray)
    np.testing.assert_array_equal(got, naive_packed_positions(lengths, per_seq))
    assert positions_from_cu_seqlens(cu.tolist(), offsets).tolist() == naive_packed_positions(lengths, per_seq).tolist()


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("layout", ["half", "interleaved", "deepseek"])
@pytest.mark.parametrize("form", ["thd", "td", "htd"])
def test_packed_apply_rotary_matches_per_sequence_reference(backend, layout, form):
    lengths, offsets = [3, 0, 5, 1, 4], np.array([0, 7, 2, 30, 11])
    cu = np.concatenate([[0], np.cumsum(lengths)])
    total, heads, dim = int(cu[-1]), 3, 24
    cos, sin = RotaryEmbedding(16, 64, 10000.0, backend="numpy").cos_sin(48)
    if form == "thd":
        x, seq_axis = rng_values((total, heads, dim), 1), -3
        x4 = x.transpose(1, 0, 2)[None]
    elif form == "td":
        x, seq_axis = rng_values((total, dim), 2), -2
        x4 = x[None, None]
    else:
        x, seq_axis = rng_values((heads, total, dim), 3), -2
        x4 = x[None]
    got = apply_rotary(x, cos, sin, cu_seqlens=cu, offset=offsets, layout=layout, seq_axis=seq_axis,
                       rotary_dim=16, backend=backend)
    assert got.shape == x.shape and got.dtype == x.dtype
    want = np.empty(x4.shape)
    for i, (n, o) in enumerate(zip(lengths, offsets, strict=True)):  # each sequence on its own
        seg = x4[:, :, cu[i]:cu[i + 1]]
        want[:, :, cu[i]:cu[i + 1]] = apply_naive(seg, cos, sin, (o + np.arange(n))[None], layout, 16)
    got4 = got.transpose(1, 0, 2)[None] if form == "thd" else (got[None, None] if form == "td" else got[None])
    np.testing.assert_allclose(got4.astype(np.float64), want, atol=2e-6, rtol=0)


@pytest.mark.parametrize("backend", HOST_BACKENDS)
def test_embedding_apply_packed_equals_one_call_per_sequence(backend):
    rope = RotaryEmbedding(32, 4096, 10000.0, backend=backend)
    lengths = [5, 1, 9, 0, 3]
    cu = np.cumsum([0] + lengths)
    offsets = np.array([100, 0, 17, 4, 2000])
    q = rng_values((int(cu[-1]), 4, 32), 4)
    k = rng_values((int(cu[-1]), 2, 40), 5)  # GQA, and channels past dim pass through
    q_rot, k_rot = rope.apply(q, k, cu_seqlens=cu, offset=offsets, seq_axis=-3)
    for i in range(len(lengths)):
        if lengths[i] == 0:
            continue
        sl = slice(cu[i], cu[i + 1])
        q_i, k_i = rope.apply(q[sl], k[sl], offset=int(offsets[i]), seq_axis=-3)
        np.testing.assert_array_equal(q_rot[sl], q_i)
        np.testing.assert_array_equal(k_rot[sl], k_i)
    # the same as explicit position ids of one (1, total) row
    pos = positions_from_cu_seqlens(cu, offsets)
    q_pos, _ = rope.apply(q[None], None, pos[None], seq_axis=-3)
    np.testing.assert_array_equal(q_rot, q_pos[0])


def test_packed_dynamic_ntk_uses_the_longest_position():
    """Dynamic NTK serves the table of the largest position over all packed sequences (offset + length)."""
    rope = RotaryEmbedding(16, 32, 10000.0, scaling={"rope_type": "dynamic", "factor": 2.0})
    q = rng_values((12, 2, 16), 6)
    cu, offsets = [0, 4, 12], [60, 0]
    q_rot, _ = rope.apply(q, cu_seqlens=cu, offset=offsets, seq_axis=-3)
    cos, sin = RotaryEmbedding(16, 32, 10000.0, scaling={"rope_type": "dynamic", "factor": 2.0}).cos_sin(64)
    want = apply_naive(q.transpose(1, 0, 2)[None], cos, sin, positions_from_cu_seqlens(cu, offsets)[None], "half", 16)
    np.testing.assert_allclose(q_rot.transpose(1, 0, 2)[None], want, atol=2e-6)


# --------------------------------------------------------------------------------------------- M-RoPE
SECTIONS = [([2, 3, 3], False), ([4, 2, 2], True), ([3, 3, 2], True), ([0, 4, 4], False), ([8, 0, 0], True)]
#: sections whose axes differ in every rule (s1 != s2, 3 * s2 < dim // 2), and the real Qwen ones
WIDE_SECTIONS = [([6, 4, 2], True), ([2, 4, 6], True), ([5, 4, 3], False), ([16, 24, 24], False),
                 ([24, 20, 20], True), ([11, 11, 10], True)]


@pytest.mark.parametrize("section,interleaved", SECTIONS + WIDE_SECTIONS)
def test_mrope_tables_match_the_math(section, interleaved):
    dim = 2 * sum(section)
    rope = RotaryEmbedding(dim, 4096, 10000.0, mrope_section=section, mrope_interleaved=interleaved)
    pos3 = np.random.default_rng(7).integers(0, 3000, (3, 2, 6))
    cos, sin = rope(np.zeros((2, 6, 64), np.float32), position_ids=pos3)
    assert cos.shape == (2, 6, dim) and cos.dtype == np.float32
    want_cos, want_sin = naive_mrope_tables(pos3, rope.inv_freq, section, interleaved)
    np.testing.assert_allclose(cos, want_cos, atol=2**-23, rtol=0)
    np.testing.assert_allclose(sin, want_sin, atol=2**-23, rtol=0)
    assert rope.mrope_section == tuple(section) and rope.mrope_interleaved is interleaved
    np.testing.assert_array_equal(ropeflow.mrope_axes(section, dim, interleaved),
                                  [naive_axis(j, section, interleaved) for j in range(dim // 2)])


@pytest.mark.parametrize("backend", HOST_BACKENDS)
@pytest.mark.parametrize("section,interleaved", [([2, 3, 3], False), ([4, 2, 2], True), ([4, 3, 1], True)])
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
def test_mrope_apply_matches_the_math(backend, section, interleaved, dtype):
    rope = RotaryEmbedding(16, 4096, 10000.0, backend=backend, mrope_section=section, mrope_interleaved=interleaved,
                           precision="exact" if dtype == "float64" else "reference")
    rng = np.random.default_rng(8)
    pos3 = rng.integers(0, 500, (3, 2, 5))
    q, k = rng_values((2, 4, 5, 20), 9, dtype), rng_values((2, 2, 5, 16), 10, dtype)
    q_rot, k_rot = rope.apply(q, k, position_ids=pos3)
    assert q_rot.dtype == q.dtype and q_rot.shape == q.shape and k_rot.shape == k.shape
    eps = float(np.finfo(dtype).eps)
    for got, x in ((q_rot, q), (k_rot, k)):
        want = naive_mrope_apply(x, pos3, rope.inv_freq.astype(np.float32), section, interleaved)
        if dtype == "float64":  # exact precision: float64 angles, not the float32 product of the naive loop
            want = apply_naive(x, *[t.reshape(10, 16) for t in rope(x, position_ids=pos3)],
                               np.arange(10).reshape(2, 5), "half", 16)
        np.testing.assert_allclose(got.astype(np.float64), want, atol=4 * eps * 4 + 4e-7, rtol=2 * eps)


@pytest.mark.parametrize("layout", ["interleaved", "deepseek"])
def test_mrope_apply_other_layouts(layout):
    rope = RotaryEmbedding(12, 256, 500.0, mrope_section=[2, 2, 2], layout=layout)
    pos3 = np.random.default_rng(11).integers(0, 200, (3, 1, 7))
    q = rng_values((1, 3, 7, 12), 12)
    q_rot, _ = rope.apply(q, position_ids=pos3)
    want = naive_mrope_apply(q, pos3, rope.inv_freq, [2, 2, 2], False, layout)
    np.testing.assert_allclose(q_rot.astype(np.float64), want, atol=2e-6)


@pytest.mark.parametrize("interleaved", [False, True])
def test_text_positions_on_mrope_are_plain_rope(interleaved):
    """2-D ids on an M-RoPE embedding are text: the same as (3, B, S) ids with equal axes, and as plain RoPE."""
    section = [4, 2, 2] if interleaved else [2, 3, 3]
    mrope = RotaryEmbedding(16, 4096, 10000.0, mrope_section=section, mrope_interleaved=interleaved)
    plain = RotaryEmbedding(16, 4096, 10000.0)
    pos = np.random.default_rng(13).integers(0, 1000, (2, 6))
    pos3 = np.broadcast_to(pos, (3, 2, 6))
    q, k = rng_values((2, 3, 6, 16), 14), rng_values((2, 1, 6, 16), 15)
    text = mrope.apply(q, k, position_ids=pos)
    three = mrope.apply(q, k, position_ids=pos3)
    base = plain.apply(q, k, position_ids=pos)
    for a, b, c in zip(text, three, base, strict=True):
        np.testing.assert_array_equal(a, b)
        np.testing.assert_array_equal(a, c)
    x = np.zeros((2, 6, 8), np.float16)
    for got, want in zip(mrope(x, position_ids=pos3), plain(x, position_ids=pos), strict=True):
        assert got.dtype == np.float16
        np.testing.assert_array_equal(got, want)


# ------------------------------------------------------------------------------- per-position tables
@pytest.mark.parametrize("dtype", ["float16", "bfloat16", "float32", "float64"])
@pytest.mark.parametrize("shape", [(7,), (3, 5), (0,)])
def test_per_position_tables_gather_the_cache(dtype, shape):
    ml_dtypes = pytest.importorskip("ml_dtypes")
    np_dtype = np.dtype(ml_dtypes.bfloat16) if dtype == "bfloat16" else np.dtype(dtype)
    rope = RotaryEmbedding(8, 64, 10000.0, precision="exact" if dtype == "float64" else "reference")
    ids = np.random.default_rng(16).integers(0, 200, shape)
    x = np.zeros((1, 4, 8), np_dtype)
    cos, sin = rope(x, position_ids=ids)
    assert cos.shape == shape + (8,) and cos.dtype == np_dtype and sin.dtype == np_dtype
    full_cos, full_sin = rope(x, seq_len=200)
    np.testing.assert_array_equal(cos.view(np.uint8), full_cos[ids].view(np.uint8))
    np.testing.assert_array_equal(sin.view(np.uint8), full_sin[ids].view(np.uint8))
    assert cos.flags.writeable  # a new array, not a view of the shared cache


def test_per_position_tables_dynamic_follow_the_longest_position():
    """transformers' dynamic RoPE serves max(position_ids) + 1 positions; so does the stateless policy."""
    dyn = {"rope_type": "dynamic", "factor": 4.0}
    rope = RotaryEmbedding(8, 16, 10000.0, scaling=dyn)
    ids = np.array([[0, 5, 40], [3, 2, 1]])
    cos, _ = rope(np.zeros(3, np.float32), position_ids=ids)
    full, _ = RotaryEmbedding(8, 16, 10000.0, scaling=dyn).cos_sin(41)
    np.testing.assert_array_equal(cos, full[ids])


def test_per_position_tables_torch_and_jax():
    torch = pytest.importorskip("torch")
    rope = RotaryEmbedding(16, 256, 10000.0, mrope_section=[2, 3, 3])
    pos3 = torch.randint(0, 100, (3, 2, 4))
    for dtype in (torch.float32, torch.bfloat16):
        cos, sin = rope(torch.zeros(2, 4, 16, dtype=dtype), position_ids=pos3)
        assert isinstance(cos, torch.Tensor) and cos.dtype == dtype and tuple(cos.shape) == (2, 4, 16)
        want, _ = rope(np.zeros(1, np.float32), position_ids=pos3.numpy())
        np.testing.assert_array_equal(cos.float().numpy(), torch.from_numpy(want).to(dtype).float().numpy())
    hidden = torch.zeros(2, 4, 48, requires_grad=True)  # transformers passes hidden states: only dtype/device used
    cos, _ = rope(hidden, position_ids=pos3)
    assert not cos.requires_grad and tuple(cos.shape) == (2, 4, 16)
    q, k = torch.randn(2, 3, 4, 16), torch.randn(2, 1, 4, 16)
    q_rot, k_rot = rope.apply(q, k, position_ids=pos3)
    assert isinstance(q_rot, torch.Tensor) and q_rot.dtype == torch.float32
    np.testing.assert_array_equal(q_rot.numpy(), rope.apply(q.numpy(), k.numpy(), position_ids=pos3.numpy())[0])
    # packed, torch in and out
    cu = torch.tensor([0, 3, 4], dtype=torch.int32)
    pos = positions_from_cu_seqlens(cu, offset=torch.tensor([5, 0]))
    assert isinstance(pos, torch.Tensor) and pos.tolist() == [5, 6, 7, 0]
    qp, _ = rope.apply(torch.randn(4, 2, 16), cu_seqlens=cu, offset=torch.tensor([5, 0]), seq_axis=-3)
    assert isinstance(qp, torch.Tensor) and tuple(qp.shape) == (4, 2, 16)
    jnp = pytest.importorskip("jax.numpy")
    cos, _ = rope(jnp.zeros((2, 16), jnp.float32), position_ids=np.array([1, 2, 3]))
    assert type(cos).__module__.startswith("jax") and cos.shape == (3, 16)


# ------------------------------------------------------------------------------- multimodal position ids
def naive_rope_index(segments, merge, advance="spatial"):
    """Token by token: ("text", n) or ("vision", t, h, w, time_interval); see ropeflow.multimodal's docstring."""
    out, cur = [], 0
    for seg in segments:
        if seg[0] == "text":
            for _ in range(seg[1]):
                out.append((cur, cur, cur))
                cur += 1
            continue
        _, t, h, w, interval = seg
        top = cur
        for ti in range(t):
            tp = ti if interval is None else int(np.float32(ti) * np.float32(interval))
            for y in range(h // merge):
                for x in range(w // merge):
                    out.append((cur + tp, cur + y, cur + x))
                    top = max(top, cur + tp, cur + y, cur + x)
        cur = cur + max(h, w) // merge if advance == "spatial" else top + 1
    return np.array(out, np.int64).T


def _layout(segments, merge):
    types, images, videos = [], [], []
    for seg in segments:
        if seg[0] == "text":
            types += [0] * seg[1]
        else:
            _, t, h, w, kind = seg
            types += [kind] * (t * (h // merge) * (w // merge))
            (images if kind == 1 else videos).append([t, h, w])
    return np.array(types), images or None, videos or None


@pytest.mark.parametrize("advance", ["spatial", "max"])
def test_mrope_position_ids_match_the_loop(advance):
    segments = [("text", 3), ("vision", 1, 4, 6, 1), ("text", 2), ("vision", 5, 2, 4, 2), ("vision", 1, 2, 2, 1),
                ("text", 1), ("vision", 3, 4, 4, 2), ("text", 4)]
    types, images, videos = _layout([(s[0], *s[1:4], s[4]) if s[0] != "text" else s for s in segments], 2)
    ids, deltas = mrope_position_ids(types, images, videos, spatial_merge_size=2, advance=advance)
    want = naive_rope_index([s if s[0] == "text" else (*s[:4], None) for s in segments], 2, advance)
    assert ids.shape == (3, 1, types.shape[0]) and ids.dtype == np.int64
    np.testing.assert_array_equal(ids[:, 0], want)
    assert deltas.tolist() == [int(want.max()) + 1 - types.shape[0]]
    # Qwen2.5-VL timing: videos step by tokens_per_second * second_per_grid_t (float32); images by 1
    ids, _ = mrope_position_ids(types, images, videos, tokens_per_second=2, second_per_grid_ts=[0.5, 1.5],
                                advance=advance)
    timed = [("text", 3), ("vision", 1, 4, 6, None), ("text", 2), ("vision", 5, 2, 4, np.float32(2) * np.float32(0.5)),
             ("vision", 1, 2, 2, None), ("text", 1), ("vision", 3, 4, 4, np.float32(2) * np.float32(1.5)),
             ("text", 4)]
    np.testing.assert_array_equal(ids[:, 0], naive_rope_index(timed, 2, advance))


def test_mrope_position_ids_padding_and_text_only():
    types = np.array([[0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
    ids, deltas = mrope_position_ids(types, [[1, 4, 4]], attention_mask=mask)
    np.testing.assert_array_equal(ids[:, 1, :2], 0)
    np.testing.assert_array_equal(ids[:, 1, 2:], np.broadcast_to(np.arange(5), (3, 5)))
    assert deltas.tolist() == [-2, 0]


def test_mrope_position_ids_float_and_bool_masks_and_empty_lists():
    """A float or bool attention_mask means what transformers' ``attention_mask.bool()`` means (a float one was
    refused); empty lists are no tokens and no grids (``[]`` was called a float64 array)."""
    types = np.array([[0, 0, 1, 1, 1, 1, 0], [0, 0, 0, 0, 0, 0, 0]])
    mask = np.array([[1, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 1]])
    want = mrope_position_ids(types, [[1, 4, 4]], attention_mask=mask)
    for same in (mask.astype(np.float32), mask.astype(bool), mask.tolist(), mask * 3):
        for got, expected in zip(mrope_position_ids(types, [[1, 4, 4]], attention_mask=same), want, strict=True):
            np.testing.assert_array_equal(got, expected)
    ids, deltas = mrope_position_ids([])
    assert ids.shape == (3, 1, 0) and ids.dtype == np.int64 and deltas.tolist() == [0]
    ids, deltas = mrope_position_ids([0, 0, 0], image_grid_thw=[], video_grid_thw=np.zeros((0, 3), np.int64))
    np.testing.assert_array_equal(ids[:, 0], np.broadcast_to(np.arange(3), (3, 3)))


MM_CASES = [
    # grids far larger than their run: NumPy's MemoryError ("Unable to allocate 8.00 TiB") before the check
    ("image_grid_thw", dict(token_types=[0, 1, 1, 1, 1], image_grid_thw=[[2**40, 2**40, 2**40]])),
    ("image_grid_thw", dict(token_types=[0, 1, 1, 1, 1], image_grid_thw=[[2**62, 2, 2]])),
    ("spatial_merge_size", dict(token_types=[0], spatial_merge_size=2**70)),  # was an OverflowError
    ("image_grid_thw", dict(token_types=[0, 0], image_grid_thw=np.zeros((2, 0), np.int64))),  # not (n, 3)
    # unsigned values past int64 were shown (and checked) wrapped to negative ones
    ("token_types", dict(token_types=np.array([0, 2**63], np.uint64))),
    ("image_grid_thw", dict(token_types=[0, 1, 1, 1, 1], image_grid_thw=np.array([[1, 2**64 - 1, 2]], np.uint64))),
    ("attention_mask", dict(token_types=[0, 0], attention_mask=[1.0, float("nan")])),
    ("attention_mask", dict(token_types=[0, 0], attention_mask=["1", "0"])),
    ("token_types", dict(token_types=[0, 3, 1])),
    ("token_types", dict(token_types=[[0.0, 1.0]])),
    ("image_grid_thw", dict(token_types=[0, 1, 1, 1, 1], image_grid_thw=None)),
    ("image_grid_thw", dict(token_types=[0, 1, 1, 1], image_grid_thw=[[1, 4, 4]])),
    ("image_grid_thw", dict(token_types=[0, 1, 1, 1, 1], image_grid_thw=[[1, 4, 4], [1, 2, 2]])),
    ("image_grid_thw", dict(token_types=[0, 1, 1, 1, 1], image_grid_thw=[[1, 3, 4]])),
    ("image_grid_thw", dict(token_types=[0, 1], image_grid_thw=[[1, 2]])),
    ("spatial_merge_size", dict(token_types=[0], spatial_merge_size=0)),
    ("advance", dict(token_types=[0], advance="min")),
    ("attention_mask", dict(token_types=[0, 0], attention_mask=[1, 1, 1])),
    ("second_per_grid_ts", dict(token_types=[0, 2, 2, 2, 2], video_grid_thw=[[1, 4, 4]], tokens_per_second=2,
                                second_per_grid_ts=[1.0, 2.0])),
    ("second_per_grid_ts", dict(token_types=[0], second_per_grid_ts=[1.0])),
    # video timing that is not a finite non-negative number gave wrapped int64 ids (a NumPy warning at most)
    ("second_per_grid_ts", dict(token_types=[0, 2, 2, 2, 2], video_grid_thw=[[4, 2, 2]], tokens_per_second=2,
                                second_per_grid_ts=[float("nan")])),
    ("second_per_grid_ts", dict(token_types=[0, 2, 2, 2, 2], video_grid_thw=[[4, 2, 2]], tokens_per_second=2,
                                second_per_grid_ts=[-1.0])),
    ("second_per_grid_ts", dict(token_types=[0, 2, 2, 2, 2], video_grid_thw=[[4, 2, 2]], tokens_per_second=2,
                                second_per_grid_ts="1")),
    ("second_per_grid_ts", dict(token_types=[0, 2, 2, 2, 2], video_grid_thw=[[4, 2, 2]], tokens_per_second=2,
                                second_per_grid_ts=[1e30])),
    ("tokens_per_second", dict(token_types=[0, 2, 2, 2, 2], video_grid_thw=[[4, 2, 2]],
                               tokens_per_second=float("nan"))),
    ("tokens_per_second", dict(token_types=[0, 2, 2, 2, 2], video_grid_thw=[[4, 2, 2]], tokens_per_second=-2)),
    # a complex number was taken with only NumPy's ComplexWarning
    ("tokens_per_second", dict(token_types=[0, 2, 2, 2, 2], video_grid_thw=[[4, 2, 2]],
                               tokens_per_second=np.complex64(2))),
]


@pytest.mark.parametrize("param,kwargs", MM_CASES, ids=lambda v: repr(v)[:50])
def test_mrope_position_ids_bad_input(param, kwargs):
    must_raise(param, lambda: mrope_position_ids(**kwargs))


def test_three_axis_ids_as_nested_lists_and_other_3d_shapes():
    """(3, batch, seq) ids as nested lists work in apply as in rope(x, position_ids=...) (apply took the
    one-axis path and refused them); a 3-D shape that is not (3, batch, seq) is not called M-RoPE's."""
    q = np.random.default_rng(8).standard_normal((2, 1, 3, 16)).astype(np.float32)
    ids = [[[0, 1, 2], [5, 6, 7]], [[0, 1, 1], [5, 5, 6]], [[0, 2, 1], [5, 7, 6]]]
    rope = RotaryEmbedding(16, 64, 10000.0, mrope_section=[2, 3, 3])
    got, _ = rope.apply(q, None, ids)
    want, _ = rope.apply(q, None, np.array(ids))
    np.testing.assert_array_equal(got, want)
    plain = RotaryEmbedding(16, 64, 10000.0)
    for bad in (ids, np.array(ids)):
        with pytest.raises(ValueError, match=r"^position_ids: shape \(3, 2, 3\) \(3, batch, seq\) is M-RoPE's"):
            plain.apply(q, None, bad)
    for rope_ in (plain, rope):  # ragged lists: still the named error of the one-axis path
        with pytest.raises(TypeError, match=r"^position_ids: expected an integer array"):
            rope_.apply(q, None, [[0, 1, 2], [3]])
    for call in (lambda: plain.apply(q, None, np.zeros((2, 2, 3), np.int64)),
                 lambda: plain(q, position_ids=np.zeros((2, 2, 3), np.int64))):
        with pytest.raises(ValueError, match=r"^position_ids: expected shape \(seq,\) or \(batch, seq\), got "
                                             r"\(2, 2, 3\)$"):
            call()


# ------------------------------------------------------------------------------------------ bad input
def _mrope_instances():
    return [RotaryEmbedding(16, 64, 10000.0, mrope_section=[2, 3, 3]),
            RotaryEmbedding(16, 16, 10000.0, mrope_section=[4, 2, 2], mrope_interleaved=True,
                            scaling={"rope_type": "dynamic", "factor": 2.0}, dynamic_policy="hf")]


CONSTRUCTOR_CASES = (
    [("mrope_section", v) for v in [[2, 3], [2, 3, 3, 0], [2, 3, 4], [3, 3, 3], [-1, 5, 4], [2.0, 3, 3], "233",
                                    [True, 3, 4], 8, np.zeros((3, 1), np.int64), {"t": 2}]]
    + [("mrope_interleaved", v) for v in ["True", 1, None]]
)


@pytest.mark.parametrize("param,value", CONSTRUCTOR_CASES, ids=lambda v: repr(v)[:40])
def test_constructor_bad_mrope(param, value):
    kwargs = {"mrope_section": [2, 3, 3], param: value}
    must_raise(param, lambda: RotaryEmbedding(16, 64, 10000.0, **kwargs))


def test_interleaved_without_section_is_refused():
    must_raise("mrope_interleaved", lambda: RotaryEmbedding(16, 64, 10000.0, mrope_interleaved=True))


Q = rng_values((2, 3, 4, 16), 20)
K = rng_values((2, 1, 4, 16), 21)
MROPE_APPLY_CASES = [
    ("position_ids", np.zeros((3, 2, 5), np.int64)), ("position_ids", np.zeros((3, 1, 4), np.int64)),
    ("position_ids", np.zeros((2, 2, 4), np.int64)), ("position_ids", np.full((3, 2, 4), -1)),
    ("position_ids", np.zeros((3, 2, 4))), ("position_ids", np.full((3, 2, 4), 2**24)),
    ("position_ids", np.zeros((4, 2, 4), np.int64)), ("position_ids", np.zeros((3, 2, 4, 1), np.int64)),
]


@pytest.mark.parametrize("param,value", MROPE_APPLY_CASES, ids=lambda v: repr(v)[:40])
def test_mrope_apply_bad_ids(param, value):
    for rope in _mrope_instances():
        rope.cos_sin(20)
        must_raise(param, lambda rope=rope: rope.apply(Q, K, position_ids=value), rope)


# the tables call has no (batch, seq) to match: only the ids themselves can be wrong
CALL_CASES = [v for _, v in MROPE_APPLY_CASES if v.shape[0] != 3 or v.ndim != 3 or v.dtype.kind == "f"
              or v.min() < 0 or v.max() >= 2**24]


@pytest.mark.parametrize("value", CALL_CASES, ids=lambda v: repr(v)[:40])
def test_mrope_tables_bad_ids(value):
    for rope in _mrope_instances():
        rope.cos_sin(20)
        must_raise("position_ids", lambda rope=rope: rope(Q, position_ids=value), rope)


def test_three_axis_ids_need_mrope():
    rope = RotaryEmbedding(16, 64, 10000.0)
    must_raise("position_ids", lambda: rope.apply(Q, K, position_ids=np.zeros((3, 2, 4), np.int64)), rope)
    must_raise("position_ids", lambda: rope(Q, position_ids=np.zeros((3, 2, 4), np.int64)), rope)
    must_raise("seq_len", lambda: rope(Q, 4, position_ids=np.zeros(4, np.int64)), rope)


QP = rng_values((10, 2, 16), 22)
PACKED_CASES = (
    [("cu_seqlens", v) for v in [[0, 3, 2, 10], [0, 3, 9], [0, 3, 11], [1, 3, 10], [], [[0, 10]], [0.0, 10.0],
                                 np.array([0, 5, 10], np.float32), "0,10", [0, 5, 2**64 - 1], [True, 10]]]
    + [("offset", v) for v in [np.array([1, 2, 3]), np.array([[1, 2]]), np.array([-1, 0]), -3, 1.5, "2",
                               np.array([2**63 - 2, 0]), np.array([0.0, 1.0])]]
    + [("position_ids", np.arange(10))]
)


@pytest.mark.parametrize("param,value", PACKED_CASES, ids=lambda v: repr(v)[:40])
def test_packed_bad_input(param, value):
    kwargs = {"cu_seqlens": [0, 4, 10], "offset": 0, param: value}
    for rope in _mrope_instances()[1:] + [RotaryEmbedding(16, 64, 10000.0, precision="exact")]:
        rope.cos_sin(20)
        must_raise(param, lambda rope=rope: rope.apply(QP, QP, seq_axis=-3, **kwargs), rope)
    cos, sin = RotaryEmbedding(16, 64, 10000.0).cos_sin(64)
    must_raise(param, lambda: apply_rotary(QP, cos, sin, seq_axis=-3, **kwargs))
    if param != "position_ids" and repr(value) not in ("[0, 3, 9]", "[0, 3, 11]"):  # the helper has no token count
        must_raise(param, lambda: positions_from_cu_seqlens(kwargs["cu_seqlens"], kwargs["offset"]))


def test_packed_needs_one_row_and_tables_long_enough():
    cos, sin = RotaryEmbedding(16, 64, 10000.0).cos_sin(8)
    must_raise("cu_seqlens", lambda: apply_rotary(np.zeros((2, 3, 10, 16), np.float32), cos, sin, cu_seqlens=[0, 10]))
    must_raise("cu_seqlens", lambda: apply_rotary(QP, cos, sin, cu_seqlens=[0, 10]))  # seq_axis=-2: 2 tokens
    must_raise("offset", lambda: apply_rotary(QP, cos, sin, cu_seqlens=[0, 4, 10], offset=[0, 3], seq_axis=-3))


@given(cu=st.lists(st.integers(-3, 12), max_size=5), offset=st.one_of(
    st.integers(-3, 2**64), st.lists(st.integers(-2, 2**63), max_size=4), st.none(), st.floats(), st.text(max_size=2)))
def test_packed_anything(cu, offset):
    rope = RotaryEmbedding(16, 16, 10000.0, scaling={"rope_type": "dynamic", "factor": 2.0}, precision="exact")
    result = raises_naming(("cu_seqlens", "offset"),
                           lambda: rope.apply(QP, cu_seqlens=cu, offset=offset, seq_axis=-3), rope)
    if result is not None:
        lengths = np.diff(cu)
        per_seq = [offset] * len(lengths) if isinstance(offset, int) else offset
        pos = naive_packed_positions(lengths.tolist(), per_seq)
        want = rope.apply(QP[None], None, pos[None], seq_axis=-3)[0][0]
        np.testing.assert_array_equal(result[0], want)


# ---------------------------------------------------------------------------------------------- config
QWEN2_VL_TOP = {"model_type": "qwen2_vl", "hidden_size": 1536, "num_attention_heads": 12,
                "max_position_embeddings": 32768, "rope_theta": 1000000.0,
                "rope_scaling": {"type": "mrope", "mrope_section": [16, 24, 24]}}  # Qwen2-VL-2B's config.json
QWEN3_VL_NESTED = {"model_type": "qwen3_vl", "text_config": {
    "model_type": "qwen3_vl_text", "head_dim": 128, "hidden_size": 2560, "num_attention_heads": 32,
    "max_position_embeddings": 262144, "rope_theta": 5000000,
    "rope_scaling": {"mrope_interleaved": True, "mrope_section": [24, 20, 20], "rope_type": "default"}}}
QWEN2_5_VL_PARAMS = {"model_type": "qwen2_5_vl", "text_config": {
    "model_type": "qwen2_5_vl_text", "hidden_size": 3584, "num_attention_heads": 28, "max_position_embeddings": 128000,
    "rope_parameters": {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1000000.0}}}


@pytest.mark.parametrize("config,section,interleaved,dim", [
    (QWEN2_VL_TOP, (16, 24, 24), False, 128), (QWEN3_VL_NESTED, (24, 20, 20), True, 128),
    (QWEN2_5_VL_PARAMS, (16, 24, 24), False, 128),
    ({"model_type": "qwen2_vl", "hidden_size": 1536, "num_attention_heads": 12}, (16, 24, 24), False, 128),
    ({"model_type": "qwen3_vl", "text_config": {"head_dim": 128}}, (24, 20, 20), True, 128),
    ({"model_type": "qwen3_5", "text_config": {}}, (11, 11, 10), True, 64),
    ({"model_type": "qwen2", "hidden_size": 1536, "num_attention_heads": 12}, None, False, 128),
])
def test_from_hf_config_reads_mrope(config, section, interleaved, dim):
    rope = RotaryEmbedding.from_hf_config(config)
    assert rope.mrope_section == section and rope.mrope_interleaved is interleaved and rope.dim == dim
    assert rope.scaling is None
    if section is not None:
        assert f"mrope_section={list(section)!r}" in repr(rope)


def test_from_hf_config_mrope_with_yarn_keeps_both():
    cfg = {**QWEN2_VL_TOP, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings":
                                            32768, "mrope_section": [16, 24, 24]}}
    rope = RotaryEmbedding.from_hf_config(cfg)
    assert rope.mrope_section == (16, 24, 24) and rope.scaling.rope_type == "yarn"
    pos3 = np.random.default_rng(30).integers(0, 100000, (3, 1, 4))
    cos, _ = rope(np.zeros(1, np.float32), position_ids=pos3)
    full, _ = rope.cos_sin(100000)
    axes = ropeflow.mrope_axes([16, 24, 24], 128)
    want = full[pos3[axes, 0, :].T, np.arange(64)]  # (seq, 64): frequency j from axis(j)
    np.testing.assert_array_equal(cos[0, :, :64], want)
    np.testing.assert_array_equal(cos[0, :, 64:], want)


@pytest.mark.parametrize("section", [[16, 24], [16, 24, 25], "16,24,24", [16.0, 24, 24]])
def test_from_hf_config_bad_mrope_section_is_named(section):
    cfg = {**QWEN2_VL_TOP, "rope_scaling": {"type": "mrope", "mrope_section": section}}
    with pytest.raises((TypeError, ValueError), match=r"^config: mrope_section"):
        RotaryEmbedding.from_hf_config(cfg)


def test_zero_dimensional_offset_is_one_offset_for_every_row():
    """A 0-d integer array offset (``torch.tensor(5)``, ``np.int64`` arrays from reductions) means what the int
    means, in apply, in packed batches and in positions_from_cu_seqlens (it was refused by shape)."""
    rng = np.random.default_rng(11)
    rope = RotaryEmbedding(16, 64, 10000.0)
    q = rng.standard_normal((2, 3, 4, 16)).astype(np.float32)
    k = rng.standard_normal((2, 1, 4, 16)).astype(np.float32)
    offsets = [np.array(5), np.array(5, np.uint8), np.int64(5)]
    try:
        import torch
    except ImportError:  # the NumPy cases still run
        pass
    else:
        offsets.append(torch.tensor(5))
    for offset in offsets:
        for got, want in zip(rope.apply(q, k, offset=offset), rope.apply(q, k, offset=5), strict=True):
            np.testing.assert_array_equal(got, want)
        cu = np.array([0, 3, 7])
        np.testing.assert_array_equal(positions_from_cu_seqlens(cu, offset=offset), [5, 6, 7, 5, 6, 7, 8])
        packed = rng.standard_normal((7, 2, 16)).astype(np.float32)
        np.testing.assert_array_equal(rope.apply(packed, cu_seqlens=cu, offset=offset, seq_axis=-3)[0],
                                      rope.apply(packed, cu_seqlens=cu, offset=5, seq_axis=-3)[0])
    with pytest.raises(ValueError, match=r"^offset: positions must be >= 0"):
        rope.apply(q, k, offset=np.array(-1))
    with pytest.raises(ValueError, match=r"^offset: positions must be >= 0"):
        positions_from_cu_seqlens(np.array([0, 3]), offset=np.array(-1))


def test_cu_seqlens_too_large_to_allocate_is_named():
    """A last entry past what can be allocated: NumPy's arange returned an empty array past the address space
    (a silent wrong answer) and an unnamed MemoryError below it."""
    for cu in ([0, 2**62, 2**63 - 1], [0, 10**12]):
        with pytest.raises(MemoryError, match=rf"^cu_seqlens: {cu[-1]} tokens \(its last entry\) need"):
            positions_from_cu_seqlens(cu)
