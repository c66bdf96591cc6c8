"""M-RoPE and per-position tables against transformers' own modules (skipped without torch + transformers).

* Qwen2-VL / Qwen2.5-VL / Qwen3-VL rotary embeddings: ropeflow built from the module's ``inv_freq`` (the
  ``inv_freq=`` override) gives the module's (batch, seq, dim) tables within a few float32 ulps (the two
  cos/sin routines), for mixed and text-only ids; built from the config alone, ``inv_freq`` is within 2 ulps
  (DESIGN 1.5) and the embedding has the model's sections.
* ``apply_rotary_pos_emb`` of those modules on q and k equals ``rope.apply(q, k, position_ids=pos3)``.
* ``get_rope_index`` (Qwen2-VL, Qwen2.5-VL with video timing, Qwen3-VL with frame-split videos, padding)
  equals :func:`ropeflow.mrope_position_ids`.
"""

from __future__ import annotations

import functools
import types

import numpy as np
import pytest

import ropeflow
from ropeflow import RotaryEmbedding, mrope_position_ids

torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
m2 = pytest.importorskip("transformers.models.qwen2_vl.modeling_qwen2_vl")
m25 = pytest.importorskip("transformers.models.qwen2_5_vl.modeling_qwen2_5_vl")
m3 = pytest.importorskip("transformers.models.qwen3_vl.modeling_qwen3_vl")
from transformers.models.qwen2_5_vl.configuration_qwen2_5_vl import Qwen2_5_VLTextConfig  # noqa: E402
from transformers.models.qwen2_vl.configuration_qwen2_vl import Qwen2VLTextConfig  # noqa: E402
from transformers.models.qwen3_vl.configuration_qwen3_vl import Qwen3VLTextConfig  # noqa: E402

ULP = 2.0**-24

MODELS = {
    # name: (config class, rotary module, model class, rope dict, head_dim, interleaved)
    "qwen2_vl": (Qwen2VLTextConfig, m2.Qwen2VLRotaryEmbedding, m2.Qwen2VLModel,
                 {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}, 128, False),
    "qwen2_5_vl": (Qwen2_5_VLTextConfig, m25.Qwen2_5_VLRotaryEmbedding, m25.Qwen2_5_VLModel,
                   {"rope_type": "default", "mrope_section": [16, 24, 24], "rope_theta": 1e6}, 128, False),
    "qwen3_vl": (Qwen3VLTextConfig, m3.Qwen3VLTextRotaryEmbedding, m3.Qwen3VLModel,
                 {"rope_type": "default", "mrope_section": [24, 20, 20], "mrope_interleaved": True,
                  "rope_theta": 5e6}, 128, True),
    "qwen3_vl_small": (Qwen3VLTextConfig, m3.Qwen3VLTextRotaryEmbedding, m3.Qwen3VLModel,
                       {"rope_type": "default", "mrope_section": [6, 4, 2], "mrope_interleaved": True,
                        "rope_theta": 1e4}, 24, True),
}


def _module(name):
    config_cls, rotary_cls, _, rope, head_dim, _ = MODELS[name]
    config = config_cls(hidden_size=head_dim * 2, num_attention_heads=2, head_dim=head_dim,
                        max_position_embeddings=32768, rope_parameters=dict(rope))
    return config, rotary_cls(config)


def _ids(kind, batch=2, seq=37, seed=0):
    g = torch.Generator().manual_seed(seed)
    if kind == "text":
        return (torch.arange(seq)[None] + torch.randint(0, 1000, (batch, 1), generator=g)).expand(3, batch, seq)
    return torch.randint(0, 30000, (3, batch, seq), generator=g)


def _ulps(a, b):
    return np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64)).max()


