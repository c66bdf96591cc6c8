"""Reading configs: layer types, config objects, the inv_freq override, and bad input (issue 13: every error
names the field; a failed call changes nothing)."""

from __future__ import annotations

import json
import math
import os
import pathlib
import warnings

import numpy as np
import pytest

import ropeflow
from ropeflow import LinearScaling, LongRopeScaling, RotaryEmbedding, YarnScaling, compute_frequencies
from ropeflow.config import rope_settings

DATA = pathlib.Path(__file__).parent / "data" / "configs"
LLAMA = {"model_type": "llama", "hidden_size": 4096, "num_attention_heads": 32, "max_position_embeddings": 8192}


def _load(name: str) -> dict:
    return json.loads((DATA / f"{name}.json").read_text())


# ----------------------------------------------------------------------------------------- layer types
def test_gemma3_layer_types_and_ambiguity():
    cfg = _load("gemma-3-4b-it")
    assert ropeflow.layer_types(cfg) == ("sliding_attention", "full_attention")
    with pytest.raises(ValueError, match=r"layer_type: .*different rotary settings.*'sliding_attention'.*"
                                         r"'full_attention'.*ropeflow.layer_types"):
        RotaryEmbedding.from_hf_config(cfg)
    local = RotaryEmbedding.from_hf_config(cfg, layer_type="sliding_attention")
    full = RotaryEmbedding.from_hf_config(cfg, layer_type="full_attention")
    assert (local.base, local.scaling) == (10000.0, None)
    assert (full.base, full.scaling) == (1e6, LinearScaling(8.0))
    with pytest.raises(ValueError, match=r"layer_type: 'chunked_attention' is not a layer type.*available: "
                                         r"'sliding_attention', 'full_attention'"):
        RotaryEmbedding.from_hf_config(cfg, layer_type="chunked_attention")
    with pytest.raises(TypeError, match="layer_type: expected a string"):
        RotaryEmbedding.from_hf_config(cfg, layer_type=1)


