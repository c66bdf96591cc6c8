"""The config corpus (``tests/data/configs/``: published ``config.json`` rope sections, source in each file)
against transformers' own rotary modules.

With transformers installed the reference is computed live by ``tests/data/record_transformers_reference.py``;
without it (CI) the values that script recorded (``tests/data/transformers_reference.json``, provenance inside)
are used. Claims, per config and layer type (DESIGN 1.5):

* ``inv_freq`` within 2 float32 ulps of transformers' (torch's float32 ``pow`` is not correctly rounded),
  short and long lengths (LongRoPE beyond the original context, dynamic NTK beyond ``max_position_embeddings``);
* the same ``attention_scaling``;
* tables built from transformers' own ``inv_freq`` (``inv_freq=`` override) equal its tables within a few
  float32 ulps (the two cos/sin routines), and ropeflow's own tables within that plus ``p * |d inv_freq|``.
"""

from __future__ import annotations

import importlib.util
import json
import pathlib
import warnings

import numpy as np
import pytest

import ropeflow
from ropeflow import RotaryEmbedding
from ropeflow.scaling import is_length_dependent

DATA = pathlib.Path(__file__).parent / "data"
CONFIGS = sorted((DATA / "configs").glob("*.json"))
RECORDED = json.loads((DATA / "transformers_reference.json").read_text())
ULP = 2.0**-24  # float32 ulp of values in [0.5, 1)