@pytest.mark.parametrize("kind", ["mixed", "text"])
@pytest.mark.parametrize("name", list(MODELS))
def test_mrope_tables_equal_transformers(name, kind):
    config, module = _module(name)
    _, _, _, rope_dict, head_dim, interleaved = MODELS[name]
    pos3 = _ids(kind)
    with torch.no_grad():
        want_cos, want_sin = module(torch.zeros(1, dtype=torch.float32), pos3)
    rope = RotaryEmbedding(head_dim, 32768, rope_dict["rope_theta"], inv_freq=module.inv_freq,
                           mrope_section=rope_dict["mrope_section"], mrope_interleaved=interleaved)
    cos, sin = rope(torch.zeros(1, dtype=torch.float32), position_ids=pos3)
    assert isinstance(cos, torch.Tensor) and cos.shape == want_cos.shape and cos.dtype == want_cos.dtype
    # the same float32 angles; the cos/sin routines differ by a few ulps of the argument's magnitude
    np.testing.assert_allclose(cos.numpy(), want_cos.numpy(), atol=8 * ULP, rtol=0)
    np.testing.assert_allclose(sin.numpy(), want_sin.numpy(), atol=8 * ULP, rtol=0)
    if kind == "text":  # (batch, seq) ids are text positions: transformers expands them to three equal axes
        text_cos, _ = rope(torch.zeros(1, dtype=torch.float32), position_ids=pos3[0])
        np.testing.assert_array_equal(text_cos.numpy(), cos.numpy())
    for dtype in (torch.bfloat16, torch.float16):
        with torch.no_grad():
            want16, _ = module(torch.zeros(1, dtype=dtype), pos3)
        got16, _ = rope(torch.zeros(1, dtype=dtype), position_ids=pos3)
        assert got16.dtype == dtype
        # one rounding of float32 values a few ulps apart: equal or one 16-bit ulp apart
        eps = 2.0**-8 if dtype == torch.bfloat16 else 2.0**-11
        np.testing.assert_allclose(got16.float().numpy(), want16.float().numpy(), atol=eps, rtol=0)


@pytest.mark.parametrize("name", list(MODELS))
def test_mrope_apply_equals_transformers(name):
    config, module = _module(name)
    _, _, _, rope_dict, head_dim, interleaved = MODELS[name]
    modeling = {"qwen2_vl": m2, "qwen2_5_vl": m25}.get(name, m3)
    pos3 = _ids("mixed", batch=2, seq=19, seed=3)
    g = torch.Generator().manual_seed(4)
    q = torch.randn(2, 4, 19, head_dim, generator=g)
    k = torch.randn(2, 2, 19, head_dim, generator=g)
    with torch.no_grad():
        cos, sin = module(q, pos3)
        want_q, want_k = modeling.apply_rotary_pos_emb(q, k, cos, sin)
    for backend in ("numpy", "numba"):
        rope = RotaryEmbedding(head_dim, 32768, rope_dict["rope_theta"], inv_freq=module.inv_freq, backend=backend,
                               mrope_section=rope_dict["mrope_section"], mrope_interleaved=interleaved)
        got_q, got_k = rope.apply(q, k, position_ids=pos3)
        assert isinstance(got_q, torch.Tensor) and got_q.dtype == q.dtype
        # float64 math rounded once vs torch's float32 ops, and tables a few ulps apart: |x| up to ~5
        np.testing.assert_allclose(got_q.numpy(), want_q.numpy(), atol=6e-6, rtol=0)
        np.testing.assert_allclose(got_k.numpy(), want_k.numpy(), atol=6e-6, rtol=0)


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_from_hf_config_matches_the_module(name):
    config, module = _module(name)
    _, _, _, rope_dict, head_dim, interleaved = MODELS[name]
    outer = {"model_type": name, "text_config": config.to_dict()}
    rope = RotaryEmbedding.from_hf_config(outer)
    assert rope.mrope_section == tuple(rope_dict["mrope_section"]) and rope.mrope_interleaved is interleaved
    assert rope.dim == head_dim and rope.base == rope_dict["rope_theta"]
    assert _ulps(rope.inv_freq, module.inv_freq.numpy()) <= 2


# ---------------------------------------------------------------------------------------- get_rope_index
def _model_stub(name, merge=2, tokens_per_second=2):
    model_cls = MODELS[name][2]
    stub = types.SimpleNamespace(config=types.SimpleNamespace(vision_config=types.SimpleNamespace(
        spatial_merge_size=merge, tokens_per_second=tokens_per_second)))
    stub.get_vision_position_ids = functools.partial(model_cls.get_vision_position_ids, stub)
    return functools.partial(model_cls.get_rope_index, stub)