def test_nested_rope_parameters_transformers5():
    cfg = {"model_type": "gemma3_text", "max_position_embeddings": 32768, "head_dim": 256,
           "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
           "rope_parameters": {"sliding_attention": {"rope_type": "default", "rope_theta": 10000.0},
                               "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6}}}
    assert ropeflow.layer_types(cfg) == ("sliding_attention", "full_attention")
    full = rope_settings(cfg, "full_attention")
    assert (full["dim"], full["base"], full["scaling"]) == (256, 1e6, {"rope_type": "linear", "factor": 8.0})
    assert rope_settings(cfg, "sliding_attention")["scaling"] is None
    # a layer type with null parameters (NoPE) is listed nowhere and refused by name
    cfg["rope_parameters"]["chunked_attention"] = None
    assert "chunked_attention" not in ropeflow.layer_types(cfg)
    with pytest.raises(ValueError, match="'chunked_attention' has no rotary embedding"):
        rope_settings(cfg, "chunked_attention")


def test_single_configuration_layer_types():
    cfg = _load("gpt-oss-20b")  # sliding and full layers, one rotary configuration
    assert ropeflow.layer_types(cfg) == ("sliding_attention", "full_attention")
    a = RotaryEmbedding.from_hf_config(cfg)
    b = RotaryEmbedding.from_hf_config(cfg, layer_type="full_attention")
    np.testing.assert_array_equal(a.inv_freq, b.inv_freq)
    assert ropeflow.layer_types(LLAMA) == ("full_attention",)


def test_transformers_config_objects():
    transformers = pytest.importorskip("transformers")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        gemma = transformers.Gemma3TextConfig(head_dim=256, max_position_embeddings=32768,
                                              rope_scaling={"rope_type": "linear", "factor": 8.0})
        phi = transformers.Phi3Config.from_dict({k: v for k, v in _load("phi-3.5-mini-instruct").items()
                                                 if not k.startswith("_")})
    # transformers 5 objects hold rope_parameters nested by layer type
    assert set(ropeflow.layer_types(gemma)) == {"sliding_attention", "full_attention"}
    full = RotaryEmbedding.from_hf_config(gemma, layer_type="full_attention")
    assert (full.base, full.scaling) == (1e6, LinearScaling(8.0))
    from_object = RotaryEmbedding.from_hf_config(phi)
    from_file = RotaryEmbedding.from_hf_config(DATA / "phi-3.5-mini-instruct.json")
    assert from_object.scaling == from_file.scaling
    assert from_object.attention_scaling == pytest.approx(1.19024, abs=1e-5)


# ------------------------------------------------------------------------------------ LongRoPE, llama3
def test_phi35_longrope_original_at_top_level():
    rope = RotaryEmbedding.from_hf_config(DATA / "phi-3.5-mini-instruct.json", backend="numpy")
    assert rope.scaling.original_max_position_embeddings == 4096
    assert rope.attention_scaling == pytest.approx(math.sqrt(1 + math.log(32) / math.log(4096)), rel=1e-15)
    short = rope.inv_freq.copy()
    rope.cos_sin(4096)
    np.testing.assert_array_equal(rope.inv_freq, short)
    rope.cos_sin(4097)  # beyond the original context: the long factors, as transformers
    long_factor = np.asarray(rope.scaling.long_factor, np.float64)
    short_factor = np.asarray(rope.scaling.short_factor, np.float64)
    np.testing.assert_allclose(rope.inv_freq / short, short_factor / long_factor, rtol=1e-6)


def test_llama4_scout_low_equals_high_warns_and_is_defined():
    with pytest.warns(UserWarning, match="low_freq_factor == high_freq_factor"):
        rope = RotaryEmbedding.from_hf_config(DATA / "llama-4-scout-17b-16e.json")
    assert np.all(np.isfinite(rope.inv_freq))
    plain = compute_frequencies(None, 128, 5e5, 8192).inv_freq
    wavelen = 2 * np.pi / plain.astype(np.float64)
    expected = np.where(wavelen > 8192, plain / np.float32(16.0), plain)
    np.testing.assert_array_equal(rope.inv_freq, expected)


# ---------------------------------------------------------------------------------- inv_freq override
def test_inv_freq_override_is_used_bit_for_bit():
    torch = pytest.importorskip("torch")
    theirs = 1.0 / (10000.0 ** (torch.arange(0, 128, 2, dtype=torch.int64).float() / 128))
    rope = RotaryEmbedding(128, 4096, 10000.0, inv_freq=theirs, backend="numpy")
    np.testing.assert_array_equal(rope.inv_freq, theirs.numpy())
    pos = torch.arange(300, dtype=torch.float32)
    angles = (pos[:, None] * theirs[None, :]).numpy()
    cos, _ = rope.cos_sin(300)
    np.testing.assert_allclose(cos[:, :64], np.cos(angles.astype(np.float64)), atol=2**-23, rtol=0)


def test_inv_freq_override_keeps_attention_scaling_and_refuses_length_dependent():
    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 1024}
    buf = compute_frequencies(yarn, 64, 1e4, 4096).inv_freq
    rope = RotaryEmbedding(64, 4096, scaling=yarn, inv_freq=list(map(float, buf)))
    assert rope.attention_scaling == pytest.approx(0.1 * math.log(4.0) + 1)
    np.testing.assert_array_equal(rope.inv_freq, buf)
    with pytest.raises(ValueError, match="inv_freq: an override cannot serve dynamic"):
        RotaryEmbedding(64, 4096, scaling={"rope_type": "dynamic", "factor": 2.0}, inv_freq=buf)


@pytest.mark.parametrize("value,exc,match", [
    (np.ones(31, np.float32), ValueError, r"inv_freq: needs shape \(dim // 2,\) = \(32,\), got \(31,\)"),
    (np.full(32, np.nan), ValueError, "inv_freq: values must be finite and >= 0"),
    (-np.ones(32), ValueError, "inv_freq: values must be finite and >= 0"),
    ("1.0", TypeError, "inv_freq: expected an array"),
    (np.ones(32, bool), TypeError, "inv_freq: expected real numbers"),
])
def test_inv_freq_override_errors(value, exc, match):
    with pytest.raises(exc, match=match):
        RotaryEmbedding(64, inv_freq=value)


def test_inv_freq_on_the_meta_device_is_named():
    """A model built on torch's meta device holds inv_freq buffers without values: torch's own "Cannot copy
    out of meta tensor" escaped, naming nothing."""
    torch = pytest.importorskip("torch")
    with pytest.raises(TypeError, match=r"^inv_freq: a torch tensor on the meta device"):
        RotaryEmbedding(64, inv_freq=torch.ones(32, device="meta"))


# -------------------------------------------------------------------------------------------- layouts
def test_layout_is_apply_default():
    rope = RotaryEmbedding.from_hf_config(DATA / "gpt-j-6b.json", backend="numpy")
    assert rope.layout == "interleaved"
    rng = np.random.default_rng(0)
    q = rng.standard_normal((1, 2, 5, 256)).astype(np.float32)
    by_default, _ = rope.apply(q)
    explicit, _ = rope.apply(q, layout="interleaved")
    half, _ = rope.apply(q, layout="half")
    np.testing.assert_array_equal(by_default, explicit)
    assert not np.array_equal(by_default, half)
    with pytest.raises(ValueError, match="layout: unknown layout 'neox'"):
        RotaryEmbedding(64, layout="neox")


# ------------------------------------------------------------------------------ defaults, legacy fields
def test_phi_partial_default_and_legacy_names():
    assert rope_settings({"model_type": "phi", "hidden_size": 2560, "num_attention_heads": 32})["dim"] == 40
    neox = rope_settings({"model_type": "gpt_neox", "hidden_size": 512, "num_attention_heads": 8,
                          "rotary_pct": 0.5, "rotary_emb_base": 20000, "max_position_embeddings": 128})
    assert (neox["dim"], neox["base"]) == (32, 20000.0)
    assert rope_settings({"model_type": "llama4_text"})["base"] == 5e5
    assert rope_settings({"model_type": "gemma3_text", "layer_types": ["full_attention"],
                          "rope_parameters": {"full_attention": {"rope_type": "default"}}})["base"] == 1e6
    with pytest.raises(ValueError, match="ALiBi"):
        rope_settings({"model_type": "falcon", "alibi": True})


# ------------------------------------------------------------------------------- bad input (issue 13)
BAD_CONFIGS = [
    ({**LLAMA, "hidden_size": 16, "num_attention_heads": 32}, ValueError,
     r"config\['hidden_size'\]: 16 is smaller than config\['num_attention_heads'\] = 32"),
    ({**LLAMA, "partial_rotary_factor": 1.5}, ValueError, r"config\['partial_rotary_factor'\].*\(0, 1\], got 1.5"),
    ({**LLAMA, "partial_rotary_factor": 0}, ValueError, r"config\['partial_rotary_factor'\]: must be > 0"),
    ({**LLAMA, "partial_rotary_factor": True}, TypeError, r"config\['partial_rotary_factor'\]: expected a number"),
    ({**LLAMA, "max_position_embeddings": 4096.7}, ValueError,
     r"config\['max_position_embeddings'\]: expected an integer, got 4096.7"),
    ({**LLAMA, "max_position_embeddings": "4096"}, TypeError,
     r"config\['max_position_embeddings'\]: expected a number"),
    ({**LLAMA, "max_position_embeddings": float("inf")}, ValueError, r"max_position_embeddings'\]: must be finite"),
    ({**LLAMA, "num_attention_heads": 0}, ValueError, r"config\['num_attention_heads'\]: must be >= 1, got 0"),
    ({**LLAMA, "num_attention_heads": False}, TypeError, r"config\['num_attention_heads'\]: expected a number"),
    ({**LLAMA, "hidden_size": -64}, ValueError, r"config\['hidden_size'\]: must be >= 1"),
    ({**LLAMA, "head_dim": 63}, ValueError, r"rotary dim .*positive even integer <= 65536, got 63"),
    ({**LLAMA, "rope_theta": -1.0}, ValueError, r"config\['rope_theta'\]: must be > 1.0"),
    ({**LLAMA, "rope_theta": "1e4"}, TypeError, r"config\['rope_theta'\]: expected a number"),
    ({**LLAMA, "rope_scaling": "linear"}, TypeError, r"config\['rope_scaling'\]: expected a dict"),
    ({**LLAMA, "rope_parameters": ["yarn"]}, TypeError, r"config\['rope_parameters'\]: expected a dict"),
    ({**LLAMA, "rope_scaling": {"rope_type": ["yarn"], "factor": 2.0}}, TypeError, r"rope rope_type must be a string"),
    ({**LLAMA, "rope_scaling": {"rope_type": "longrope", "short_factor": "1111", "long_factor": [1.0] * 64,
                                "original_max_position_embeddings": 4096}}, TypeError,
     r"scaling\['short_factor'\]: expected a list of numbers, got '1111'"),
    ({**LLAMA, "rope_scaling": {"rope_type": "longrope", "short_factor": [1.0] * 64, "long_factor": [1.0] * 64,
                                "original_max_position_embeddings": 1}}, ValueError,
     r"original_max_position_embeddings'\]: must be >= 2, got 1"),
    ({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "mscale": 1e300}}, ValueError,
     r"scaling\['mscale'\] / scaling\['mscale_all_dim'\]: gives attention scaling"),
    ({**LLAMA, "rope_scaling": {"rope_type": "yarn", "factor": 4.0, "attention_factor": 1e300}}, ValueError,
     r"scaling\['attention_factor'\]: gives attention scaling 1e\+300"),
    ({**LLAMA, "rope_scaling": {"rope_type": "ntk", "factor": 1e308}}, ValueError,
     r"scaling\['factor'\] \(ntk\): factor \*\* \(dim / \(dim - 2\)\) overflows"),
    ({**LLAMA, "rope_ratio": 0}, ValueError, r"config\['rope_ratio'\]: must be > 0"),
    ({**LLAMA, "rope_parameters": {"rope_type": "default", "rope_theta": 1e4},
      "rope_scaling": {"rope_type": "linear", "factor": 4.0}}, ValueError,
     r"config: 'rope_scaling' .* and 'rope_parameters' .* disagree \('rope_type', 'factor'\); keep the one"),
    ({**LLAMA, "rope_parameters": {"full_attention": {"rope_type": "default", "rope_theta": 1e4}},
      "rope_scaling": {"rope_type": "linear", "factor": 4.0}}, ValueError,
     r"disagree \(the layout \(rope_parameters is nested by layer type\)\)"),
    ({**LLAMA, "layer_types": "full_attention"}, TypeError,
     r"config\['layer_types'\]: expected a list of layer type names \(or null\), got 'full_attention' \(str\)"),
    ({**LLAMA, "layer_types": 5}, TypeError, r"config\['layer_types'\]: expected a list .* got 5 \(int\)"),
    ({**LLAMA, "rope_ratio": 1e-5}, ValueError, r"config\['rope_ratio'\]: the base 10000 \* rope_ratio 1e-05 = 0.1"),
    ({**LLAMA, "rope_local_base_freq": "1e4"}, TypeError, r"config\['rope_local_base_freq'\]: expected a number"),
    ({**LLAMA, "rotary_dim": 256}, ValueError, r"config\['rotary_dim'\]: 256 is more than the head dim 128"),
    ({**LLAMA, "text_config": 5}, TypeError, r"config\['text_config'\]: expected a dict or a config object, got 5"),
    ({**LLAMA, "text_config": "text.json"}, TypeError, r"config\['text_config'\]: expected a dict .* got 'text.json'"),
    ({**LLAMA, "rope_scaling": {"rope_type": "longrope", "short_factor": [1e-300] + [1.0] * 63,
                                "long_factor": [1.0] * 64, "original_max_position_embeddings": 4096}}, ValueError,
     r"^scaling: the frequencies of LongRopeScaling\(.*\) are not finite in float32"),
    ({"hidden_size": 64, "num_attention_heads": 1}, ValueError, "missing required field 'max_position_embeddings'"),
]