def _live_reference() -> dict | None:
    try:
        import torch  # noqa: F401
        import transformers  # noqa: F401
    except ImportError:
        return None
    spec = importlib.util.spec_from_file_location("record_transformers_reference",
                                                  DATA / "record_transformers_reference.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return module.record_all()


@pytest.fixture(scope="module")
def reference() -> dict:
    live = _live_reference()
    return RECORDED["configs"] if live is None else live


def _f32(bits: list[int] | None) -> np.ndarray | None:
    return None if bits is None else np.asarray(bits, dtype=np.uint32).view(np.float32)


def _ulps(a: np.ndarray, b: np.ndarray) -> int:
    return int(np.abs(a.view(np.int32).astype(np.int64) - b.view(np.int32).astype(np.int64)).max())


def _cases() -> list:
    cases = []
    for path in CONFIGS:
        for layer_type in ropeflow.layer_types(path):
            cases.append(pytest.param(path, layer_type, id=f"{path.stem}[{layer_type}]"))
    return cases


def _embedding(path, layer_type, **kwargs) -> RotaryEmbedding:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # Llama 4 Scout's low == high llama3 warning
        return RotaryEmbedding.from_hf_config(path, layer_type=layer_type, backend="numpy", **kwargs)


def _columns(theirs: np.ndarray, ours: np.ndarray) -> np.ndarray:
    """Our ``(n, dim)`` table in the column order of theirs: ``(n, dim)`` halves duplicated, ``(n, dim // 2)``
    (GPT-J, Llama 4's complex form) or ``(n, dim)`` pairs duplicated (Cohere's repeat_interleave)."""
    half = ours.shape[1] // 2
    if theirs.shape[1] == half:
        return ours[:, :half]
    assert theirs.shape[1] == ours.shape[1], (theirs.shape, ours.shape)
    if half > 1 and np.array_equal(theirs[:, 0], theirs[:, 1]) and not np.array_equal(theirs[:, 0], theirs[:, half]):
        return np.repeat(ours[:, :half], 2, axis=1)
    return ours


def _check_tables(rope: RotaryEmbedding, ref: dict, seq_len: int, atol: float) -> None:
    cos, sin = rope.cos_sin(seq_len, "float32")
    rows = np.asarray(ref["positions"])
    for ours, key in ((cos, "cos"), (sin, "sin")):
        theirs = _f32(ref[key]).reshape(len(rows), -1)
        mine = _columns(theirs, np.asarray(ours)[rows])
        np.testing.assert_allclose(mine, theirs, rtol=0, atol=atol, err_msg=key)


@pytest.mark.parametrize("path,layer_type", _cases())
def test_matches_transformers(reference, path, layer_type):
    ref = reference[path.stem]["layer_types"][layer_type]
    rope = _embedding(path, layer_type)
    theirs = _f32(ref["inv_freq"])
    scale = max(1.0, ref["attention_scaling"])
    assert rope.attention_scaling == pytest.approx(ref["attention_scaling"], rel=1e-12, abs=0)
    if theirs is not None:  # GPT-J's module keeps only its tables
        assert rope.inv_freq.shape == theirs.shape
        assert _ulps(rope.inv_freq, theirs) <= 2
    # ropeflow's own tables: the cos/sin routines, plus the angle difference of the inv_freq difference
    d_inv = 2 * ULP * 1.0 if theirs is None else float(np.abs(rope.inv_freq.astype(np.float64) - theirs).max())
    _check_tables(rope, ref, max(ref["positions"]) + 1, atol=4 * ULP * scale + max(ref["positions"]) * d_inv * scale)
    if theirs is not None and not is_length_dependent(rope.scaling):
        # from transformers' own inv_freq: tables equal up to the cos/sin routines
        same = _embedding(path, layer_type, inv_freq=theirs)
        np.testing.assert_array_equal(same.inv_freq, theirs)
        _check_tables(same, ref, max(ref["positions"]) + 1, atol=4 * ULP * scale)
    long = ref.get("long")
    if long is not None:
        rope = _embedding(path, layer_type)
        rope.cos_sin(long["seq_len"])
        long_theirs = _f32(long["inv_freq"])
        assert _ulps(rope.inv_freq, long_theirs) <= 2
        assert not np.array_equal(long_theirs, theirs)  # the long frequencies really differ from the short ones
        assert rope.attention_scaling == pytest.approx(long["attention_scaling"], rel=1e-12, abs=0)
        d_inv = float(np.abs(rope.inv_freq.astype(np.float64) - long_theirs).max())
        _check_tables(rope, long, long["seq_len"], atol=4 * ULP * scale + max(long["positions"]) * d_inv * scale)


def test_corpus_size_and_provenance():
    assert len(CONFIGS) >= 30
    for path in CONFIGS:
        raw = json.loads(path.read_text())
        assert raw["_source"].startswith("https://huggingface.co/"), path.name
    assert set(RECORDED["configs"]) == {p.stem for p in CONFIGS}
    assert RECORDED["_provenance"].startswith("recorded by tests/data/record_transformers_reference.py")


def test_recorded_values_are_current(reference):
    """With transformers installed, the committed recording equals a live one (rerun the script if not)."""
    pytest.importorskip("transformers")
    import transformers

    if transformers.__version__ != RECORDED["transformers_version"]:
        pytest.skip(f"recorded with transformers {RECORDED['transformers_version']}, "
                    f"installed {transformers.__version__}")
    for name, live in reference.items():
        for layer_type, entry in live["layer_types"].items():
            recorded = RECORDED["configs"][name]["layer_types"][layer_type]
            assert entry["inv_freq"] == recorded["inv_freq"], (name, layer_type)
            assert entry["attention_scaling"] == recorded["attention_scaling"], (name, layer_type)


# --------------------------------------------------------------------------- what the corpus exercises
@pytest.mark.parametrize("name,layout", [
    ("gpt-j-6b", "interleaved"), ("chatglm3-6b", "interleaved"), ("c4ai-command-r-v01", "interleaved"),
    ("llama-4-scout-17b-16e", "interleaved"), ("deepseek-v3", "deepseek"), ("llama-3.1-8b", "half"),
    ("phi-2", "half"), ("gpt-neox-20b", "half"),
])
def test_layout_from_config(name, layout):
    assert _embedding(DATA / "configs" / f"{name}.json", None).layout == layout


@pytest.mark.parametrize("name,dim,base,max_pos", [
    ("gpt-j-6b", 64, 10000.0, 2048),               # rotary_dim, n_positions, GPTJConfig's default base
    ("gpt-neox-20b", 24, 10000.0, 2048),           # rotary_pct 0.25 of 96, rotary_emb_base
    ("falcon-7b-refinedweb", 64, 10000.0, 2048),   # n_head 71; no base, no context: FalconConfig's defaults
    ("phi-2", 32, 10000.0, 2048),                  # partial_rotary_factor 0.4 of 80
    ("chatglm3-6b", 64, 10000.0, 8192),            # kv_channels 128 * 0.5, seq_length
    ("glm-4-9b-chat", 64, 5e6, 131072),            # rope_ratio 500
    ("gemma-3-4b-it", 256, 1e4, 131072),           # sparse text_config: Gemma3TextConfig's defaults
    ("llama-4-scout-17b-16e", 128, 5e5, 10485760), # text_config
    ("phi-4-mini-instruct", 96, 1e4, 131072),      # partial 0.75 of 128
])
def test_legacy_and_default_fields(name, dim, base, max_pos):
    path = DATA / "configs" / f"{name}.json"
    layer_type = "sliding_attention" if name.startswith("gemma-3") else None
    rope = _embedding(path, layer_type)
    assert (rope.dim, rope.base, rope.max_position_embeddings) == (dim, base, max_pos)


# ------------------------------------------------------------------------------------------ softmax scale
SOFTMAX_SCALES = json.loads((DATA / "softmax_scales.json").read_text())


@pytest.mark.parametrize("path", CONFIGS, ids=lambda p: p.stem)
def test_softmax_scale_is_what_transformers_attention_uses(path):
    """``ropeflow.softmax_scale`` against the ``scaling`` of transformers' own attention module for the same
    file (recorded by ``tests/data/record_softmax_scales.py``): query_pre_attn_scalar for Gemma 2 and 3 (the
    27B's 168, not its head dim 128, which ropeflow used), DeepSeek-V3's YaRN mscale, partial-rotary heads."""
    recorded = SOFTMAX_SCALES["configs"][path.stem]
    if recorded is None:
        pytest.skip("no transformers attention module records a scale for this file")
    raw = json.loads(path.read_text())
    for layer_type in ropeflow.layer_types(raw):
        assert ropeflow.softmax_scale(raw, layer_type=layer_type) == pytest.approx(recorded["scaling"], rel=1e-15)


def test_recorded_softmax_scales_cover_the_corpus():
    assert set(SOFTMAX_SCALES["configs"]) == {p.stem for p in CONFIGS}
    assert sum(v is not None for v in SOFTMAX_SCALES["configs"].values()) >= 35