def _sequence(rng, items, merge=2, frame_text=0):
    """Token types for items ("text", n) / ("image", t, h, w) / ("video", t, h, w); frame_text > 0 puts that
    many text (timestamp) tokens before every video frame, as Qwen3-VL's processor does."""
    types_, images, videos = [], [], []
    for item in items:
        if item[0] == "text":
            types_ += [0] * item[1]
            continue
        kind, t, h, w = item
        per_frame = (h // merge) * (w // merge)
        if kind == "image":
            types_ += [1] * (t * per_frame)
            images.append([t, h, w])
        else:
            videos.append([t, h, w])
            for _ in range(t if frame_text else 1):
                types_ += [0] * frame_text + [2] * (per_frame * (1 if frame_text else t))
    return types_, images, videos


ITEMS = [("text", 5), ("image", 1, 4, 6), ("text", 3), ("video", 3, 4, 4), ("text", 2), ("image", 1, 8, 2),
         ("text", 1), ("video", 6, 2, 2), ("text", 4)]


@pytest.mark.parametrize("name", ["qwen2_vl", "qwen2_5_vl", "qwen3_vl"])
def test_mrope_position_ids_equal_get_rope_index(name):
    rng = np.random.default_rng(0)
    frame_text = 2 if name == "qwen3_vl" else 0
    row0, images0, videos0 = _sequence(rng, ITEMS, frame_text=frame_text)
    row1, images1, videos1 = _sequence(rng, [("text", 7), ("image", 1, 2, 2), ("text", 2)], frame_text=frame_text)
    seq = max(len(row0), len(row1))
    types_ = np.zeros((2, seq), np.int64)
    mask = np.zeros((2, seq), np.int64)
    types_[0, :len(row0)], mask[0, :len(row0)] = row0, 1  # right padding
    types_[1, seq - len(row1):], mask[1, seq - len(row1):] = row1, 1  # left padding
    images, videos = images0 + images1, videos0 + videos1
    kwargs, ours = {}, {}
    if name == "qwen2_5_vl":
        kwargs["second_per_grid_ts"] = torch.tensor([0.5, 1.25])
        ours = {"tokens_per_second": 2, "second_per_grid_ts": [0.5, 1.25]}
    if name == "qwen3_vl":
        ours = {"split_video_frames": True}
    ids_t = torch.from_numpy(types_)
    want, want_deltas = _model_stub(name)(ids_t, ids_t, image_grid_thw=torch.tensor(images),
                                          video_grid_thw=torch.tensor(videos), attention_mask=torch.from_numpy(mask),
                                          **kwargs)
    got, deltas = mrope_position_ids(types_, images, videos, spatial_merge_size=2, attention_mask=mask, **ours)
    assert got.shape == tuple(want.shape) and got.dtype == np.int64
    np.testing.assert_array_equal(got, want.numpy())
    np.testing.assert_array_equal(deltas, want_deltas.numpy().reshape(-1))
    # torch in, torch out
    got_t, _ = mrope_position_ids(ids_t, images, videos, attention_mask=torch.from_numpy(mask), **ours)
    assert isinstance(got_t, torch.Tensor) and torch.equal(got_t, want)


def test_mrope_position_ids_text_only_equals_get_rope_index():
    types_ = np.zeros((1, 9), np.int64)
    want, want_deltas = _model_stub("qwen2_vl")(torch.from_numpy(types_), torch.from_numpy(types_))
    got, deltas = mrope_position_ids(types_)
    np.testing.assert_array_equal(got, want.numpy())
    assert deltas.tolist() == want_deltas.reshape(-1).tolist() == [0]


def test_qwen2_5_vl_preset_end_to_end():
    """The shipped Qwen2.5-VL preset: from its config to rotated q and k, equal to transformers' module."""
    rope = RotaryEmbedding.from_preset("qwen2.5-vl-7b-instruct")
    cfg = ropeflow.presets.load("qwen2.5-vl-7b-instruct")
    config = Qwen2_5_VLTextConfig(hidden_size=cfg["hidden_size"], num_attention_heads=cfg["num_attention_heads"],
                                  max_position_embeddings=cfg["max_position_embeddings"],
                                  rope_parameters={"rope_type": "default", "mrope_section": [16, 24, 24],
                                                   "rope_theta": cfg["rope_theta"]})
    module = m25.Qwen2_5_VLRotaryEmbedding(config)
    assert rope.mrope_section == (16, 24, 24) and _ulps(rope.inv_freq, module.inv_freq.numpy()) <= 2
    types_, images, videos = _sequence(None, ITEMS)
    pos3, _ = mrope_position_ids(types_, images, videos, tokens_per_second=2)
    with torch.no_grad():
        cos, sin = module(torch.zeros(1), torch.from_numpy(pos3))
    g = torch.Generator().manual_seed(5)
    q, k = torch.randn(1, 28, pos3.shape[2], 128, generator=g), torch.randn(1, 4, pos3.shape[2], 128, generator=g)
    want_q, want_k = m25.apply_rotary_pos_emb(q, k, cos, sin)
    got_q, got_k = rope.apply(q, k, position_ids=torch.from_numpy(pos3))
    # inv_freq within 2 ulps: angles differ by up to p * 2 ulps(inv_freq), p < 100 here
    np.testing.assert_allclose(got_q.numpy(), want_q.numpy(), atol=2e-5, rtol=0)
    np.testing.assert_allclose(got_k.numpy(), want_k.numpy(), atol=2e-5, rtol=0)