def test_rope_scaling_next_to_rope_parameters():
    """transformers 4's ``rope_scaling`` beside transformers 5's ``rope_parameters``: read when
    ``rope_parameters`` is empty, accepted when both say the same (``type`` read as ``rope_type``), refused by
    name when they differ (see BAD_CONFIGS). It was ignored whenever ``rope_parameters`` was present."""
    linear = {"rope_type": "linear", "factor": 4.0}
    plain = RotaryEmbedding.from_hf_config(LLAMA)
    for cfg in ({**LLAMA, "rope_parameters": {}, "rope_scaling": linear},
                {**LLAMA, "rope_parameters": {**linear, "rope_theta": LLAMA.get("rope_theta", 10000.0)},
                 "rope_scaling": {"type": "linear", "factor": 4}}):
        rope = RotaryEmbedding.from_hf_config(cfg)
        assert rope.scaling is not None and rope.scaling.factor == 4.0
        cos, _ = rope.cos_sin(64, "float64")
        want = np.cos(np.arange(64)[:, None] / 4.0 * plain.inv_freq.astype(np.float64)[None, :])
        np.testing.assert_allclose(cos[:, : want.shape[1]], want, rtol=0, atol=1e-6)


def test_softmax_scale_reads_configs_as_from_hf_config_does():
    """softmax_scale validates the scaling as from_hf_config does (a string mscale_all_dim was read as a number
    there and refused here) and finds the head dim under the same names (d_model / num_heads)."""
    from ropeflow.config import softmax_scale

    yarn = {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 2048, "mscale_all_dim": "1"}
    for read in (RotaryEmbedding.from_hf_config, softmax_scale):
        with pytest.raises(TypeError, match=r"scaling\['mscale_all_dim'\]: expected a number, got '1'"):
            read({**LLAMA, "rope_scaling": yarn})
    t5_names = {"d_model": 4096, "num_heads": 32, "max_position_embeddings": 4096}
    assert RotaryEmbedding.from_hf_config(t5_names).dim == 128
    assert softmax_scale(t5_names) == 128**-0.5


@pytest.mark.parametrize("cfg,exc,match", BAD_CONFIGS, ids=lambda v: None)
def test_bad_config_fields_name_the_field(cfg, exc, match):
    with pytest.raises(exc, match=match):
        RotaryEmbedding.from_hf_config(cfg)


def test_bad_files_name_the_path_and_problem(tmp_path):
    bad_json = tmp_path / "bad.json"
    bad_json.write_text('{"rope_theta": 1e4,')
    with pytest.raises(ValueError, match=r"config: '.*bad.json' is not valid JSON: .* at line 1"):
        RotaryEmbedding.from_hf_config(bad_json)
    bad_utf8 = tmp_path / "latin1.json"
    bad_utf8.write_bytes(b'{"model_type": "caf\xe9"}')
    with pytest.raises(ValueError, match=r"config: '.*latin1.json' is not UTF-8 text"):
        RotaryEmbedding.from_hf_config(bad_utf8)
    array = tmp_path / "array.json"
    array.write_text("[1, 2]")
    with pytest.raises(ValueError, match=r"does not hold a JSON object \(got a JSON list\)"):
        RotaryEmbedding.from_hf_config(array)
    with pytest.raises(FileNotFoundError, match=r"config: no such file '.*missing.json'"):
        RotaryEmbedding.from_hf_config(tmp_path / "missing.json")
    with pytest.raises(FileNotFoundError, match=r"config: no such file '.*config.json'"):
        RotaryEmbedding.from_hf_config(tmp_path)  # a folder without config.json


@pytest.mark.parametrize("hub_id", ["deepseek-ai/DeepSeek-V3", "meta-llama/Llama-3.1-8B"])
def test_hub_id_says_how_to_download(hub_id):
    with pytest.raises(ValueError, match=rf"'{hub_id}' is not a local file.*Hugging Face Hub id.*only local paths, "
                                         rf"dicts and config objects.*huggingface-cli download {hub_id} config.json"
                                         r".*hf_hub_download"):
        RotaryEmbedding.from_hf_config(hub_id)


# -------------------------------------------- compute_frequencies and the dataclasses validate like the constructor
BAD_FREQUENCY_ARGS = [
    (dict(dim=63), ValueError, "dim: must be a positive even integer <= 65536, got 63"),
    (dict(dim=64.0), TypeError, "dim: expected a positive even int"),
    (dict(dim=True), TypeError, "dim: expected a positive even int"),
    (dict(base=-10000.0), ValueError, r"base: must be > 1.0, got -10000.0"),
    (dict(base=float("nan")), ValueError, "base: must be finite"),
    (dict(base="1e4"), TypeError, "base: expected a number"),
    (dict(max_position_embeddings=0), ValueError, "max_position_embeddings: must be >= 1"),
    (dict(precision="double"), ValueError, "precision: unknown precision 'double'"),
    (dict(seq_len=-1), ValueError, "seq_len: must be >= 0"),
    (dict(cfg="linear"), TypeError, r"scaling: expected None, a dict .* got 'linear'"),
    (dict(cfg={"rope_type": ["yarn"], "factor": 2.0}), TypeError, r"scaling\['rope_type'\]: expected a string"),
    (dict(cfg={"rope_type": "ntk", "factor": 1e308}), ValueError, r"scaling\['factor'\] \(ntk\).*overflows"),
    (dict(cfg={"rope_type": "yarn", "factor": 40.0, "mscale": 1e300}), ValueError, "gives attention scaling"),
]


@pytest.mark.parametrize("kwargs,exc,match", BAD_FREQUENCY_ARGS)
def test_compute_frequencies_validates_like_the_constructor(kwargs, exc, match):
    args = dict(cfg=None, dim=64, base=10000.0, max_position_embeddings=4096)
    args.update(kwargs)
    with pytest.raises(exc, match=match):
        compute_frequencies(**args)
    ctor = {k: v for k, v in args.items() if k not in ("cfg", "seq_len")}
    if "seq_len" not in kwargs:
        with pytest.raises(exc, match=match):
            RotaryEmbedding(ctor.pop("dim"), scaling=args["cfg"], **ctor)


def test_compute_frequencies_takes_dicts_like_the_constructor():
    d = {"rope_type": "linear", "factor": 4.0}
    np.testing.assert_array_equal(compute_frequencies(d, 64, 1e4, 4096).inv_freq,
                                  RotaryEmbedding(64, 4096, scaling=d).inv_freq)


@pytest.mark.parametrize("make,exc,match", [
    (lambda: LinearScaling(0.5), ValueError, r"scaling\['factor'\] \(linear\): must be >= 1.0, got 0.5"),
    (lambda: LinearScaling(2.0, rope_type="bogus"), ValueError, r"rope_type: LinearScaling has rope_type 'linear', "
                                                                r"got 'bogus'"),
    (lambda: LinearScaling("2"), TypeError, r"scaling\['factor'\] \(linear\): expected a number"),
    (lambda: YarnScaling(40.0, mscale=1e300), ValueError, "gives attention scaling"),
    (lambda: YarnScaling(40.0, attention_factor=float("inf")), ValueError, r"attention_factor'\]: must be finite"),
    (lambda: YarnScaling(40.0, truncate="no"), TypeError, r"scaling\['truncate'\]: expected a bool"),
    (lambda: LongRopeScaling("abc", (1.0,)), TypeError, r"scaling\['short_factor'\]: expected a list of numbers"),
    (lambda: LongRopeScaling((1.0,), (1.0,), original_max_position_embeddings=1), ValueError, r"must be >= 2"),
    (lambda: LongRopeScaling((1.0, True), (1.0, 1.0)), TypeError, r"scaling\['short_factor'\]\[1\]: expected a number"),
])
def test_dataclasses_validate_on_construction(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


def test_longrope_dataclass_is_hashable_from_lists():
    a = LongRopeScaling([1.0, 2.0], [3.0, 4.0], 4096)
    assert hash(a) == hash(LongRopeScaling((1.0, 2.0), (3.0, 4.0), 4096))


def test_dynamic_base_overflow_is_a_value_error_naming_seq_len():
    rope = RotaryEmbedding(4, 1, scaling={"rope_type": "dynamic", "factor": 1e200}, backend="numpy")
    cos, _ = rope.cos_sin(1)
    before = (rope.inv_freq.copy(), rope.cache_info())
    with pytest.raises(ValueError, match=r"seq_len: dynamic NTK's base overflows at seq_len=1048576"):
        rope.cos_sin(2**20)
    np.testing.assert_array_equal(rope.inv_freq, before[0])
    assert rope.cache_info() == before[1]
    np.testing.assert_array_equal(rope.cos_sin(1)[0], cos)


#: presets whose model's whole config.json is in the corpus under another name
_CORPUS_NAME = {"kimi-k2": "kimi-k2-instruct"}


@pytest.mark.parametrize("preset", [p for p in ropeflow.presets.names()
                                    if (DATA / f"{_CORPUS_NAME.get(p, p)}.json").exists()])
def test_preset_reads_as_the_models_whole_config(preset):
    """A preset (the rotary fields of a config.json) gives the embedding the model's whole config.json gives:
    layout, sizes, scaling and tables, per layer type. The DeepSeek-V3 and Kimi-K2 presets had no
    ``model_type``, so the model's ``"deepseek"`` layout never applied and they rotated as ``"half"``."""
    whole = str(DATA / f"{_CORPUS_NAME.get(preset, preset)}.json")
    types = ropeflow.layer_types(ropeflow.presets.load(preset))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # Llama 4 Scout's empty llama3 band warns, the same for both
        for layer_type in sorted(set(types)) if types else [None]:
            kw = {} if layer_type is None else {"layer_type": layer_type}
            a = RotaryEmbedding.from_preset(preset, backend="numpy", **kw)
            b = RotaryEmbedding.from_hf_config(whole, backend="numpy", **kw)
            assert (a.layout, a.dim, a.base, a.max_position_embeddings, a.scaling, a.attention_scaling) == \
                (b.layout, b.dim, b.base, b.max_position_embeddings, b.scaling, b.attention_scaling), layer_type
            for got, want in zip(a.cos_sin(64), b.cos_sin(64), strict=True):
                np.testing.assert_array_equal(got, want)
    # a preset may leave the query head dim unstated (no softmax scale), but never imply another one (the Kimi-K2
    # presets, given DeepSeek-V3's model defaults without qk_nope_head_dim, implied 56 instead of 192)
    try:
        scale = ropeflow.softmax_scale(ropeflow.presets.load(preset))
    except ValueError:
        scale = None
    if scale is not None:
        assert scale == ropeflow.softmax_scale(json.loads(pathlib.Path(whole).read_text()))


@pytest.mark.parametrize("preset", ["deepseek-v3", "kimi-k2", "kimi-k2-0905"])
def test_deepseek_presets_rotate_interleaved_pairs_into_halves(preset):
    """DeepSeek-V3 and Kimi-K2 attention (transformers' ``rope_interleave=True``) pairs channels (2j, 2j + 1) and
    writes them to (j, j + half): the "deepseek" layout, written out here with the tables' angles."""
    rope = RotaryEmbedding.from_preset(preset, backend="numpy")
    assert rope.layout == "deepseek"
    x = np.random.default_rng(3).standard_normal((1, 1, 5, 64))
    got, _ = rope.apply(x, offset=1000)
    cos, sin = (np.asarray(t, np.float64)[1000:1005, :32] for t in rope.cos_sin(1005, "float64"))
    even, odd = x[..., 0::2], x[..., 1::2]
    want = np.concatenate([even * cos - odd * sin, odd * cos + even * sin], axis=-1)
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


def test_softmax_scale_of_models_that_do_not_use_the_head_dim():
    """transformers' attention scales by ``attention_multiplier`` in Granite, by ``query_pre_attn_scalar **
    -0.5`` in Gemma 2 and 3 (256 when the file leaves it out, the config classes' default) and by 1 in Gemma
    3n (normalized q and k); ropeflow read ``head_dim ** -0.5`` for all of them."""
    granite = {"model_type": "granite", "hidden_size": 4096, "num_attention_heads": 32, "rope_theta": 1e7,
               "max_position_embeddings": 8192, "attention_multiplier": 0.0078125}
    assert ropeflow.softmax_scale(granite) == 0.0078125
    gemma = {"model_type": "gemma3_text", "head_dim": 128, "query_pre_attn_scalar": 168}
    assert ropeflow.softmax_scale(gemma, layer_type="full_attention") == 168**-0.5
    del gemma["query_pre_attn_scalar"]
    assert ropeflow.softmax_scale(gemma, layer_type="full_attention") == 256**-0.5
    gemma3n = {"model_type": "gemma3n_text", "head_dim": 256, "rope_theta": 1e6, "max_position_embeddings": 32768}
    assert ropeflow.softmax_scale(gemma3n) == 1.0
    with pytest.raises(ValueError, match=r"config\['query_pre_attn_scalar'\]"):
        ropeflow.softmax_scale({**gemma, "query_pre_attn_scalar": -1}, layer_type="full_attention")


def test_legacy_rope_type_names_agree_with_their_canonical_names():
    """transformers 5 keeps Phi-3-vision's ``"type": "su"`` and adds ``"rope_type": "longrope"``: the two name
    one scaling, but were compared as strings and refused as disagreeing (also for a saved config)."""
    longrope = {"short_factor": [1.0] * 48, "long_factor": [1.5] * 48, "original_max_position_embeddings": 4096}
    a = RotaryEmbedding(96, 131072, scaling={"type": "su", "rope_type": "longrope", **longrope})
    b = RotaryEmbedding(96, 131072, scaling={"rope_type": "longrope", **longrope})
    assert a.scaling == b.scaling
    assert RotaryEmbedding(8, 64, scaling={"type": "mrope", "rope_type": "default"}).scaling is None
    with pytest.raises(ValueError, match=r"^scaling: 'rope_type' \('yarn'\) and 'type' \('su'\) disagree"):
        RotaryEmbedding(8, 64, scaling={"type": "su", "rope_type": "yarn", "factor": 2.0})
    saved = {"model_type": "phi3", "hidden_size": 3072, "num_attention_heads": 32, "max_position_embeddings": 131072,
             "rope_scaling": {"type": "su", **longrope},
             "rope_parameters": {"type": "su", "rope_type": "longrope", "rope_theta": 10000.0, **longrope}}
    assert RotaryEmbedding.from_hf_config(saved).scaling == b.scaling


def test_phi3_vision_config_saved_by_transformers_reads(tmp_path):
    """The same through transformers' own config object and its save_pretrained folder."""
    transformers = pytest.importorskip("transformers")
    raw = {k: v for k, v in _load("phi-3-vision-128k-instruct").items() if not k.startswith("_")}
    want = RotaryEmbedding.from_hf_config(raw)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        obj = transformers.AutoConfig.for_model(**raw)
        obj.save_pretrained(tmp_path)
    for source in (obj, str(tmp_path)):
        got = RotaryEmbedding.from_hf_config(source)
        assert (got.scaling, got.dim, got.base) == (want.scaling, want.dim, want.base)


def test_gemma3_nested_rope_parameters_fill_in_as_transformers_does():
    """A Gemma 3 file with per-layer-type ``rope_parameters`` may leave out the sliding entry's ``rope_theta``
    (or the entry itself): transformers' Gemma3TextConfig takes ``rope_local_base_freq``, else 10000. ropeflow
    used the top-level (global) ``rope_theta``, 1e6, and refused a missing entry."""
    g = {"model_type": "gemma3_text", "head_dim": 256, "max_position_embeddings": 32768, "rope_theta": 1e6,
         "layer_types": ["sliding_attention"] * 5 + ["full_attention"],
         "rope_parameters": {"sliding_attention": {"rope_type": "default"},
                             "full_attention": {"rope_type": "linear", "factor": 8.0}}}
    assert RotaryEmbedding.from_hf_config(g, layer_type="sliding_attention").base == 10000.0
    full = RotaryEmbedding.from_hf_config(g, layer_type="full_attention")
    assert (full.base, full.scaling) == (1e6, LinearScaling(8.0))
    assert RotaryEmbedding.from_hf_config({**g, "rope_local_base_freq": 20000.0},
                                          layer_type="sliding_attention").base == 20000.0
    g["rope_parameters"]["sliding_attention"] = None  # null: filled as well
    assert RotaryEmbedding.from_hf_config(g, layer_type="sliding_attention").base == 10000.0
    del g["rope_parameters"]["sliding_attention"]
    assert RotaryEmbedding.from_hf_config(g, layer_type="sliding_attention").base == 10000.0
    # other models' nested files are read as they are
    llama = {**LLAMA, "rope_theta": 5e5, "rope_parameters": {"full_attention": {"rope_type": "default"}}}
    assert ropeflow.layer_types(llama) == ("full_attention",)


def test_config_files_that_cannot_be_a_config_are_named(tmp_path):
    """Deeply nested JSON escaped as a RecursionError (a traceback on the command line); a FIFO blocked forever
    and /dev/zero read until memory ran out."""
    deep = tmp_path / "deep.json"
    deep.write_text('{"a":' * 100000)
    with pytest.raises(ValueError, match=r"^config: .*deep.json' nests its JSON too deeply"):
        RotaryEmbedding.from_hf_config(str(deep))
    big = tmp_path / "big.json"
    with open(big, "wb") as fh:
        fh.truncate((64 << 20) + 1)  # sparse: no disk used
    with pytest.raises(ValueError, match=r"^config: .*big.json' is larger than 64 MiB"):
        RotaryEmbedding.from_hf_config(str(big))
    if hasattr(os, "mkfifo"):
        fifo = tmp_path / "fifo.json"
        os.mkfifo(fifo)
        with pytest.raises(ValueError, match=r"^config: .*fifo.json' is not a regular file"):
            RotaryEmbedding.from_hf_config(str(fifo))


def test_small_config_and_preset_errors_say_what_is_wrong():
    with pytest.raises(TypeError, match=r"^config\['layer_types'\]: expected layer type names \(strings\), got 3"):
        ropeflow.layer_types({**LLAMA, "layer_types": ["full_attention", 3]})  # the 3 was dropped silently
    with pytest.raises(TypeError, match=r"^name: expected a preset name \(a string\), got 1"):
        ropeflow.presets.load(1)
    rope = RotaryEmbedding(8, 64)
    q = np.ones((1, 1, 3, 8), np.float32)
    with pytest.raises(ValueError, match=r"^out\[1\] \(k_out\): shape \(1, 1, 2, 8\) dtype float32 must equal k's"):
        rope.apply(q, q, out=(np.empty_like(q), np.ones((1, 1, 2, 8), np.float32)))


def test_yarn_mscale_enters_the_softmax_scale_of_mla_models_only():
    """transformers folds ``get_mscale(factor, mscale_all_dim) ** 2`` into the softmax scale of multi-head latent
    attention models only (``yarn_apply_mscale``: DeepSeek-V2/V3, MiniCPM3, ...); Ministral 3's YaRN config
    (factor 16, mscale_all_dim 1) keeps ``head_dim ** -0.5``. ropeflow multiplied for every family (1.63x)."""
    yarn = {"rope_type": "yarn", "factor": 16.0, "original_max_position_embeddings": 16384, "mscale": 1.0,
            "mscale_all_dim": 1.0, "rope_theta": 1e6}
    ministral3 = {"model_type": "ministral3", "hidden_size": 4096, "num_attention_heads": 32, "head_dim": 128,
                  "max_position_embeddings": 262144, "rope_parameters": yarn}
    assert ropeflow.softmax_scale(ministral3) == 128**-0.5
    mla = {**ministral3, "qk_nope_head_dim": 128, "qk_rope_head_dim": 64}
    m = 0.1 * math.log(16.0) + 1.0
    assert ropeflow.softmax_scale(mla) == pytest.approx(192**-0.5 * m * m, rel=1e-15)


def test_a_layer_type_the_file_does_not_list_reads_its_one_rotary_config():
    """transformers' Gemma 2 config object lists sliding and full layers although the file states no
    layer_types; ``layer_type="sliding_attention"`` worked on the object and was refused on the same dict.
    Only for models whose layer types all read the one rotary configuration."""
    gemma2 = _load("gemma-2-9b-it")
    assert "layer_types" not in gemma2
    plain = RotaryEmbedding.from_hf_config(gemma2)
    rope = RotaryEmbedding.from_hf_config(gemma2, layer_type="sliding_attention")
    assert (rope.dim, rope.base, rope.scaling) == (plain.dim, plain.base, plain.scaling)
    # other models' sliding layers may have a base of their own that ropeflow does not read (MiMo's
    # swa_rope_theta): refused, not given the full-attention base
    mimo = {**LLAMA, "model_type": "mimo_v2", "rope_theta": 1e7, "swa_rope_theta": 1e4}
    with pytest.raises(ValueError, match=r"^layer_type: 'sliding_attention' is not a layer type"):
        RotaryEmbedding.from_hf_config(mimo, layer_type="sliding_attention")
    with pytest.raises(ValueError, match=r"^layer_type: 'sliding_atention' is not a layer type"):
        RotaryEmbedding.from_hf_config(gemma2, layer_type="sliding_atention")
    with pytest.raises(ValueError, match=r"^layer_type: 'sliding_attention' is not a layer type"):
        RotaryEmbedding.from_hf_config({**gemma2, "layer_types": ["full_attention"]}, layer_type="sliding_attention")
